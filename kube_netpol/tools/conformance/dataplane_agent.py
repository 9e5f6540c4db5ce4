"""The real agent (`kube-netpol run --manifests DIR`) as a process inside a lab's node namespace.

The harness talks to it only as an operator would: through the manifests
folder and its HTTP endpoints. ``wait_enforced`` polls /statusz from inside
the node namespace (a socket created there by a helper thread; the caller's
thread never moves) until the agent reports that the dataplane, and in strict
mode conntrack, follow exactly a given revision of the folder.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from kube_netpol.tools.lab import Lab
from kube_netpol.tools.lab.netns import open_netns, socket_in
from kube_netpol.tools.lab.timing import scaled

#: Where the agent serves /metrics, /healthz, /readyz and /statusz inside the node namespace
#: (every lab has its own node namespace, so a fixed port never collides).
STATUS_HOST = "127.0.0.1"
STATUS_PORT = 9080
#: Seconds to wait for the agent to start and enforce its first revision (Python start-up, nftables).
START_TIMEOUT = 20.0
#: Seconds to wait for a later revision; the agent polls its folder every 50 ms.
APPLY_TIMEOUT = 10.0
POLL_INTERVAL = 0.01
STOP_GRACE = 5.0
LOG_TAIL_LINES = 40


class AgentError(RuntimeError):
    """The agent did not start, died, or did not enforce a revision in time; the message has its log's tail."""


class AgentProcess:
    """One agent in ``lab``'s node namespace reading ``manifests``; its output goes to ``log_path``.

    ``source_args`` replaces the manifests folder as the agent's source (e.g.
    ``["--kubeconfig", FILE]``); the default reads ``manifests`` with ANP and
    BANP enabled.
    """

    def __init__(
        self,
        lab: Lab,
        manifests: Path | None,
        log_path: Path,
        *,
        node_name: str,
        table: str,
        fail_open: bool = False,
        strict_mode: bool = True,
        extra_args: Sequence[str] = (),
        source_args: Sequence[str] | None = None,
    ) -> None:
        if source_args is None:
            if manifests is None:
                raise ValueError("AgentProcess needs a manifests folder or source_args")
            source_args = [
                "--manifests", str(manifests),
                "--enable-admin-network-policy",
                "--enable-baseline-admin-network-policy",
                "--enable-cluster-network-policy",
            ]  # fmt: skip
        self.lab = lab
        self.log_path = log_path
        self.node_name = node_name
        self.table = table
        self.fail_open = fail_open
        self.strict_mode = strict_mode
        self.argv = [
            sys.executable, "-m", "kube_netpol", "run",
            *source_args,
            "--hostname-override", node_name,
            "--metrics-bind-address", f"{STATUS_HOST}:{STATUS_PORT}",
            f"--fail-open={str(fail_open).lower()}",
            f"--strict-mode={str(strict_mode).lower()}",
            "--nftables-table", table,
            *extra_args,
        ]  # fmt: skip
        self._netns_fd = open_netns(lab.node_netns)
        # setns only moves the calling thread and ``entered`` refuses the main thread: one helper thread makes sockets.
        self._socket_maker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="agent-status")
        self._log = open(log_path, "ab")
        try:
            self.process = subprocess.Popen(
                lab.node_command(self.argv), stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT
            )
        except BaseException:
            self._release()
            raise

    # --- talking to it ---------------------------------------------------------------------

    def http_get(self, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
        """GET ``path`` from the agent's HTTP server: (status code, body). OSError when nothing listens."""
        sock = self._socket_maker.submit(socket_in, self._netns_fd, socket.AF_INET, socket.SOCK_STREAM).result()
        try:
            sock.settimeout(timeout)
            sock.connect((STATUS_HOST, STATUS_PORT))
            sock.sendall(f"GET {path} HTTP/1.0\r\nHost: {STATUS_HOST}\r\n\r\n".encode())
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        finally:
            sock.close()
        head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
        try:
            status = int(head.split(b" ", 2)[1])
        except (IndexError, ValueError):
            raise OSError(f"not an HTTP answer from the agent: {head[:80]!r}") from None
        return status, body

    def status(self) -> Mapping[str, Any] | None:
        """The agent's /statusz, or None while it does not answer yet."""
        try:
            code, body = self.http_get("/statusz")
        except OSError:
            return None
        if code != 200:
            return None
        status = json.loads(body)
        return status if isinstance(status, Mapping) else None

    def metrics(self) -> str:
        code, body = self.http_get("/metrics")
        if code != 200:
            raise AgentError(f"/metrics answered {code}")
        return body.decode()

    def wait_enforced(self, revision: str, timeout: float = APPLY_TIMEOUT) -> Mapping[str, Any]:
        """Wait until the agent is ready and enforces ``revision``; returns its last status.

        ``timeout`` is multiplied by ``KUBE_NETPOL_LAB_TIME_SCALE`` (see kube_netpol.tools.lab.timing).
        """
        timeout = scaled(timeout)
        deadline = time.monotonic() + timeout
        status: Mapping[str, Any] | None = None
        while True:
            if self.process.poll() is not None:
                raise AgentError(f"the agent exited with status {self.process.returncode}\n{self.log_tail()}")
            status = self.status()
            if status is not None and status.get("ready") and status.get("enforced_revision") == revision:
                return status
            if time.monotonic() >= deadline:
                raise AgentError(
                    f"the agent did not enforce revision {revision[:12]} within {timeout:.0f} s "
                    f"(last status: {json.dumps(status)})\n{self.log_tail()}"
                )
            time.sleep(POLL_INTERVAL)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        tail = self.log_text().splitlines()[-lines:]
        return "agent log (last lines):\n" + "\n".join("  | " + line for line in tail)

    # --- ending it ---------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def kill(self, signum: int = signal.SIGKILL) -> None:
        """Send ``signum`` (e.g. to test fail-open/closed after a crash); does not wait."""
        if self.running:
            self.process.send_signal(signum)

    def stop(self, grace: float = STOP_GRACE) -> int | None:
        """SIGTERM, then SIGKILL after ``grace`` seconds (scaled); returns the exit status (negative: killed by a signal)."""
        try:
            if self.running:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(scaled(grace))
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(5)
            return self.process.returncode
        finally:
            self._release()

    def _release(self) -> None:
        self._socket_maker.shutdown(wait=True)
        if self._netns_fd >= 0:
            os.close(self._netns_fd)  # an open fd would keep the node namespace alive
            self._netns_fd = -1
        self._log.close()
