"""``python -m services.renderer``: load the ``renderer`` config section, build the service and serve it.

Prints one JSON ready line once SERVING (default replica loaded, one frame rendered), drains on
SIGTERM/SIGINT, exits 0.
"""

from parley.bootstrap import run_service
from services.renderer.config import load_renderer_config
from services.renderer.server import build_app


def main() -> None:
    """Serve the Renderer service until SIGTERM/SIGINT."""
    run_service(build_app(load_renderer_config()))


if __name__ == "__main__":
    main()
