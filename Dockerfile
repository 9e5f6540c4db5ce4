# The kube-netpol agent image (the DaemonSet in install.yaml and the chart runs it):
#
#   docker build -t ghcr.io/kube-netpol/kube-netpol:v0.1.0 .
#
# The apt packages and pip extras are those scripts/setup.sh installs for the
# agent; tests/packaging checks that the two lists agree.

# The base, pinned by digest: a rebuild gets the same bytes until this line
# changes. python:3.11-slim-bookworm as published on Docker Hub and recorded
# in public material on 2026-08-24 (not checked against the registry from
# the machine that wrote this line: it has no registry access). To refresh it,
# take the "Digest:" that this prints (the multi-platform index) and paste it below:
#   docker buildx imagetools inspect python:3.11-slim-bookworm
# (or `crane digest python:3.11-slim-bookworm`); tests/packaging checks its form.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:2e32f7d302adc1c37428355c1e646897c0c53f4fd60b6a551245fb90ee129f91

# --- builder: wheels for the package and every dependency -------------------
# NetfilterQueue compiles against libnetfilter_queue; the compiler and headers
# stay in this stage.
FROM ${PYTHON_IMAGE} AS builder
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        gcc libc6-dev libnetfilter-queue-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY kube_netpol ./kube_netpol
COPY plugins/kube-netpol-multinetwork ./plugins/kube-netpol-multinetwork
RUN pip wheel --no-cache-dir --wheel-dir /wheels '.[dataplane,kubernetes]' ./plugins/kube-netpol-multinetwork

# --- runtime ----------------------------------------------------------------
FROM ${PYTHON_IMAGE}
# nftables/libnftables1: the table (libnftables' JSON API); iptables: the xt
# queue backend; libnetfilter-queue1: the queue reader; iproute2: `ip -j address`
# for the node's own addresses. Strict mode speaks ctnetlink itself: no conntrack tool.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        nftables libnftables1 iptables libnetfilter-queue1 iproute2 \
    && rm -rf /var/lib/apt/lists/* \
    && update-alternatives --set iptables /usr/sbin/iptables-nft \
    && update-alternatives --set ip6tables /usr/sbin/ip6tables-nft
COPY --from=builder /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels 'kube-netpol[dataplane,kubernetes]' \
        kube-netpol-multinetwork \
    && rm -rf /wheels
# The pod's root filesystem is read-only: no .pyc files, unbuffered logs.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Root: the capabilities the pod adds (NET_ADMIN, NET_RAW) are effective only for root.
USER 0
ENTRYPOINT ["kube-netpol", "run"]
