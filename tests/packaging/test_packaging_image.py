"""The Dockerfile (no image can be built here) against scripts/setup.sh, pyproject.toml and the agent's needs."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from packaging.specifiers import SpecifierSet
from packaging_helpers import REPO

from kube_netpol.cli import build_parser

#: Programs the agent runs at run time (subprocess argument lists in kube_netpol/):
#: iptables/ip6tables for the xt queue backend and cleanup, ip for the node's own
#: addresses. (Strict mode speaks ctnetlink itself.)
AGENT_PROGRAMS = ("iptables", "ip6tables", "ip")
#: Shared libraries the agent loads: libnftables (pip-nftables, via ctypes) and
#: libnetfilter_queue (the NetfilterQueue extension).
AGENT_LIBRARIES = ("libnftables.so.1", "libnetfilter_queue.so.1")
#: What setup.sh installs only to build or test (the builder stage must have the build tools).
SETUP_EXTRAS_NOT_IN_IMAGE = {"test"}


@dataclass
class Stage:
    base: str
    name: str = ""
    apt_packages: set[str] = field(default_factory=set)
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (INSTRUCTION, arguments)


def _logical_lines(text: str) -> list[str]:
    """Dockerfile lines with comments dropped and backslash continuations joined."""
    lines, current = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    return lines


def _apt_packages(command: str) -> set[str]:
    packages = set()
    for part in re.split(r"&&|;", command):
        words = shlex.split(part)
        if "apt-get" in words and "install" in words:
            after = words[words.index("install") + 1:]
            packages |= {w for w in after if not w.startswith("-")}
    return packages


def parse_dockerfile() -> list[Stage]:
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in _logical_lines((REPO / "Dockerfile").read_text()):
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = default
        elif instruction == "FROM":
            words = rest.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], words[0])
            stages.append(Stage(base, words[2] if len(words) == 3 and words[1].upper() == "AS" else ""))
        else:
            stage = stages[-1]
            stage.instructions.append((instruction, rest))
            if instruction == "RUN":
                stage.apt_packages |= _apt_packages(rest)
    return stages


def setup_sh_arrays() -> dict[str, list[str]]:
    text = (REPO / "scripts" / "setup.sh").read_text()
    # Arrays of literal package names; arrays composed of other arrays ("${A[@]}") add nothing new.
    return {
        m.group(1): [word for word in m.group(2).split() if "$" not in word]
        for m in re.finditer(r"^(\w+)=\(([^)]*)\)", text, re.M)
    }


def setup_sh_extras() -> set[str]:
    text = (REPO / "scripts" / "setup.sh").read_text()
    (extras,) = re.findall(r"-e\s+'\.\[([\w,-]+)\]'", text)
    return set(extras.split(","))


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    parsed = parse_dockerfile()
    assert len(parsed) == 2, "expected a builder stage and the runtime stage"
    return parsed


def test_base_is_python_3_11_slim_bookworm_pinned_by_digest(stages: list[Stage]) -> None:
    (base,) = {stage.base for stage in stages}
    assert re.fullmatch(r"python:3\.11-slim-bookworm@sha256:[0-9a-f]{64}", base), base
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert SpecifierSet(requires).contains("3.11")


def test_runtime_packages_match_setup_sh(stages: list[Stage]) -> None:
    builder, runtime = stages
    arrays = setup_sh_arrays()
    setup_all = {package for packages in arrays.values() for package in packages}
    # Everything the image runs with is what the tests here run with...
    assert runtime.apt_packages <= setup_all, runtime.apt_packages - setup_all
    # ...and setup.sh installs nothing the image lacks, except build tools the builder stage has
    # and what only the tests run.
    installed = setup_all - set(arrays.get("TEST_APT_PACKAGES", []))
    assert installed <= runtime.apt_packages | builder.apt_packages, installed - runtime.apt_packages - builder.apt_packages
    assert not builder.apt_packages & runtime.apt_packages
    if "AGENT_APT_PACKAGES" in arrays:  # setup.sh names the agent's run-time list: the image has exactly it
        assert runtime.apt_packages == set(arrays["AGENT_APT_PACKAGES"])


def test_runtime_has_the_netfilter_packages(stages: list[Stage]) -> None:
    runtime = stages[1]
    assert {"nftables", "libnftables1", "iptables", "libnetfilter-queue1"} <= runtime.apt_packages
    assert not {"gcc", "libnetfilter-queue-dev"} & runtime.apt_packages  # build tools stay in the builder


def _debian_package_of(path: str) -> str:
    real = os.path.realpath(path)
    base = os.path.basename(real)
    # With merged /usr, dpkg may know the file under /bin or /sbin rather than /usr/bin.
    for candidate in dict.fromkeys([real, path] + [f"{d}/{base}" for d in ("/usr/sbin", "/usr/bin", "/sbin", "/bin")]):
        result = subprocess.run(["dpkg", "-S", candidate], capture_output=True, text=True, check=False)
        if result.returncode == 0:
            return result.stdout.split(":", 1)[0]
    pytest.fail(f"no Debian package owns {path}")


def _library_path(soname: str) -> str:
    result = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, check=True)
    for line in result.stdout.splitlines():
        name, _, path = line.strip().partition(" => ")  # "libfoo.so.1 (libc6,x86-64) => /lib/.../libfoo.so.1"
        if name.split(" ", 1)[0] == soname:
            return path
    pytest.fail(f"{soname} is not installed here (scripts/setup.sh installs it)")


@pytest.mark.parametrize("program", AGENT_PROGRAMS)
def test_the_image_has_every_program_the_agent_runs(stages: list[Stage], program: str) -> None:
    path = shutil.which(program) or shutil.which(program, path="/usr/sbin:/sbin:/usr/bin:/bin")
    assert path, f"{program} is not installed here (scripts/setup.sh installs it)"
    assert _debian_package_of(path) in stages[1].apt_packages


@pytest.mark.parametrize("library", AGENT_LIBRARIES)
def test_the_image_has_every_library_the_agent_loads(stages: list[Stage], library: str) -> None:
    assert _debian_package_of(_library_path(library)) in stages[1].apt_packages


def _pip_extras(stage: Stage) -> set[str]:
    found = set()
    for instruction, rest in stage.instructions:
        if instruction == "RUN" and "pip" in rest:
            for extras in re.findall(r"\[([\w,-]+)\]", rest):
                found.add(frozenset(extras.split(",")))
    assert len(found) == 1, f"expected one set of extras, found {found}"
    return set(next(iter(found)))


def test_pip_extras_match_setup_sh(stages: list[Stage]) -> None:
    expected = setup_sh_extras() - SETUP_EXTRAS_NOT_IN_IMAGE
    assert expected == {"dataplane", "kubernetes"}
    optional = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert expected <= set(optional)
    for stage in stages:
        assert _pip_extras(stage) == expected


def test_wheels_come_from_the_builder(stages: list[Stage]) -> None:
    builder, runtime = stages
    assert builder.name
    copies = [rest for instruction, rest in runtime.instructions if instruction == "COPY"]
    assert any(rest.startswith(f"--from={builder.name} ") for rest in copies)
    install = " ".join(rest for instruction, rest in runtime.instructions if instruction == "RUN" and "pip install" in rest)
    assert "--no-index" in install  # nothing fetched or compiled in the runtime stage


def test_entrypoint_runs_the_agent(stages: list[Stage]) -> None:
    entrypoints = [rest for instruction, rest in stages[1].instructions if instruction == "ENTRYPOINT"]
    assert entrypoints == ['["kube-netpol", "run"]']
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["kube-netpol"] == "kube_netpol.cli:main"
    assert build_parser().parse_args(["run"]).command == "run"


def test_build_context_has_what_the_builder_copies(stages: list[Stage]) -> None:
    sources = []
    for instruction, rest in stages[0].instructions:
        if instruction == "COPY" and not rest.startswith("--from"):
            sources += rest.split()[:-1]
    readme = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["readme"]
    assert {"pyproject.toml", readme, "kube_netpol"} <= set(sources)
    ignore = (REPO / ".dockerignore").read_text().split()
    assert "*" in ignore  # everything else stays out of the context
    for source in sources:
        assert (REPO / source).exists(), source
        assert f"!{source}" in ignore or f"!{source}/" in ignore, f".dockerignore leaves {source} out of the context"


# --------------------------------------------------------------------------- what the image holds

def image_context() -> set[str]:
    """The files `docker build .` sends, by Docker's .dockerignore rules (docker-py's implementation)."""
    from docker.utils.build import exclude_paths

    lines = (REPO / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    return {path for path in exclude_paths(str(REPO), patterns) if (REPO / path).is_file()}


def test_the_image_context_has_the_agent_and_no_test_code() -> None:
    context = image_context()
    assert {"pyproject.toml", "README.md", "kube_netpol/__init__.py", "kube_netpol/agent/run.py",
            "kube_netpol/observability/exposition.py"} <= context
    # The Dockerfile and .dockerignore always go to the daemon; the builder copies neither.
    assert {path.split("/")[0] for path in context} == {"pyproject.toml", "README.md", "kube_netpol", "Dockerfile",
                                                         ".dockerignore", "plugins"}
    # The one plugin the image carries (MultiNetworkPolicy), without its tests.
    assert {path.split("/")[1] for path in context if path.startswith("plugins/")} == {"kube-netpol-multinetwork"}
    for test_code in ("tests/", "kube_netpol/tools/", "bench/", "plugins/kube-netpol-allowlist/",
                      "plugins/kube-netpol-multinetwork/tests/", "scripts/"):
        assert not [path for path in context if path.startswith(test_code)], test_code
    assert not [path for path in context if "__pycache__" in path or path.endswith(".pyc")]
    # ...and the check bites: the tools are in the repository.
    assert (REPO / "kube_netpol" / "tools" / "lab" / "lab.py").is_file()


@pytest.fixture
def context_copy(tmp_path: Path) -> Path:
    """The package as the image's builder gets it, and nothing else."""
    root = tmp_path / "context"
    for path in image_context():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / path, root / path)
    return root


