import asyncio

from shared import schemas
from shared.natsconn import NatsOptions, StreamSettings, connect, ensure_streams
from shared.natsd import NatsServer, free_port
from shared.subjects import Subjects
from tests.support.waiting import wait_until


async def test_reconnects_after_server_restart(nats_server):
    events = []

    async def on_disc():
        events.append("down")

    async def on_rec():
        events.append("up")

    nc = await connect(
        NatsOptions(servers=[nats_server.url], reconnect_wait=0.1),
        on_disconnected=on_disc,
        on_reconnected=on_rec,
    )
    got = []

    async def on_msg(msg):
        got.append(msg.data)

    await nc.subscribe("t.x", cb=on_msg)
    await nc.publish("t.x", b"1")
    await nc.flush()
    await wait_until(lambda: got == [b"1"])

    nats_server.stop()
    await wait_until(lambda: "down" in events)
    await asyncio.to_thread(nats_server.start)
    await wait_until(lambda: "up" in events)
    await nc.publish("t.x", b"2")  # the subscription was restored on reconnect
    await nc.flush()
    await wait_until(lambda: got == [b"1", b"2"])
    await nc.close()


async def test_first_connect_waits_for_a_late_server(tmp_path):
    port = free_port()
    server = NatsServer(port=port, store_dir=str(tmp_path))
    task = asyncio.create_task(connect(NatsOptions(servers=[server.url], connect_timeout=0.5)))
    await asyncio.sleep(0.5)
    assert not task.done()  # still retrying, not failed
    await asyncio.to_thread(server.start)
    nc = await asyncio.wait_for(task, 15)
    assert nc.is_connected
    await nc.close()
    server.close()


async def test_first_connect_gives_up_when_stopped():
    stop = asyncio.Event()
    task = asyncio.create_task(connect(NatsOptions(servers=[f"nats://127.0.0.1:{free_port()}"]), stop=stop))
    await asyncio.sleep(0.2)
    stop.set()
    try:
        await asyncio.wait_for(task, 10)
        raise AssertionError("connect returned without a server")
    except ConnectionError:
        pass


async def test_streams_keep_last_value_per_endpoint(nats_server):
    subjects = Subjects()
    nc = await connect(NatsOptions(servers=[nats_server.url]))
    js = nc.jetstream()
    await ensure_streams(js, subjects, StreamSettings(endpoint_max_age_s=30))
    await ensure_streams(js, subjects)  # idempotent, and updates settings
    for seq in range(3):
        for pod in ("a", "b"):
            snap = schemas.EndpointSnapshot(namespace="ns", pool="p", pod=pod, address=f"{pod}:1", seq=seq)
            await js.publish(subjects.endpoint("ns", "p", pod, 1), schemas.encode(snap))
    info = await js.stream_info(subjects.endpoint_stream)
    assert info.state.messages == 2  # one per subject
    assert info.config.max_age == 60

    from nats.js.api import DeliverPolicy

    sub = await js.subscribe(
        subjects.endpoints_of_pool("ns", "p"),
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
    )
    dec = schemas.endpoint_decoder()
    seen = {}
    for _ in range(2):
        msg = await sub.next_msg(timeout=5)
        snap = dec.decode(msg.data)
        seen[snap.pod] = snap.seq
    assert seen == {"a": 2, "b": 2}
    await nc.close()
