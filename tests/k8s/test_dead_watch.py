"""A watch that goes quiet or whose connection dies without a reset is abandoned and resumed in bounded time.

Two ways a watch dies silently: the server (or a proxy in between) stops
sending but keeps the connection (the read timeout catches it, BOOKMARKs keep
a healthy quiet watch alive), and the peer or the path vanishes, so nothing
answers at all, not even a reset (TCP keepalive and TCP_USER_TIMEOUT catch
it; shown in a network namespace whose loopback starts dropping the packets).
The bounds are configured short here; the defaults' bounds are checked on
their own.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

pytest.importorskip("kubernetes")

from kube_netpol.sources.kube_reflector import WatchSettings  # noqa: E402
from kube_netpol.tools.testing import FakeApiServer  # noqa: E402

from k8s_helpers import FAST, Driver, namespace, pod  # noqa: E402

MakeDriver = Callable[..., Driver]


def test_the_defaults_notice_a_dead_connection_within_a_minute() -> None:
    settings = WatchSettings()
    assert settings.dead_connection_timeout <= 60  # peer gone, no reset: keepalive and TCP_USER_TIMEOUT
    # A quiet but healthy watch gets a BOOKMARK about every 60 s: the read timeout must outlast that.
    assert 60 < settings.watch_read_timeout <= 90


def test_the_client_sockets_use_keepalive_and_a_user_timeout(kubeconfig: Path) -> None:
    import socket

    from kube_netpol.sources.kubernetes import api_client_from_config

    settings = WatchSettings(keepalive_idle=7, keepalive_interval=3, keepalive_count=4)
    options = api_client_from_config(str(kubeconfig), settings).configuration.socket_options
    assert (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1) in options
    assert (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 7) in options
    assert (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 3) in options
    assert (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 4) in options
    assert (socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 19_000) in options
    assert (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1) in options  # urllib3's default kept


def test_a_silent_watch_is_abandoned_and_resumed_from_its_resource_version(
    apiserver: FakeApiServer, make_driver: MakeDriver
) -> None:
    apiserver.create(namespace("a"))
    # The server would keep the watch open for minutes; 0.5 s of silence is enough for us.
    settings = WatchSettings(**{**FAST.__dict__, "watch_timeout": 300, "watch_read_timeout": 0.5})
    driver = make_driver(("Namespace", "Pod"), settings)
    driver.run_until(driver.source.ready, what="the initial lists")
    version = str(apiserver.resource_version)
    apiserver.wait_for_watches(["Namespace", "Pod"])
    driver.run_until(lambda: len(apiserver.watch_requests("Pod")) >= 3, timeout=20, what="re-watches")
    # Each new watch resumes where the silent one was: no relist, nothing missed.
    assert [r.query["resourceVersion"] for r in apiserver.watch_requests("Pod")[:3]] == [version] * 3
    assert len(apiserver.list_requests("Pod")) == 1
    apiserver.create(pod("a", "after", "10.0.0.7"))
    driver.run_until(lambda: driver.source.state.pod(("a", "after")) is not None, timeout=20, what="the new pod")


def test_bookmarks_keep_a_quiet_watch_open(apiserver: FakeApiServer, make_driver: MakeDriver) -> None:
    apiserver.create(namespace("a"))
    settings = WatchSettings(**{**FAST.__dict__, "watch_timeout": 300, "watch_read_timeout": 1.0})
    driver = make_driver(("Pod",), settings)
    driver.run_until(driver.source.ready, what="the initial list")
    apiserver.wait_for_watches(["Pod"])
    import time

    for _ in range(8):  # 2 s in all, a bookmark every 0.25 s: never a second of silence
        apiserver.bookmark("Pod")
        time.sleep(0.25)
        driver.step()
    assert len(apiserver.watch_requests("Pod")) == 1


CHILD = Path(__file__).with_name("k8s_dead_connection_child.py")


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("nft"), reason="needs root and nft")
def test_a_watch_whose_peer_vanishes_without_a_reset_fails_over_keepalive() -> None:
    netns = f"kn-deadwatch-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
        done = subprocess.run(["ip", "netns", "exec", netns, sys.executable, str(CHILD)],
                              capture_output=True, text=True, timeout=120, cwd=Path(__file__).parent)
        assert done.returncode == 0, done.stdout + done.stderr
        result = json.loads(done.stdout.splitlines()[-1])
    finally:
        subprocess.run(["ip", "netns", "del", netns], capture_output=True)
    # The watch broke within the child's 30 s wait although its read timeout is 300 s: the kernel gave up on
    # the connection (ETIMEDOUT, which urllib3 words as a read timeout)...
    assert any("timed out" in line.lower() for line in result["failures"]), result["failures"]
    # ... and once packets flowed again it resumed from where it was, and delivered what came after.
    assert result["resumed_from"] == result["version_before"]
    assert result["relists"] == 0 and result["delivered"]