def _from_context(context: Path, then: str) -> str:
    """Python code that imports the package from ``context`` only, as in the image (which has no editable
    install: the development one's import hook is taken out, or it would find kube_netpol.tools here)."""
    return (f"import sys; sys.path.insert(0, {str(context)!r}); "
            "sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, '__module__', '').startswith('__editable__')]; "
            + then)


def _run_from(context: Path, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """`kube-netpol ARGS` with the package imported from ``context``."""
    code = _from_context(context, "from kube_netpol.cli import main; sys.exit(main())")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, **kwargs)


def test_the_cli_from_the_image_context_offers_the_agent_only(context_copy: Path) -> None:
    code = _from_context(context_copy, "import importlib.util, kube_netpol; print(kube_netpol.__file__); "
                                       "print(importlib.util.find_spec('kube_netpol.tools'))")
    where = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout.splitlines()
    assert where == [str(context_copy / "kube_netpol" / "__init__.py"), "None"]
    help_text = _run_from(context_copy, "--help", timeout=60).stdout
    assert "run" in help_text and "cleanup" in help_text
    assert not {"conformance", "lab", "explain", "advise"} & set(re.findall(r"\b[a-z]+\b", help_text.split("COMMAND", 1)[1])), help_text
    assert _run_from(context_copy, "run", "--version", timeout=60).stdout.startswith("kube-netpol ")
    # The chart's policy controller Deployment runs this image too: its command is there, without the tools.
    assert "policy-controller" in help_text
    controller = _run_from(context_copy, "policy-controller", "--help", timeout=60)
    assert controller.returncode == 0 and "--dry-run" in controller.stdout, controller.stderr


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0 or not all(shutil.which(t) for t in ("ip", "nft", "iptables")),
                    reason="needs root, iproute2, nft and iptables")
