"""The simulator's server API in one import: ``from sim.server import SimCluster, PodSpec, SimPod``.

The parts live in :mod:`sim.pod` (one server), :mod:`sim.cluster` (many in one loop) and
:mod:`sim.openai` (the wire format).
"""

from sim.cluster import SimCluster
from sim.openai import BadRequest, filler_text
from sim.pod import PodSpec, SimPod

__all__ = ["BadRequest", "PodSpec", "SimCluster", "SimPod", "filler_text"]
