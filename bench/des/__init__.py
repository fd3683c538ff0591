"""A discrete-event simulation of InferGate in front of N simulated vLLM engines (see bench/README.md)."""

from .cluster import POLICIES, Cluster, DESConfig, PointResult, run_point
from .workload import WORKLOADS, WorkloadSpec

__all__ = ["POLICIES", "WORKLOADS", "Cluster", "DESConfig", "PointResult", "WorkloadSpec", "run_point"]
