"""Sharing every picker replica's traffic with its peers over the bus.

See ``picker/sharing/README.md``. The pieces: :class:`EventBatcher` (the
:class:`~picker.hooks.EventSink` for this replica's own traffic and its batching policy,
no I/O), :class:`PeerPublisher` (the batcher plus the task that publishes), :class:`PeerListener`
(applies peers' traffic to the pool state, replays history at start), :class:`EventApplier`
(the idempotent rules), and :class:`PeerSharing`, which wires them for the picker service.
"""

from .applier import EventApplier, to_request_info
from .batcher import EventBatcher
from .listener import PeerListener
from .metrics import SharingMetrics
from .publisher import PeerPublisher
from .service import PeerSharing
from .settings import SharingSettings, add_sharing_flags, default_replica_name, settings_from_args

__all__ = [
    "EventApplier",
    "EventBatcher",
    "PeerListener",
    "PeerPublisher",
    "PeerSharing",
    "SharingMetrics",
    "SharingSettings",
    "add_sharing_flags",
    "default_replica_name",
    "settings_from_args",
    "to_request_info",
]
