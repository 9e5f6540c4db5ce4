"""The lab: pods and external hosts as network namespaces behind one node namespace.

Used by the conformance harness's ``dataplane`` mode and by the demo::

    with Lab() as lab:
        lab.add_host("x/a", ["10.244.1.10", "fd00:10:244:1::10"])
        lab.add_host("x/b", ["10.244.1.11"])
        lab.serve([(80, "TCP"), (80, "UDP"), (81, "SCTP")])
        lab.probe("x/a", "10.244.1.11", 80, "TCP")          # True
"""

from kube_netpol.tools.lab.cleanup import cleanup_stale, stale_netns
from kube_netpol.tools.lab.lab import DEFAULT_PROBE_TIMEOUT, Lab, LabClosed, LabError, LabHost
from kube_netpol.tools.lab.probes import Probe
from kube_netpol.tools.lab.topology import GATEWAY_V4, GATEWAY_V6

__all__ = [
    "DEFAULT_PROBE_TIMEOUT",
    "GATEWAY_V4",
    "GATEWAY_V6",
    "Lab",
    "LabClosed",
    "LabError",
    "LabHost",
    "Probe",
    "cleanup_stale",
    "stale_netns",
]
