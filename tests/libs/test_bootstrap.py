"""ServiceApp: health, reflection, metrics endpoint, error mapping, admission control, drain."""

import asyncio

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from parley.bootstrap import ServiceApp
from parley.config import ServerConfig
from parley.errors import InvalidInput
from parley.v1 import turn_pb2, turn_pb2_grpc


class EchoTurn(turn_pb2_grpc.TurnTakingServicer):
    """Minimal servicer exercising ServiceApp.stream: one event per audio frame, errors on demand."""

    def __init__(self, app: ServiceApp) -> None:
        self.app = app

    async def Detect(self, request_iterator, context):
        async def body():
            first = await anext(request_iterator)
            if not first.HasField("start"):
                raise InvalidInput("first message must be start")
            await self.app.check_session(first.start.session.session_id)
            async for request in request_iterator:
                if request.audio.sample_rate == 1:
                    raise RuntimeError("boom")
                yield turn_pb2.TurnEvent(timestamp_us=request.audio.timestamp_us)

        async for event in self.app.stream("Detect", context, body):
            yield event


def make_app(redis_url, **server):
    app = ServiceApp("echo", ServerConfig(redis_url=redis_url, **server))
    app.add_service("parley.v1.TurnTaking", turn_pb2_grpc.add_TurnTakingServicer_to_server, EchoTurn(app))
    return app


def start(session_id):
    return turn_pb2.TurnRequest(start=turn_pb2.TurnStart(session={"session_id": session_id}))


def audio(ts, rate=16000):
    return turn_pb2.TurnRequest(audio={"data": b"\0\0", "sample_rate": rate, "timestamp_us": ts})


async def test_health_reflection_metrics_and_stream(redis_url, session_id):
    app = make_app(redis_url)
    async with app.running() as address, grpc.aio.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "parley.v1.TurnTaking"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(channel)
        async for reply in refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])):
            names = {s.name for s in reply.list_services_response.service}
            assert {"parley.v1.TurnTaking", "grpc.health.v1.Health"} <= names
        stub = turn_pb2_grpc.TurnTakingStub(channel)
        events = [e async for e in stub.Detect(iter([start(session_id), audio(1), audio(2)]))]
        assert [e.timestamp_us for e in events] == [1, 2]
        async with httpx.AsyncClient() as http:
            text = (await http.get(f"http://127.0.0.1:{app.metrics_port}/metrics")).text
        assert 'parley_streams_total{code="OK",method="Detect",service="echo"} 1.0' in text


@pytest.mark.parametrize(
    "requests, code, message",
    [
        (lambda sid: [audio(1)], grpc.StatusCode.INVALID_ARGUMENT, "first message must be start"),
        (lambda sid: [start("unknown-session")], grpc.StatusCode.NOT_FOUND, "unknown session_id"),
        (lambda sid: [start("bad id!")], grpc.StatusCode.INVALID_ARGUMENT, "session_id must be"),
        (lambda sid: [start(sid), audio(1, rate=1)], grpc.StatusCode.INTERNAL, "boom"),
    ],
)
async def test_errors_map_to_status_codes(redis_url, session_id, requests, code, message):
    app = make_app(redis_url)
    async with app.running() as address, grpc.aio.insecure_channel(address) as channel:
        stub = turn_pb2_grpc.TurnTakingStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            [e async for e in stub.Detect(iter(requests(session_id)))]
        assert err.value.code() == code and message in err.value.details()


async def test_admission_limit(redis_url, session_id):
    app = make_app(redis_url, max_sessions=1)
    async with app.running() as address, grpc.aio.insecure_channel(address) as channel:
        stub = turn_pb2_grpc.TurnTakingStub(channel)
        gate = asyncio.Event()

        async def held():
            yield start(session_id)
            await gate.wait()

        first = stub.Detect(held())
        await asyncio.sleep(0.3)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            [e async for e in stub.Detect(iter([start(session_id)]))]
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        gate.set()
        assert [e async for e in first] == []


async def test_drain_lets_in_flight_stream_finish_and_refuses_new(redis_url, session_id):
    app = make_app(redis_url, drain_seconds=5, drain_notice_seconds=1.0)
    await app.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.port}")
    stub = turn_pb2_grpc.TurnTakingStub(channel)
    release = asyncio.Event()

    async def slow():
        yield start(session_id)
        yield audio(1)
        await release.wait()
        yield audio(2)

    call = stub.Detect(slow())
    assert (await call.read()).timestamp_us == 1
    drain = asyncio.create_task(app.drain())
    await asyncio.sleep(0.2)
    health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
    release.set()
    assert (await call.read()).timestamp_us == 2  # the in-flight stream completes during the drain
    await drain
    with pytest.raises(grpc.aio.AioRpcError):  # after the drain nothing new is accepted
        await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
    await channel.close()
