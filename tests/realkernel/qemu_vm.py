"""Boot the guest kernel under qemu and run one command in it; the host's root is the guest's root (read-only).

KVM when the host CPU has hardware virtualisation; otherwise TCG (plain
emulation, tens of times slower for Python). ``/dev/kvm`` alone is not enough:
a paravirtual hypervisor (e.g. kvm-pvm, on this project's VMs) offers
``/dev/kvm`` without vmx/svm and cannot run an unmodified kernel at a usable
speed. The command's output goes to the serial console, captured in a file;
qemu is killed when the kernel does not reach init in time or the command
outlives its timeout.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from guest_image import GuestKernel, build_initramfs

QEMU = "qemu-system-x86_64"
ACCEL_ENV = "KUBE_NETPOL_REALKERNEL_ACCEL"
#: Seconds from qemu's start until the init prints its first line (measured: KVM about 1, TCG about 3).
BOOT_DEADLINE = {"kvm": 30.0, "tcg": 120.0}
#: What the init prints first; see guest_init.sh.
INIT_STARTED = "realkernel-init: started"
MEMORY_MB = 2048
CPUS = 2
KERNEL_ARGS = "console=ttyS0 panic=-1 quiet loglevel=4"
#: Where the init mounts the share in the guest (guest_init.sh's SHARE).
GUEST_SHARE = "/run/realkernel"


class GuestError(RuntimeError):
    """The guest did not boot, hung, or ended without reporting an exit status; the message has the console's tail."""


@dataclass(frozen=True)
class Accelerator:
    name: str  # "kvm" or "tcg"
    reason: str


@dataclass(frozen=True)
class GuestRun:
    exit_status: int
    console: str
    share: Path
    seconds: float
    accelerator: Accelerator


def why_qemu_cannot_run() -> str | None:
    """A reason to skip the tier, or None when qemu can boot the guest here."""
    if platform.machine() != "x86_64":
        return f"the real-kernel tier boots an amd64 kernel; this machine is {platform.machine()}"
    if shutil.which(QEMU) is None:
        return f"{QEMU} is not installed (scripts/setup.sh installs qemu-system-x86)"
    if os.geteuid() != 0:
        return "the real-kernel tier shares the host's root with the guest and needs root"
    return None


def choose_accelerator(kvm: str = "/dev/kvm", cpuinfo_path: str = "/proc/cpuinfo") -> Accelerator:
    forced = os.environ.get(ACCEL_ENV, "")
    if forced in ("kvm", "tcg"):
        return Accelerator(forced, f"{ACCEL_ENV}={forced}")
    if not os.access(kvm, os.R_OK | os.W_OK):
        return Accelerator("tcg", f"no usable {kvm}")
    flags: set[str] = set()
    with open(cpuinfo_path) as cpuinfo:
        for line in cpuinfo:
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    if not flags & {"vmx", "svm"}:
        return Accelerator("tcg", "/dev/kvm exists but the CPU has neither vmx nor svm (paravirtual KVM)")
    return Accelerator("kvm", "/dev/kvm and hardware virtualisation")


def _option_value(path: Path) -> str:
    # qemu's option syntax: a comma inside a value is written twice.
    return str(path).replace(",", ",,")


def qemu_argv(kernel: GuestKernel, initramfs: Path, share: Path, console: Path, accel: Accelerator) -> list[str]:
    return [
        QEMU,
        "-machine", f"q35,accel={accel.name}",
        "-cpu", "host" if accel.name == "kvm" else "max",
        "-smp", str(CPUS), "-m", str(MEMORY_MB),
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-serial", f"file:{_option_value(console)}",
        "-kernel", str(kernel.vmlinuz), "-initrd", str(initramfs), "-append", KERNEL_ARGS,
        "-device", "virtio-rng-pci",
        "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        "-virtfs", f"local,path={_option_value(share)},mount_tag=share,security_model=none,multidevs=remap",
    ]  # fmt: skip


def _one_per_line(values: Sequence[str], what: str) -> str:
    for value in values:
        if "\n" in value or not value:
            raise ValueError(f"{what} must be non-empty and on one line: {value!r}")
    return "".join(v + "\n" for v in values)


def run_in_guest(
    kernel: GuestKernel, argv: Sequence[str], cwd: Path, workdir: Path, timeout: float
) -> GuestRun:
    """Boot, run ``argv`` in ``cwd`` (a path of the host, seen alike in the guest), power off.

    ``workdir`` gets the initramfs, ``console.log``, ``qemu.log`` and ``share/``
    (the guest's ``GUEST_SHARE``, where the command may leave results).
    """
    share = workdir / "share"
    share.mkdir(parents=True)
    (share / "argv").write_text(_one_per_line(argv, "each argument"))
    (share / "cwd").write_text(_one_per_line([str(cwd)], "cwd"))
    (share / "modroot").write_text(_one_per_line([str(kernel.root)], "the kernel's root"))
    initramfs = build_initramfs(kernel, workdir / "initramfs.cpio")
    console = workdir / "console.log"
    console.touch()
    accel = choose_accelerator()
    started = time.monotonic()
    with open(workdir / "qemu.log", "wb") as qemu_log:
        process = subprocess.Popen(
            qemu_argv(kernel, initramfs, share, console, accel),
            stdin=subprocess.DEVNULL, stdout=qemu_log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            problem = _wait(process, console, started, BOOT_DEADLINE[accel.name], timeout)
            if problem is not None and accel.name == "kvm":
                problem += f" (if this host's KVM cannot run an unmodified kernel, set {ACCEL_ENV}=tcg)"
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(10)
    seconds = time.monotonic() - started
    text = console.read_text(errors="replace")
    status_file = share / "exit-status"
    if problem is None and not status_file.is_file():
        problem = f"the guest ended (qemu status {process.returncode}) without recording an exit status"
    if problem is not None:
        qemu_text = (workdir / "qemu.log").read_text(errors="replace").strip()
        raise GuestError(
            f"{problem} [accelerator {accel.name}: {accel.reason}; {seconds:.0f} s]\n"
            f"qemu: {qemu_text[-2000:] or '(nothing)'}\nconsole (last lines):\n{_tail(text, 60)}"
        )
    return GuestRun(int(status_file.read_text().strip()), text, share, seconds, accel)


def _wait(
    process: subprocess.Popen[bytes], console: Path, started: float, boot_deadline: float, timeout: float
) -> str | None:
    """None once qemu exits by itself; else why it had to be killed."""
    booted = False
    while process.poll() is None:
        elapsed = time.monotonic() - started
        if not booted:
            booted = INIT_STARTED in console.read_text(errors="replace")
            if not booted and elapsed > boot_deadline:
                return f"the kernel did not start the init within {boot_deadline:.0f} s; qemu killed"
        if elapsed > timeout:
            return f"the guest did not power off within {timeout:.0f} s; qemu killed"
        time.sleep(0.5)
    return None


def _tail(text: str, lines: int) -> str:
    return "\n".join("  | " + line for line in text.splitlines()[-lines:])
