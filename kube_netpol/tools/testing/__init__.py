"""Test helpers shipped with the package (importable by our tests and by end-to-end tests).

``FakeApiServer`` is an in-process Kubernetes API server that speaks list and
watch for the resources kube-netpol reads; see ``kube_netpol.tools.testing.apiserver``.
"""

from kube_netpol.tools.testing.apiserver import FakeApiServer, FakeResource, RequestRecord, default_kinds

__all__ = ["FakeApiServer", "FakeResource", "RequestRecord", "default_kinds"]
