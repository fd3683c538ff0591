"""The picker's scheduler: plugins composed into named profiles (see README.md)."""

from .api import CRITICALITIES, Criticality, Decision, EndpointView, RequestInfo, Scheduler
from .config import BUILTIN_CONFIG, SchedulingConfig, build_scheduler, load_config
from .framework import ProfileScheduler
from .params import ConfigError

__all__ = [
    "BUILTIN_CONFIG",
    "CRITICALITIES",
    "ConfigError",
    "Criticality",
    "Decision",
    "EndpointView",
    "ProfileScheduler",
    "RequestInfo",
    "Scheduler",
    "SchedulingConfig",
    "build_scheduler",
    "load_config",
]
