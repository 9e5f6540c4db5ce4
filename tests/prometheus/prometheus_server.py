"""A real Prometheus server (Debian's `prometheus`) inside a lab's node namespace, and its HTTP API.

It runs where the agent runs, so it scrapes the agent's loopback address as
a node-local Prometheus would scrape a hostNetwork pod; its port and data
directory are its own, so nothing on the machine (another Prometheus, another
engineer's lab) is touched. The test talks to it through a socket created in
that namespace.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, TypeVar

from kube_netpol.tools.lab import Lab
from kube_netpol.tools.lab.netns import open_netns, socket_in

REPO = Path(__file__).resolve().parents[2]
ALERT_RULES = REPO / "docs" / "prometheus-alerts.yaml"
PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
#: The scrape job the alert rules expect (docs/prometheus-alerts.yaml).
JOB = "kube-netpol"
HOST = "127.0.0.1"
#: Scrapes and rule evaluations every second: the tests wait for data, never for wall-clock minutes.
INTERVAL = "1s"
START_TIMEOUT = 30.0
WAIT_TIMEOUT = 20.0
STOP_GRACE = 10.0

T = TypeVar("T")


class PrometheusError(RuntimeError):
    """Prometheus did not start, or its API answered an error; the message has its log's tail."""


def free_port(netns_fd: int, maker: concurrent.futures.ThreadPoolExecutor) -> int:
    """A port nothing listens on in the namespace (ours alone: nobody else can take it meanwhile)."""
    sock = maker.submit(socket_in, netns_fd, socket.AF_INET, socket.SOCK_STREAM).result()
    try:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])
    finally:
        sock.close()


class PrometheusServer:
    """``prometheus`` in ``lab``'s node namespace, scraping ``targets`` as job ``kube-netpol``."""

    def __init__(self, lab: Lab, workdir: Path, targets: Sequence[str], rule_files: Sequence[Path] = (ALERT_RULES,)) -> None:
        if PROMETHEUS is None:
            raise PrometheusError("the prometheus binary is missing (apt-get install prometheus; scripts/setup.sh does)")
        self.workdir = workdir
        self.log_path = workdir / "prometheus.log"
        self._netns_fd = open_netns(lab.node_netns)
        self._socket_maker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="prometheus-api")
        self.port = free_port(self._netns_fd, self._socket_maker)
        config = {
            "global": {"scrape_interval": INTERVAL, "scrape_timeout": INTERVAL, "evaluation_interval": INTERVAL},
            "rule_files": [str(path) for path in rule_files],
            "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": list(targets)}]}],
        }
        config_path = workdir / "prometheus.yml"
        config_path.write_text(json.dumps(config))  # JSON is YAML
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            lab.node_command([
                PROMETHEUS,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address={HOST}:{self.port}",
                "--log.level=warn",
            ]),
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    # --- the HTTP API ------------------------------------------------------------------------

    def get(self, path: str, params: Mapping[str, str | Sequence[str]] | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
        query = "?" + urllib.parse.urlencode(params, doseq=True) if params else ""
        sock = self._socket_maker.submit(socket_in, self._netns_fd, socket.AF_INET, socket.SOCK_STREAM).result()
        try:
            sock.settimeout(timeout)
            sock.connect((HOST, self.port))
            sock.sendall(f"GET {path}{query} HTTP/1.0\r\nHost: {HOST}\r\n\r\n".encode())
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        finally:
            sock.close()
        head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
        try:
            return int(head.split(b" ", 2)[1]), body
        except (IndexError, ValueError):
            raise PrometheusError(f"not an HTTP answer from Prometheus: {head[:80]!r}") from None

    def api(self, path: str, **params: str | Sequence[str]) -> Any:
        """``data`` of an /api/v1 answer; PrometheusError with Prometheus's message otherwise."""
        code, body = self.get("/api/v1/" + path, params)
        answer = json.loads(body)
        if code != 200 or answer.get("status") != "success":
            raise PrometheusError(f"/api/v1/{path} {params}: {code} {answer.get('errorType')}: {answer.get('error')}")
        return answer["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query, now: its vector's samples (``metric`` labels and ``value``)."""
        data = self.api("query", query=expr)
        if data["resultType"] != "vector":
            raise PrometheusError(f"{expr!r} is a {data['resultType']}, not a vector")
        return list(data["result"])

    def scalar(self, expr: str) -> float | None:
        """The one sample ``expr`` returns now, or None when it returns none."""
        result = self.query(expr)
        if len(result) > 1:
            raise PrometheusError(f"{expr!r} returned {len(result)} series, not one")
        return float(result[0]["value"][1]) if result else None

    def label_values(self, selector: str, label: str) -> list[str]:
        """What Grafana's ``label_values(selector, label)`` lists."""
        series = self.api("series", **{"match[]": selector})
        return sorted({s[label] for s in series if label in s})

    def wait_until(self, produce: Callable[[], T], done: Callable[[T], bool], what: str,
                   timeout: float = WAIT_TIMEOUT) -> T:
        """Poll ``produce`` until ``done`` accepts it; PrometheusError naming ``what`` after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            value = produce()
            if done(value):
                return value
            if time.monotonic() >= deadline:
                raise PrometheusError(f"timed out waiting for {what} (last: {value!r})\n{self.log_tail()}")
            time.sleep(0.1)

    # --- life --------------------------------------------------------------------------------

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise PrometheusError(f"prometheus exited with status {self.process.returncode}\n{self.log_tail()}")
            try:
                if self.get("/-/ready", timeout=1.0)[0] == 200:
                    return
            except OSError:
                pass
            if time.monotonic() >= deadline:
                raise PrometheusError(f"prometheus not ready within {START_TIMEOUT:.0f} s\n{self.log_tail()}")
            time.sleep(0.1)

    def log_tail(self, lines: int = 30) -> str:
        try:
            tail = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            tail = []
        return "prometheus log (last lines):\n" + "\n".join("  | " + line for line in tail)

    def stop(self) -> None:
        try:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(STOP_GRACE)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(5)
        finally:
            self._socket_maker.shutdown(wait=True)
            if self._netns_fd >= 0:
                os.close(self._netns_fd)  # an open fd would keep the node namespace alive
                self._netns_fd = -1
            self._log.close()

    def __enter__(self) -> "PrometheusServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
