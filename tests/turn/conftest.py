"""Fixtures of the turn service tests: loaded models and a running service on loopback."""

from __future__ import annotations

import pytest
import pytest_asyncio

from parley.session_store import SessionStore
from services.turn.backends.silero import SileroVad
from services.turn.backends.smart_turn import SmartTurn
from services.turn.config import TurnServiceConfig, load_turn_config
from services.turn.server import build_app


@pytest.fixture(scope="session")
def vad_model() -> SileroVad:
    return SileroVad()


@pytest.fixture(scope="session")
def eot_model() -> SmartTurn:
    return SmartTurn()


@pytest.fixture
def turn_config(redis_url: str) -> TurnServiceConfig:
    """Service config on free ports, against the test Redis, ignoring the caller's environment."""
    return load_turn_config(
        environ={}, server={"port": 0, "metrics_port": 0, "redis_url": redis_url, "drain_seconds": 0.5}
    )


@pytest.fixture
async def turn_app(turn_config: TurnServiceConfig):
    """A running turn service; yields the ServiceApp (``app.port``, ``app.metrics_port``)."""
    app = build_app(turn_config)
    async with app.running():
        yield app


@pytest.fixture
def target(turn_app) -> str:
    return f"127.0.0.1:{turn_app.port}"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_service(redis_url: str):
    """One running service and a session store for a whole test module (tests use loop_scope="module")."""
    config = load_turn_config(
        environ={}, server={"port": 0, "metrics_port": 0, "redis_url": redis_url, "drain_seconds": 0.5}
    )
    app = build_app(config)
    store = SessionStore(redis_url, ttl_s=600)
    async with app.running():
        yield app, store
    await store.close()
