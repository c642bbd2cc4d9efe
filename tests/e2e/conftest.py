"""The whole local stack (Redis + turn, asr, llm, tts processes) for end-to-end tests."""

import pytest

from services.cli.stack import VOICE_SERVICES, Stack


@pytest.fixture(scope="session")
def stack(redis_url, tmp_path_factory):
    """A running stack on free loopback ports; on teardown every service must drain and exit 0."""
    run_dir = tmp_path_factory.mktemp("stack")
    stack = Stack(run_dir=run_dir, redis_url=redis_url, services=VOICE_SERVICES)
    info = stack.start()
    info.run_dir = run_dir
    yield info
    codes = stack.stop()
    assert codes == {name: 0 for name in ("turn", "asr", "llm", "tts")}, f"unclean exit codes: {codes}"
