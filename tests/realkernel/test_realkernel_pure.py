"""The real-kernel tier's host-side decisions, without booting anything."""

from __future__ import annotations

from pathlib import Path

import pytest
from guest_image import GuestImageError, GuestKernel, module_load_order
from qemu_vm import ACCEL_ENV, choose_accelerator


def _kernel(tmp_path: Path, modules_dep: str) -> GuestKernel:
    modules = tmp_path / "lib" / "modules" / "6.1.0-test"
    modules.mkdir(parents=True)
    (modules / "modules.dep").write_text(modules_dep)
    return GuestKernel(tmp_path, "6.1.0-test", "linux-image-test 1", tmp_path / "bin" / "busybox")


def test_modules_load_after_what_they_need_each_once(tmp_path: Path) -> None:
    # modules.dep lists a module's dependencies deepest last; file names may spell "_" as "-".
    kernel = _kernel(tmp_path, "\n".join([
        "kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko kernel/fs/fscache/fscache.ko kernel/fs/netfs/netfs.ko",
        "kernel/net/9p/9pnet.ko:",
        "kernel/fs/fscache/fscache.ko: kernel/fs/netfs/netfs.ko",
        "kernel/fs/netfs/netfs.ko:",
        "kernel/drivers/char/hw_random/virtio-rng.ko: kernel/drivers/virtio/virtio.ko",
        "kernel/drivers/virtio/virtio.ko:",
    ]) + "\n")  # fmt: skip
    assert module_load_order(kernel, ("9p", "virtio_rng")) == [
        "kernel/fs/netfs/netfs.ko", "kernel/fs/fscache/fscache.ko", "kernel/net/9p/9pnet.ko", "kernel/fs/9p/9p.ko",
        "kernel/drivers/virtio/virtio.ko", "kernel/drivers/char/hw_random/virtio-rng.ko",
    ]  # fmt: skip
    with pytest.raises(GuestImageError, match="no module veth"):
        module_load_order(kernel, ("veth",))


def test_kvm_only_with_hardware_virtualisation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ACCEL_ENV, raising=False)
    kvm = tmp_path / "kvm"
    kvm.touch()
    cpuinfo = tmp_path / "cpuinfo"
    # /dev/kvm from a paravirtual hypervisor (kvm-pvm): no vmx/svm, and it cannot boot a stock kernel.
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 hypervisor avx2\n")
    assert choose_accelerator(str(kvm), str(cpuinfo)).name == "tcg"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 vmx avx2\n")
    assert choose_accelerator(str(kvm), str(cpuinfo)).name == "kvm"
    assert choose_accelerator(str(tmp_path / "absent"), str(cpuinfo)).name == "tcg"
    monkeypatch.setenv(ACCEL_ENV, "tcg")
    assert choose_accelerator(str(kvm), str(cpuinfo)).name == "tcg"
