#!/bin/busybox sh
# PID 1 of the real-kernel guest (busybox sh). Stage 1 runs in the initramfs:
# mount the host's root read-only over virtio-9p (tag "hostroot") with tmpfs
# where things get written, the host's share read-write (tag "share") at
# /run/realkernel, then switch_root into it. Stage 2 runs the command the host
# put in the share (argv: one argument per line; cwd), records its exit status
# there and powers off. Any failure powers off too: the host reads the console.
set -u
SHARE=/run/realkernel
BUSYBOX=/run/realkernel-bin/busybox  # busybox picks the applet by its own name: keep it "busybox"
NINEP=trans=virtio,version=9p2000.L,msize=512000

say() { echo "realkernel-init: $*"; }
off() {
    # busybox's own copy after switch_root, the initramfs's before.
    if [ -x "$BUSYBOX" ]; then "$BUSYBOX" poweroff -f; else /bin/busybox poweroff -f; fi
}
die() { say "FAILED: $*"; off; }

stage1() {
    /bin/busybox --install -s /bin
    export PATH=/bin
    mount -t proc proc /proc && mount -t sysfs sysfs /sys && mount -t devtmpfs devtmpfs /dev || die "mount proc/sys/dev"
    say "started, kernel $(uname -r)"
    while read -r module; do
        insmod "/modules/$module" || die "insmod $module"
    done < /modules/order
    # The host does not change the shared tree while the guest runs: let the guest cache it.
    mount -t 9p -o "$NINEP,ro,cache=loose" hostroot /newroot || die "mount the host's root over 9p"
    for dir in tmp run var/tmp; do
        mount -t tmpfs -o mode=1777 tmpfs "/newroot/$dir" || die "tmpfs on /$dir"
    done
    mount -t proc proc /newroot/proc && mount -t sysfs sysfs /newroot/sys && mount -t devtmpfs devtmpfs /newroot/dev \
        || die "proc/sys/dev in the new root"
    mkdir -p /newroot/dev/shm /newroot/run/lock "/newroot$SHARE"
    mount -t tmpfs -o mode=1777 tmpfs /newroot/dev/shm || die "tmpfs on /dev/shm"
    mount -t 9p -o "$NINEP,rw" share "/newroot$SHARE" || die "mount the share over 9p"
    mkdir -p "/newroot${BUSYBOX%/*}" && cp /bin/busybox "/newroot$BUSYBOX" && cp /init /newroot/run/realkernel-init || die "copy busybox"
    exec switch_root /newroot "$BUSYBOX" sh /run/realkernel-init stage2
}

stage2() {
    export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
    bb() { "$BUSYBOX" "$@"; }
    bb hostname realkernel
    bb ip link set lo up
    # The kernel loads modules on demand (nf_tables, nft_queue, veth, sctp, ...) as on a node,
    # from the unpacked package: the host's root has no /lib/modules for this kernel.
    read -r modroot < "$SHARE/modroot" || die "no modroot in the share"
    [ -x /usr/sbin/modprobe ] || die "the host has no /usr/sbin/modprobe (scripts/setup.sh installs kmod)"
    printf '#!%s sh\nexec /usr/sbin/modprobe -d "%s" "$@"\n' "$BUSYBOX" "$modroot" > /run/realkernel-modprobe
    bb chmod 755 /run/realkernel-modprobe
    echo /run/realkernel-modprobe > /proc/sys/kernel/modprobe
    read -r cwd < "$SHARE/cwd" || die "no cwd in the share"
    set --
    while IFS= read -r arg; do set -- "$@" "$arg"; done < "$SHARE/argv"
    say "running $* (in $cwd)"
    cd "$cwd" || die "cd $cwd"
    HOME=/tmp LANG=C.UTF-8 TERM=dumb PYTHONDONTWRITEBYTECODE=1 REALKERNEL_SHARE="$SHARE" "$@" < /dev/null
    status=$?
    echo "$status" > "$SHARE/exit-status"
    bb sync
    say "exit status $status"
    off
}

case "${1:-stage1}" in
    stage1) stage1 ;;
    stage2) stage2 ;;
esac
