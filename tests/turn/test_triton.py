"""The Triton end-of-turn backend against an in-process Triton-protocol server running smart-turn."""

from __future__ import annotations

import numpy as np
import pytest

from parley.errors import BackendUnavailable
from services.turn.config import TritonConfig, load_turn_config
from services.turn.server import build_app
from tests.turn.helpers import audio_requests, run_stream, silence, start_request

tritonclient = pytest.importorskip(
    "tritonclient.grpc", reason="tritonclient[grpc]==2.45.0 is not installed (pip install 'parley[triton]')"
)

from services.turn.backends.triton import TritonSmartTurn  # noqa: E402
from tests.turn import triton_server  # noqa: E402

pytestmark = pytest.mark.models


@pytest.fixture(scope="module")
def triton():
    server, port, servicer = triton_server.start()
    yield f"127.0.0.1:{port}", servicer
    server.stop(0)


async def test_triton_backend_matches_local_model(triton, eot_model, speak) -> None:
    url, servicer = triton
    backend = TritonSmartTurn(TritonConfig(url=url, startup_timeout_s=5))
    try:
        await backend.wait_ready()
        for text in ("What is the capital of France?", "So I went to the store and then"):
            audio = np.concatenate([speak(text).samples, silence(0.2)])
            assert backend.predict(audio) == pytest.approx(eot_model.predict(audio), abs=1e-5)
        assert servicer.infer_calls >= 2
    finally:
        backend.close()


async def test_triton_unknown_model_and_unreachable_server(triton) -> None:
    url, _ = triton
    wrong = TritonSmartTurn(TritonConfig(url=url, model_name="nope", startup_timeout_s=0.5))
    with pytest.raises(BackendUnavailable, match="no ready model 'nope'"):
        await wrong.wait_ready()
    with pytest.raises(BackendUnavailable, match="nope"):
        wrong.predict(silence(1.0))
    wrong.close()
    down = TritonSmartTurn(TritonConfig(url="127.0.0.1:1", timeout_s=0.5))
    with pytest.raises(BackendUnavailable):
        down.predict(silence(1.0))
    assert not down.is_ready()
    down.close()


async def test_service_with_triton_backend(triton, redis_url, store, speak) -> None:
    url, servicer = triton
    before = servicer.infer_calls
    config = load_turn_config(
        environ={"PARLEY_TURN__END_OF_TURN__BACKEND": "triton", "PARLEY_TURN__END_OF_TURN__TRITON__URL": url},
        server={"port": 0, "redis_url": redis_url, "drain_seconds": 0.5},
    )
    assert config.end_of_turn.backend == "triton"
    app = build_app(config)
    async with app.running() as target:
        session_id = await store.create()
        audio = np.concatenate([speak("What is the capital of France?").samples, silence(1.5)])
        result = await run_stream(target, [start_request(session_id)] + audio_requests(audio, 16_000))
    assert result.kinds() == ["speech_started", "speech_stopped", "prediction", "end_of_turn"]
    assert result.events[-1].end_of_turn.reason == "model"
    assert servicer.infer_calls > before  # warm-up and the turn went through Triton


async def test_service_start_fails_clearly_without_triton(redis_url) -> None:
    config = load_turn_config(
        environ={},
        server={"port": 0, "redis_url": redis_url, "drain_seconds": 0.2},
        end_of_turn={"backend": "triton", "triton": {"url": "127.0.0.1:1", "startup_timeout_s": 0.5, "timeout_s": 0.2}},
    )
    app = build_app(config)
    try:
        with pytest.raises(BackendUnavailable, match="triton at 127.0.0.1:1"):
            await app.start()
    finally:
        await app.drain()  # start() leaves the gRPC server running when a start-up hook fails
