"""Sharing every picker replica's traffic with its peers over NATS.

See ``picker/sharing/README.md``. The pieces: :class:`PeerPublisher` (the
:class:`EventSink` for this replica's own traffic), :class:`PeerListener` (applies
peers' traffic to the scheduler, replays history at start), :class:`EventApplier` (the
idempotent rules), and :class:`PeerSharing`, which wires them for the picker service.
"""

from .applier import EventApplier, to_request_info
from .listener import PeerListener
from .metrics import SharingMetrics
from .publisher import PeerPublisher
from .service import PeerSharing
from .settings import SharingSettings, add_sharing_flags, default_replica_name, settings_from_args
from .sink import AccountingHooks, EventSink

__all__ = [
    "AccountingHooks",
    "EventApplier",
    "EventSink",
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
