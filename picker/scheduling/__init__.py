"""The picker's scheduling: pool state, admission and selection, built per profile (see README.md).

A plugin of your own subclasses ``Filter``, ``Scorer`` or ``Chooser`` (the config's
"picker" role) and registers its type name with ``register``; ``Params`` reads its
parameters with field paths.
"""

from . import precise as _precise  # noqa: F401  (registers the precise-prefix scorer)
from .admission import SaturationDetector, SheddingAdmission, UtilizationDetector
from .api import (
    CRITICALITIES,
    Admission,
    Criticality,
    Decision,
    EndpointView,
    Rejection,
    RequestInfo,
    Scheduler,
)
from .choosers import Chooser
from .config import BUILTIN_CONFIG, SchedulingConfig, build_profile, load_config
from .context import Context
from .filters import Filter
from .framework import ProfileScheduler
from .params import ConfigError, Params
from .plugin import Plugin, register, registered
from .pool import Candidates, PoolState
from .profile import Profile
from .scorers import Scorer

__all__ = [
    "BUILTIN_CONFIG",
    "CRITICALITIES",
    "Admission",
    "Candidates",
    "Chooser",
    "ConfigError",
    "Context",
    "Criticality",
    "Decision",
    "EndpointView",
    "Filter",
    "Params",
    "Plugin",
    "PoolState",
    "Profile",
    "ProfileScheduler",
    "Rejection",
    "RequestInfo",
    "SaturationDetector",
    "Scheduler",
    "SchedulingConfig",
    "Scorer",
    "SheddingAdmission",
    "UtilizationDetector",
    "build_profile",
    "load_config",
    "register",
    "registered",
]