def test_the_agent_runs_from_the_image_context_alone(context_copy: Path, tmp_path: Path) -> None:
    """`kube-netpol run --manifests` from the image's files gets ready: it needs neither tests/ nor the tools."""
    import concurrent.futures
    import signal
    import socket
    import time

    from kube_netpol.tools.lab.names import owned_name
    from kube_netpol.tools.lab.netns import add_netns, delete_netns, open_netns, socket_in

    manifests = tmp_path / "manifests"
    manifests.mkdir()
    (manifests / "cluster.yaml").write_text(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n---\n"
        "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\n"
        "spec: {nodeName: image-node, containers: [{name: c, image: i}]}\nstatus: {phase: Running, podIP: 10.9.0.2}\n"
        "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\n"
        "spec: {podSelector: {}, policyTypes: [Ingress]}\n")
    netns = owned_name("knimg")
    add_netns(netns)
    subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True, timeout=30)
    maker = concurrent.futures.ThreadPoolExecutor(1)
    fd = open_netns(netns)
    code = _from_context(context_copy, "from kube_netpol.cli import main; sys.exit(main())")
    log_path = tmp_path / "agent.log"
    log = open(log_path, "w")  # a file, not a pipe nobody reads while the agent runs
    agent = subprocess.Popen(
        ["ip", "netns", "exec", netns, sys.executable, "-c", code, "run", "--manifests", str(manifests),
         "--hostname-override", "image-node", "--metrics-bind-address", "127.0.0.1:9080", "--nftables-table", "knimg"],
        stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        ready = False
        while not ready and agent.poll() is None and time.monotonic() < deadline:
            sock = maker.submit(socket_in, fd, socket.AF_INET, socket.SOCK_STREAM).result()
            try:
                sock.settimeout(2)
                sock.connect(("127.0.0.1", 9080))
                sock.sendall(b"GET /readyz HTTP/1.0\r\n\r\n")
                answer = b""
                while chunk := sock.recv(4096):  # the whole answer: closing early resets the server's write
                    answer += chunk
                ready = answer.split(b" ", 2)[1:2] == [b"200"]
            except OSError:
                time.sleep(0.1)
            finally:
                sock.close()
        if not ready:
            agent.kill()
            agent.wait(15)
            pytest.fail("the agent from the image context did not get ready:\n" + log_path.read_text())
        agent.send_signal(signal.SIGTERM)
        agent.wait(15)
        output = log_path.read_text()
        assert agent.returncode == 0, output
        assert "agent ready" in output and "Traceback" not in output, output
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait(5)
        log.close()
        maker.shutdown()
        os.close(fd)
        delete_netns([netns])
