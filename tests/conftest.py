"""Shared fixtures: a private Redis server, a session store and a fresh session id."""

from __future__ import annotations

import os

import pytest

from parley.redis_server import RedisProcess
from parley.session_store import SessionStore


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of a redis-server started for this test run (real Redis on loopback)."""
    proc = RedisProcess().start()
    os.environ["PARLEY_COMMON__SERVER__REDIS_URL"] = proc.url
    yield proc.url
    proc.stop()


@pytest.fixture
async def store(redis_url: str) -> SessionStore:
    store = SessionStore(redis_url, ttl_s=600)
    yield store
    await store.close()


@pytest.fixture
async def session_id(store: SessionStore) -> str:
    """A session that exists in the store, as the orchestrator would create it."""
    return await store.create(persona="test")


_speech_cache: dict[tuple[str, int], object] = {}


@pytest.fixture(scope="session")
def speak():
    """``speak(text, rate=16000) -> parley.audio.Audio``: natural speech synthesized with hibari TTS."""
    from hibari import SAMPLE_RATE, Hibari

    from parley.audio import Audio, resample

    tts = Hibari()

    def _speak(text: str, rate: int = 16_000, seed: int = 7) -> Audio:
        key = (text, rate)
        if key not in _speech_cache:
            samples = resample(tts(text, seed=seed), SAMPLE_RATE, rate)
            _speech_cache[key] = Audio(samples, rate)
        return _speech_cache[key]

    return _speak


@pytest.fixture(scope="session")
def replica_store(tmp_path_factory):
    """A ReplicaStore shared by the whole test session (``$PARLEY_TEST_REPLICA_DIR`` to reuse builds
    across runs). Its root is exported as ``PARLEY_REPLICA_DIR`` so service processes use it too."""
    from services.renderer.replica import ReplicaStore

    root = os.environ.get("PARLEY_TEST_REPLICA_DIR") or str(tmp_path_factory.mktemp("replicas"))
    os.environ["PARLEY_REPLICA_DIR"] = root
    return ReplicaStore(root)


@pytest.fixture(scope="session")
def astronaut_replica(replica_store):
    """The default (astronaut) replica, built once per session with real MediaPipe + torch
    (about 25-70 s on 2 CPU cores)."""
    return replica_store.default()
