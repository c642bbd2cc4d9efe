"""``python -m services.tts``: load the ``tts`` config section, build the service and serve it.

Prints one JSON ready line once SERVING (model loaded and warmed up), drains on SIGTERM/SIGINT, exits 0.
"""

from parley.bootstrap import run_service
from services.tts.config import load_tts_config
from services.tts.server import build_app


def main() -> None:
    """Serve the Tts service until SIGTERM/SIGINT."""
    run_service(build_app(load_tts_config()))


if __name__ == "__main__":
    main()
