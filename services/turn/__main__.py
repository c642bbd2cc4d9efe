"""``python -m services.turn``: load the ``turn`` config section, build the service and serve it.

Prints one JSON ready line once SERVING (models loaded and warmed up), drains on SIGTERM/SIGINT, exits 0.
"""

from parley.bootstrap import run_service
from services.turn.config import load_turn_config
from services.turn.server import build_app


def main() -> None:
    """Serve the TurnTaking service until SIGTERM/SIGINT."""
    run_service(build_app(load_turn_config()))


if __name__ == "__main__":
    main()
