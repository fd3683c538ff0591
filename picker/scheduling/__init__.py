"""The picker's scheduler: plugins composed into named profiles (see README.md).

A plugin of your own subclasses ``Filter``, ``Scorer`` or ``Picker`` and registers its
type name with ``register``; ``Params`` reads its parameters with field paths.
"""

from .api import CRITICALITIES, Criticality, Decision, EndpointView, RequestInfo, Scheduler
from .config import BUILTIN_CONFIG, SchedulingConfig, build_scheduler, load_config
from .context import Context
from .filters import Filter
from .framework import ProfileScheduler
from .params import ConfigError, Params
from .pickers import Picker
from .plugin import Plugin, register, registered
from .scorers import Scorer

__all__ = [
    "BUILTIN_CONFIG",
    "CRITICALITIES",
    "ConfigError",
    "Context",
    "Criticality",
    "Decision",
    "EndpointView",
    "Filter",
    "Params",
    "Picker",
    "Plugin",
    "ProfileScheduler",
    "RequestInfo",
    "Scheduler",
    "SchedulingConfig",
    "Scorer",
    "build_scheduler",
    "load_config",
    "register",
    "registered",
]
