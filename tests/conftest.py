"""Fixtures shared by every test folder: a real nats-server, the real envoy binary, a fake kube API.

``nats_server`` starts ``nats-server -js`` on a free loopback port with a temporary
store. Set ``NATS_URL`` to use an existing server instead (then stop/restart are not
available), or ``INFERGATE_TEST_NATS=container`` to run NATS in a testcontainers
container when a Docker engine is reachable.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest

from shared.natsd import NatsServer, find_binary
from tests.support.kubeapi import FakeKubeAPI


@dataclass
class ExternalNats:
    """A server this test run did not start (NATS_URL or a container): it cannot be restarted."""

    url: str

    def stop(self) -> None:
        pytest.skip("this test stops NATS, which needs a server the test run started itself")

    start = restart = stop


def _container_nats() -> Iterator[ExternalNats]:
    from testcontainers.nats import NatsContainer

    with NatsContainer().with_command("-js") as container:
        yield ExternalNats(container.nats_uri())


@pytest.fixture
def nats_server(tmp_path) -> Iterator[NatsServer | ExternalNats]:
    if os.environ.get("NATS_URL"):
        yield ExternalNats(os.environ["NATS_URL"])
        return
    if os.environ.get("INFERGATE_TEST_NATS") == "container":
        yield from _container_nats()
        return
    server = NatsServer(store_dir=str(tmp_path / "nats")).start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def envoy_binary() -> str:
    return find_binary("envoy")


@pytest.fixture
async def kube_api() -> AsyncIterator[FakeKubeAPI]:
    api = await FakeKubeAPI().start()
    try:
        yield api
    finally:
        await api.stop()
