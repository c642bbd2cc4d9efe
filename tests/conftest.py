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
