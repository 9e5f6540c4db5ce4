"""The real-kernel tier's guest: Debian's kernel and its modules, cached, plus a tiny initramfs built per boot.

The kernel is Debian's ``linux-image-amd64`` (whatever it depends on today),
fetched with ``apt-get download`` and unpacked, not installed: the host's
``/boot`` and ``/lib/modules`` stay untouched and nothing on the host kernel is
needed. ``depmod`` writes the modules' index so the guest kernel can load
modules on demand, as on a node. The initramfs holds only a static busybox,
the virtio/9p modules and ``guest_init.sh``; everything else comes from the
host's root filesystem, shared read-only over virtio-9p.

Run this file to build the cache now (``--refresh`` replaces it)::

    .venv/bin/python tests/realkernel/guest_image.py [--refresh]
"""

from __future__ import annotations

import argparse
import fcntl
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CACHE = REPO / ".cache" / "realkernel"
KERNEL_META_PACKAGE = "linux-image-amd64"
BUSYBOX_PACKAGE = "busybox-static"
INIT_SCRIPT = HERE / "guest_init.sh"
#: What PID 1 loads itself: enough to mount the host's root over virtio-9p, and an entropy
#: source so early getrandom() does not wait. The kernel loads the rest on demand (modprobe).
BOOT_MODULES = ("virtio_pci", "9pnet_virtio", "9p", "virtio_rng")
_STAMP = "kernel.json"


class GuestImageError(RuntimeError):
    """The kernel could not be fetched or the initramfs not built; the message says which step failed."""


@dataclass(frozen=True)
class GuestKernel:
    """An unpacked Debian kernel package: ``root/boot/vmlinuz-VERSION`` and ``root/lib/modules/VERSION``."""

    root: Path
    version: str  # what uname -r says in the guest
    package: str  # "name version" of the Debian package it came from
    busybox: Path

    @property
    def vmlinuz(self) -> Path:
        return self.root / "boot" / f"vmlinuz-{self.version}"

    @property
    def modules(self) -> Path:
        return self.root / "lib" / "modules" / self.version


def _run(argv: list[str], cwd: Path | None = None) -> str:
    try:
        result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise GuestImageError(f"{argv[0]} is not installed (scripts/setup.sh installs what the tier needs)") from None
    if result.returncode != 0:
        raise GuestImageError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
    return result.stdout


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    # Two pytest runs of one checkout must not unpack into the same folder at once.
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _kernel_package() -> str:
    """The versioned package the meta package depends on today, e.g. ``linux-image-6.1.0-57-amd64``."""
    shown = _run(["apt-cache", "show", "--no-all-versions", KERNEL_META_PACKAGE])
    for line in shown.splitlines():
        if line.startswith("Depends:"):
            return line.split(":", 1)[1].split(",")[0].split()[0]
    raise GuestImageError(f"apt-cache show {KERNEL_META_PACKAGE} names no kernel package it depends on")


def _download(packages: list[str], into: Path) -> list[Path]:
    # Root downloads into a folder _apt cannot write: tell apt not to try its sandbox user.
    argv = ["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", *packages]
    try:
        _run(argv, cwd=into)
    except GuestImageError:
        _run(["apt-get", "update", "-qq"])  # a fresh machine may have no package lists yet
        _run(argv, cwd=into)
    return sorted(into.glob("*.deb"))


def _unpack(into: Path) -> GuestKernel:
    with tempfile.TemporaryDirectory(dir=into.parent) as downloads:
        package = _kernel_package()
        for deb in _download([package, BUSYBOX_PACKAGE], Path(downloads)):
            _run(["dpkg-deb", "-x", str(deb), str(into)])
        versions = _run(["dpkg-deb", "-f", str(next(Path(downloads).glob(f"{package}_*.deb"))), "Version"]).strip()
    kernels = sorted((into / "boot").glob("vmlinuz-*"))
    if len(kernels) != 1:
        raise GuestImageError(f"expected one kernel in {package}, found {[k.name for k in kernels]}")
    version = kernels[0].name.removeprefix("vmlinuz-")
    _run(["depmod", "-b", str(into), version])
    kernel = GuestKernel(into, version, f"{package} {versions}", into / "bin" / "busybox")
    if not kernel.busybox.is_file():
        raise GuestImageError(f"{BUSYBOX_PACKAGE} did not provide {kernel.busybox}")
    (into / _STAMP).write_text(json.dumps({"version": version, "package": kernel.package}))
    return kernel


