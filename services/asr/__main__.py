"""``python -m services.asr``: load config (``PARLEY_CONFIG`` / ``PARLEY_ASR__*``), serve until SIGTERM.

Prints one JSON ready line (``{"event": "ready", "service": "asr", "port": ..., "metrics_port": ...}``)
once SERVING (model loaded and warmed up), drains on SIGTERM/SIGINT and exits 0.
"""

from __future__ import annotations

from parley.bootstrap import run_service

from .config import load_asr_config
from .server import build_app


def main() -> None:
    """Serve the Asr service until SIGTERM/SIGINT."""
    run_service(build_app(load_asr_config()))


if __name__ == "__main__":
    main()
