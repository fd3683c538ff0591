"""A locked-down bus, end to end: the NATS configuration shipped in deploy/ on a real nats-server.

The server runs ``deploy/base/nats/configmap.yaml``'s ``nats.conf`` (only ports, paths and
the cluster include substituted: tests/support/natsconf.py) with TLS from a CA made here.
The whole stack runs on it, each service with its own user, password, inbox prefix and
the CA: a request is routed through Envoy, the pickers share their events, the
autoscaler serves metrics from both streams. Then clients holding another service's
credentials try to forge snapshots and events: the server refuses each with a
permissions violation and nothing reaches the streams or the pickers' views, while the
collector's own credentials (the control) are accepted.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import nats
import nats.errors
import nats.js.errors
import pytest
import pytest_asyncio

from autoscaler.quantity import parse_quantity
from bench.stack import BASE_MODEL, NAMESPACE, POOL, Stack, StackConfig
from shared import schemas
from shared.natsd import find_binary, free_port, wait_for_port
from shared.subjects import Subjects
from tests.e2e.stack_helpers import completion, eventually, picker_gauges, post
from tests.support import natsconf
from tests.support.certs import TestCA

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

SUBJECTS = Subjects()
PASSWORDS = {
    "collector": "collector-secret-1",
    "picker": "picker-secret-2",
    "autoscaler": "autoscaler-secret-3",
}


@dataclass
class SecureNats:
    url: str
    ca: Path

    def args(self, service: str, password: str | None = None) -> tuple[str, ...]:
        """The NATS flags a service gets, as the deployments set them from its Secret."""
        return ("--nats-user", service, "--nats-password", password or PASSWORDS[service],
                "--nats-tls-ca", str(self.ca), "--nats-inbox-prefix", f"_INBOX_{service}")  # fmt: skip

    async def client(self, user: str, errors: list[str] | None = None, **kwargs) -> nats.NATS:
        async def on_error(exc: Exception) -> None:
            if errors is not None:
                errors.append(str(exc))

        tls = ssl.create_default_context(cafile=str(self.ca))
        return await nats.connect(
            self.url, user=user, password=PASSWORDS[user], tls=tls, inbox_prefix=f"_INBOX_{user}",
            error_cb=on_error, max_reconnect_attempts=0, **kwargs,
        )  # fmt: skip


@pytest.fixture(scope="module")
def secure_nats(tmp_path_factory) -> Iterator[SecureNats]:
    d = tmp_path_factory.mktemp("secure-nats")
    ca = TestCA(d / "pki")
    server = ca.issue("nats", client=False)
    paths = natsconf.Paths(free_port(), free_port(), d / "store", server.cert, server.key, ca.cert)
    conf = natsconf.write(d / "conf", paths, "server_name: secure-test\n")
    env = {**os.environ, **{natsconf.PASSWORD_VARS[u]: p for u, p in PASSWORDS.items()}}
    with open(d / "nats.log", "wb") as log:
        proc = subprocess.Popen(
            [find_binary("nats-server"), "-c", str(conf)], env=env, stdout=subprocess.DEVNULL, stderr=log,
            start_new_session=True,
        )  # fmt: skip
    try:
        wait_for_port("127.0.0.1", paths.port)
        yield SecureNats(f"nats://127.0.0.1:{paths.port}", ca.cert)
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(secure_nats: SecureNats) -> AsyncIterator[Stack]:
    services = ("collector", "picker", "autoscaler")
    config = StackConfig(
        pickers=2,
        round_robin_envoy=False,
        nats_url=secure_nats.url,
        nats_args={s: secure_nats.args(s) for s in services},
        kv_events=True,  # the KV-cache events' subjects and stream are locked down too
        profile="precise-prefix",
    )
    async with Stack(config) as s:
        yield s


async def autoscaler_values(stack: Stack, metric: str) -> list[float]:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the autoscaler's own self-signed serving certificate
    url = f"{stack.autoscaler_url}/apis/external.metrics.k8s.io/v1beta1/namespaces/{NAMESPACE}/{metric}"
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session,
        session.get(url) as resp,
    ):
        items = (await resp.json()).get("items", []) if resp.status == 200 else []
    return [parse_quantity(i["value"]) for i in items]


async def test_the_stack_works_with_one_locked_down_user_per_service(stack: Stack) -> None:
    for _ in range(6):
        r = await post(stack.gateway_url, completion())
        assert r.status == 200, r
    # Collector -> pickers (endpoint stream) and pickers -> each other (event subjects).
    assert await picker_gauges(stack, "infergate_picker_view_endpoints") == [4.0, 4.0]

    async def events_shared() -> bool:
        applied = await picker_gauges(stack, "infergate_sharing_applied_events_total")
        return sum(applied) > 0

    await eventually(events_shared, 15, "pickers applying each other's events")

    # Collector -> autoscaler (endpoint stream) and pickers -> autoscaler (events).
    async def autoscaler_serves() -> bool:
        ready = await autoscaler_values(stack, "infergate-ready-replicas")
        rate = await autoscaler_values(stack, "infergate-arrival-rate")
        return 4.0 in ready and sum(rate) > 0

    await eventually(autoscaler_serves, 20, "the autoscaler serving ready replicas and the arrival rate")

    # Pods -> collector -> pickers (KV-cache events): the pickers route on the precise path.
    async def precise_routed() -> bool:
        for _ in range(2):
            await post(stack.gateway_url, completion())
        key = 'infergate_picker_prefix_path_total{path="precise"}'
        async with aiohttp.ClientSession() as session:
            for p in stack.pickers:
                async with session.get(f"http://127.0.0.1:{p.metrics_port}/metrics") as resp:
                    if any(
                        line.startswith(key) and not line.endswith(" 0.0")
                        for line in (await resp.text()).splitlines()
                    ):
                        return True
        return False

    await eventually(precise_routed, 20, "a request routed on the precise prefix path")


def forged_snapshot(pod: str) -> tuple[str, bytes]:
    snap = schemas.EndpointSnapshot(
        namespace=NAMESPACE, pool=POOL, pod=pod, address="127.0.0.1:9", model=BASE_MODEL,
        kv_capacity_tokens=100_000, ts=schemas.now(), seq=1, epoch="forged", collector="forged",
    )  # fmt: skip
    return SUBJECTS.endpoint(NAMESPACE, POOL, pod, 9), schemas.encode(snap)


def forged_events(replica: str) -> tuple[str, bytes]:
    event = schemas.Assignment(
        request_id="forged-1", replica=replica, address="127.0.0.1:9", model=BASE_MODEL,
        target_model=BASE_MODEL, pool=POOL, namespace=NAMESPACE, prompt_tokens=10, ts=schemas.now(),
    )  # fmt: skip
    return SUBJECTS.events(NAMESPACE, POOL, replica), schemas.encode(
        schemas.EventBatch(replica=replica, events=[event])
    )


async def stored(nc: nats.NATS, stream: str, subject: str) -> int:
    """Messages ``stream`` holds on ``subject`` (STREAM.INFO: all the services may ask that)."""
    info = await nc.jetstream(timeout=3).stream_info(stream, subjects_filter=subject)
    return (info.state.subjects or {}).get(subject, 0)


async def test_other_services_credentials_cannot_forge_snapshots_or_events(
    stack: Stack, secure_nats: SecureNats
) -> None:
    attempts = [
        ("autoscaler", *forged_snapshot("intruder-a")),
        ("picker", *forged_snapshot("intruder-p")),
        ("collector", *forged_events("picker-forged-c")),
        ("autoscaler", *forged_events("picker-forged-a")),
    ]
    for user, subject, payload in attempts:
        errors: list[str] = []
        nc = await secure_nats.client(user, errors)
        try:
            await nc.publish(subject, payload)
            await nc.flush()

            async def refused(errors: list[str] = errors, subject: str = subject) -> bool:
                return any("permissions violation" in e.lower() and subject in e for e in errors)

            await eventually(refused, 5, f"a permissions violation for {user} publishing {subject}")
        finally:
            await nc.close()

    # Nothing of it was stored, nor reached the views or the peers.
    observer = await secure_nats.client("autoscaler")
    try:
        for _, subject, _ in attempts:
            stream = SUBJECTS.endpoint_stream if ".ep." in subject else SUBJECTS.event_stream
            assert await stored(observer, stream, subject) == 0, subject
    finally:
        await observer.close()
    assert await picker_gauges(stack, "infergate_picker_view_endpoints") == [4.0, 4.0]
    assert await picker_gauges(stack, "infergate_sharing_peers_alive") == [1.0, 1.0]

    # The control: the collector's own credentials may publish a snapshot, and the views take it.
    subject, payload = forged_snapshot("intruder-c")
    nc = await secure_nats.client("collector")
    try:
        await nc.publish(subject, payload)
        await nc.flush()

        async def five() -> bool:
            return await picker_gauges(stack, "infergate_picker_view_endpoints") == [5.0, 5.0]

        await eventually(five, 10, "the collector's snapshot reaching both pickers")
        observer = await secure_nats.client("autoscaler")
        try:
            assert await stored(observer, SUBJECTS.endpoint_stream, subject) == 1
        finally:
            await observer.close()
        gone = schemas.Tombstone(
            namespace=NAMESPACE, pool=POOL, pod="intruder-c", address="127.0.0.1:9", reason="test",
            ts=schemas.now(), seq=2, epoch="forged", collector="forged",
        )  # fmt: skip
        await nc.publish(subject, schemas.encode(gone))
        await nc.flush()
    finally:
        await nc.close()

    async def four() -> bool:
        return await picker_gauges(stack, "infergate_picker_view_endpoints") == [4.0, 4.0]

    await eventually(four, 10, "the control snapshot's tombstone applied")


async def test_no_client_gets_in_without_tls_and_its_password(secure_nats: SecureNats) -> None:
    with pytest.raises((nats.errors.Error, OSError, asyncio.TimeoutError)):  # plaintext: TLS required
        await nats.connect(secure_nats.url, user="picker", password=PASSWORDS["picker"],
                           max_reconnect_attempts=0, connect_timeout=2, allow_reconnect=False)  # fmt: skip
    tls = ssl.create_default_context(cafile=str(secure_nats.ca))
    with pytest.raises((nats.errors.Error, OSError, asyncio.TimeoutError)):  # a wrong password
        await nats.connect(secure_nats.url, user="picker", password="guess", tls=tls,
                           max_reconnect_attempts=0, connect_timeout=2, allow_reconnect=False)  # fmt: skip


async def test_each_user_reads_only_its_own_replies(secure_nats: SecureNats) -> None:
    # A collector cannot listen to the picker's inbox (JetStream replies, endpoint deliveries),
    # nor touch the streams beyond creating them.
    errors: list[str] = []
    nc = await secure_nats.client("collector", errors)
    try:
        await nc.subscribe("_INBOX_picker.>")
        await nc.publish(f"$JS.API.STREAM.DELETE.{SUBJECTS.endpoint_stream}", b"")
        await nc.flush()

        async def both_refused() -> bool:
            text = " ".join(errors).lower()
            return 'subscription to "_inbox_picker.>"' in text and "stream.delete" in text

        await eventually(both_refused, 5, f"both refused (errors: {errors})")
    finally:
        await nc.close()


async def test_each_service_uses_only_its_own_kv_bucket(secure_nats: SecureNats) -> None:
    """The adapters bucket is the collectors', the rollouts bucket the pickers': each user can
    create, compare-and-set and list its own, and cannot create the other."""
    from shared.kvstore import Conflict, open_bucket

    for user, own, other in (
        ("collector", "INFERGATE_ADAPTERS", "INFERGATE_ROLLOUTS"),
        ("picker", "INFERGATE_ROLLOUTS", "INFERGATE_ADAPTERS"),
    ):
        nc = await secure_nats.client(user)
        try:
            kv = await open_bucket(nc, own, file_storage=False)
            rev = await kv.create(f"{user}-key", b"1")
            await kv.update(f"{user}-key", b"2", rev)
            with pytest.raises(Conflict):  # a stale revision loses the compare-and-set
                await kv.update(f"{user}-key", b"3", rev)
            assert f"{user}-key" in await kv.keys()
            assert (await kv.get(f"{user}-key")).value == b"2"
            with pytest.raises((nats.errors.Error, asyncio.TimeoutError)):
                await open_bucket(nc, other, file_storage=False)
        finally:
            await nc.close()
