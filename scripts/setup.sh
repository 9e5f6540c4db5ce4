#!/usr/bin/env bash
# Installs everything kube-netpol needs on a fresh Debian machine (run as root):
# the netfilter tools and libraries from apt, the package and its test and
# plugin extras into ./.venv. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(nftables libnftables1 iptables conntrack libnetfilter-queue1 libnetfilter-queue-dev iproute2 gcc)
missing=()
for package in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -q --disable-pip-version-check \
    -e '.[dataplane,kubernetes,test]' ./plugins/kube-netpol-allowlist
echo "setup: ready ($(.venv/bin/kube-netpol --help >/dev/null && echo kube-netpol installed))"
