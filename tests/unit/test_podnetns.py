"""Reading pod UIDs from /proc/PID/cgroup (both kubelet cgroup drivers, cgroup v1 and v2) and the lookup flags."""

from __future__ import annotations

import argparse

import pytest

from kube_netpol.agent.config import add_agent_arguments, config_from_args
from kube_netpol.agent.podnetns import CgroupLocator, DirectoryLocator, locator_for, pod_uids_in_cgroups
from kube_netpol.state.records import read_pod

UID = "ccf19bc6-503b-4dd0-b33d-e5717fe6613c"
SYSTEMD = UID.replace("-", "_")
CID = "1207db63eaeb133a85d2b614d12d95d4dff3f29af60d7a7b3c7d39abdf4bd119"


@pytest.mark.parametrize("text", [
    # cgroup v2, systemd driver: containerd, CRI-O, a guaranteed pod (no QoS slice), kubelet's --cgroup-root
    f"0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{SYSTEMD}.slice/cri-containerd-{CID}.scope\n",
    f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{SYSTEMD}.slice/crio-{CID}.scope\n",
    f"0::/kubepods.slice/kubepods-pod{SYSTEMD}.slice/crio-conmon-{CID}.scope\n",
    f"0::/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/"
    f"kubelet-kubepods-besteffort-pod{SYSTEMD}.slice/cri-containerd-{CID}.scope\n",
    # cgroup v1, cgroupfs driver: one line per hierarchy
    f"12:pids:/kubepods/besteffort/pod{UID}/{CID}\n11:memory:/kubepods/besteffort/pod{UID}/{CID}\n1:name=systemd:/\n",
    f"3:cpu,cpuacct:/kubepods/pod{UID}/{CID}\n",
    # the pod's own cgroup (the sandbox before its container scope exists), upper case
    f"0::/kubepods/burstable/pod{UID.upper()}\n",
])
def test_a_pods_uid_is_read_from_each_layout(text: str) -> None:
    assert pod_uids_in_cgroups(text) == {UID}


@pytest.mark.parametrize("text", [
    "0::/\n",
    "0::/system.slice/containerd.service\n",
    f"0::/system.slice/docker-{CID}.scope\n",
    f"0::/user.slice/pod{UID}.slice\n",  # not under kubepods
    f"0::/kubepods/besteffort/pod{UID}x/{CID}\n",  # not a whole UID
    f"0::/kubepods/besteffort/notapod{UID}/{CID}\n",
])
def test_other_cgroups_name_no_pod(text: str) -> None:
    assert pod_uids_in_cgroups(text) == set()


def test_the_pod_record_keeps_a_plausible_uid_only() -> None:
    obj = {"metadata": {"name": "p", "namespace": "x", "uid": UID}, "spec": {}, "status": {}}
    assert read_pod(obj).uid == UID
    obj["metadata"]["uid"] = "../../etc"
    assert read_pod(obj).uid == ""
    del obj["metadata"]["uid"]
    assert read_pod(obj).uid == ""


def _config(*args: str):  # type: ignore[no-untyped-def]
    parser = argparse.ArgumentParser()
    add_agent_arguments(parser)
    return config_from_args(parser.parse_args(list(args)))


def test_the_lookup_flags() -> None:
    assert (_config().pod_netns_lookup, _config().host_proc) == ("cgroup", "/proc")
    assert _config("--pod-netns-dir", "/d").pod_netns_lookup == "dir"
    assert _config("--pod-netns-lookup", "cgroup", "--host-proc", "/host/proc").host_proc == "/host/proc"
    with pytest.raises(ValueError, match="needs --pod-netns-dir"):
        _config("--pod-netns-lookup", "dir")
    with pytest.raises(ValueError, match="is for --pod-netns-lookup=dir"):
        _config("--pod-netns-lookup", "cgroup", "--pod-netns-dir", "/d")
    assert isinstance(locator_for("dir", "/d", "/proc"), DirectoryLocator)
    locator = locator_for("cgroup", None, "/host/proc/")
    assert isinstance(locator, CgroupLocator) and locator.proc_root == "/host/proc"
