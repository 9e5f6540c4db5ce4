#!/usr/bin/env bash
# Installs everything kube-netpol needs on a fresh Debian machine (run as root):
# the netfilter tools and libraries from apt, the package and its test and
# plugin extras into ./.venv. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

# What the agent needs at run time (the Dockerfile's runtime stage installs exactly these) ...
AGENT_APT_PACKAGES=(nftables libnftables1 iptables libnetfilter-queue1 iproute2)
# ... what building NetfilterQueue needs ...
BUILD_APT_PACKAGES=(libnetfilter-queue-dev gcc libc6-dev)
# ... and what only the tests and benchmarks run: conntrack (they make and flush entries; the
# agent itself speaks ctnetlink); qemu, cpio and kmod's depmod for the real-kernel tier, which
# boots Debian's kernel (tests/realkernel fetches and caches it itself); dnsmasq, the lab's DNS server.
TEST_APT_PACKAGES=(conntrack qemu-system-x86 cpio kmod dnsmasq-base)
APT_PACKAGES=("${AGENT_APT_PACKAGES[@]}" "${BUILD_APT_PACKAGES[@]}" "${TEST_APT_PACKAGES[@]}")
missing=()
for package in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}"
    apt-get update -qq
    # No recommends (as in the Dockerfile): qemu's would pull a desktop's worth of packages.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The Prometheus tier (tests/prometheus) runs its own Prometheus servers and promtool.
# Debian's package would start and enable a system Prometheus on :9090 (and recommends
# node-exporter, another service): install it with no service started (policy-rc.d
# answers 101 "not allowed"), without recommends, and keep its service off at boot.
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
    echo "setup: installing prometheus (its system service stays stopped and disabled)"
    policy=/usr/sbin/policy-rc.d
    own_policy=false
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\n# written by kube-netpol scripts/setup.sh for one apt-get install\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        own_policy=true
        trap 'rm -f "$policy"' EXIT  # also if the install fails
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    if $own_policy; then
        rm -f "$policy"
        trap - EXIT
    fi
    if [ -d /run/systemd/system ]; then
        systemctl disable --now prometheus.service >/dev/null 2>&1 || true
    fi
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -q --disable-pip-version-check \
    -e '.[dataplane,kubernetes,test]' ./plugins/kube-netpol-allowlist -e ./plugins/kube-netpol-multinetwork
# The Helm engine for linting and rendering the chart in tests. It declares
# Python >= 3.12 but works on 3.11; pinned because the tests read its result shapes.
.venv/bin/python -m pip install -q --disable-pip-version-check --ignore-requires-python \
    'helm-sdkpy==0.1.32' cffi pycparser
echo "setup: ready ($(.venv/bin/kube-netpol --help >/dev/null && echo kube-netpol installed))"
