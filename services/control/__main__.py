"""``python -m services.control``: load the ``control`` config section, build the service and serve it.

Prints one JSON ready line once SERVING, drains on SIGTERM/SIGINT (running replica builds are requeued).
"""

from parley.bootstrap import run_service
from services.control.config import load_control_config
from services.control.server import build_app


def main() -> None:
    """Serve the control plane until SIGTERM/SIGINT."""
    run_service(build_app(load_control_config()))


if __name__ == "__main__":
    main()
