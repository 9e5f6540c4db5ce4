"""The PolicyEngine, its snapshots, the flow table and the managed addresses."""

from kube_netpol.engine.engine import PolicyEngine
from kube_netpol.engine.judgement import END_OF_PIPELINE, Explanation, Judgement, Step
from kube_netpol.engine.snapshot import Snapshot

__all__ = ["END_OF_PIPELINE", "Explanation", "Judgement", "PolicyEngine", "Snapshot", "Step"]
