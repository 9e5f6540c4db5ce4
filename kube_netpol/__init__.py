"""kube-netpol: a Kubernetes network policy agent."""

__version__ = "0.1.0"