def can_provide_kernel() -> bool:
    """Whether a kernel is cached or apt can fetch one (a Debian-like host)."""
    return (CACHE / "kernel" / _STAMP).is_file() or shutil.which("apt-get") is not None


def cached_kernel(refresh: bool = False) -> GuestKernel:
    """The cached kernel, fetched and unpacked first when missing (or when ``refresh``)."""
    final = CACHE / "kernel"
    with _locked(CACHE / "lock"):
        if refresh and final.exists():
            shutil.rmtree(final)
        if not (final / _STAMP).is_file():
            staging = CACHE / "kernel.partial"
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
            _unpack(staging)
            shutil.rmtree(final, ignore_errors=True)
            staging.rename(final)  # only a complete unpack ever carries the final name
        stamp = json.loads((final / _STAMP).read_text())
        return GuestKernel(final, stamp["version"], stamp["package"], final / "bin" / "busybox")


def module_load_order(kernel: GuestKernel, names: tuple[str, ...] = BOOT_MODULES) -> list[str]:
    """Paths (relative to the modules folder) of ``names`` and what they need, each after its dependencies."""
    depends: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in (kernel.modules / "modules.dep").read_text().splitlines():
        module, _, needs = line.partition(":")
        depends[module] = needs.split()
        by_name[Path(module).name.removesuffix(".ko").replace("-", "_")] = module
    order: list[str] = []

    def visit(module: str) -> None:
        if module in order:
            return
        for needed in reversed(depends[module]):  # modules.dep lists the deepest dependency last
            visit(needed)
        order.append(module)

    for name in names:
        if name not in by_name:
            raise GuestImageError(f"kernel {kernel.version} has no module {name} (built in, or renamed?)")
        visit(by_name[name])
    return order


def build_initramfs(kernel: GuestKernel, dest: Path) -> Path:
    """Write an uncompressed newc cpio archive: /init, /bin/busybox, /modules/*.ko and their load order."""
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        staging = Path(tmp)
        for folder in ("bin", "modules", "proc", "sys", "dev", "newroot"):
            (staging / folder).mkdir()
        shutil.copy2(kernel.busybox, staging / "bin" / "busybox")
        shutil.copy2(INIT_SCRIPT, staging / "init")
        (staging / "init").chmod(0o755)
        order = module_load_order(kernel)
        for module in order:
            shutil.copy2(kernel.modules / module, staging / "modules" / Path(module).name)
        (staging / "modules" / "order").write_text("".join(Path(m).name + "\n" for m in order))
        members = sorted(str(p.relative_to(staging)) for p in staging.rglob("*"))
        if shutil.which("cpio") is None:
            raise GuestImageError("cpio is not installed (scripts/setup.sh installs what the tier needs)")
        with open(dest, "wb") as archive:
            result = subprocess.run(
                ["cpio", "--create", "--format=newc", "--quiet", "--owner=0:0"],
                cwd=staging, input="\n".join(members).encode(), stdout=archive, stderr=subprocess.PIPE, check=False,
            )  # fmt: skip
        if result.returncode != 0:
            raise GuestImageError(f"cpio failed: {result.stderr.decode(errors='replace').strip()}")
    return dest


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="Fetch and unpack the real-kernel tier's Debian kernel.")
    parser.add_argument("--refresh", action="store_true", help="replace the cached kernel by today's")
    args = parser.parse_args(argv)
    kernel = cached_kernel(refresh=args.refresh)
    print(f"cached {kernel.package} (uname -r {kernel.version}) in {kernel.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
