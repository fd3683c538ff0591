"""Build an Envoy bootstrap (as a JSON-ready dict) from ``BootstrapOptions``.

The configuration is assembled from envoy-data-plane's typed messages, so a misspelt
field fails here, in Python, and the result is checked by the real Envoy binary in the
tests (``envoy --mode validate``). ``to_dict`` emits proto field names (snake_case, as in Envoy's
documentation); betterproto2 misspells some names with digits (``consecutive_5xx`` becomes
``consecutive_5_xx``), so the generator avoids those fields and the validate test guards the rest.
"""

from __future__ import annotations

from typing import Any as AnyType

import betterproto2
from envoy_data_plane.envoy.config.bootstrap.v3 import Admin, Bootstrap, BootstrapStaticResources
from envoy_data_plane.envoy.config.core.v3 import Address, SocketAddress
from envoy_data_plane.envoy.config.listener.v3 import Filter, FilterChain, Listener
from envoy_data_plane.google.protobuf import Any

from picker.envoy.clusters import clusters
from picker.envoy.http import connection_manager
from picker.envoy.options import BootstrapOptions

LISTENER_NAME = "infergate"


def listener(opts: BootstrapOptions) -> Listener:
    return Listener(
        name=LISTENER_NAME,
        address=Address(
            socket_address=SocketAddress(address=opts.listen_address, port_value=opts.listen_port)
        ),
        filter_chains=[
            FilterChain(
                filters=[
                    Filter(
                        name="envoy.filters.network.http_connection_manager",
                        typed_config=Any.pack(connection_manager(opts)),
                    )
                ]
            )
        ],
    )


def bootstrap_message(opts: BootstrapOptions) -> Bootstrap:
    return Bootstrap(
        admin=Admin(
            address=Address(
                socket_address=SocketAddress(address=opts.admin_address, port_value=opts.admin_port)
            )
        ),
        static_resources=BootstrapStaticResources(listeners=[listener(opts)], clusters=clusters(opts)),
    )


def build_bootstrap(opts: BootstrapOptions | None = None) -> dict[str, AnyType]:
    """The bootstrap as a plain dict, ready for ``json.dumps`` or ``yaml.safe_dump``."""
    message = bootstrap_message(opts or BootstrapOptions())
    out = message.to_dict(casing=betterproto2.Casing.SNAKE)
    return {"admin": out.pop("admin"), **out}  # admin first reads better in the YAML
