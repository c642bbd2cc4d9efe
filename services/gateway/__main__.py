"""``python -m services.gateway``: load the ``gateway`` config section and serve until SIGTERM/SIGINT.

Prints one JSON ready line once SERVING (gRPC health port); the HTTP side (web client, signalling) listens
on ``gateway.http.port`` (default 8080) and is logged as ``http serving``.
"""

from parley.bootstrap import run_service
from services.gateway.config import load_gateway_config
from services.gateway.server import build_app


def main() -> None:
    """Serve the gateway until SIGTERM/SIGINT."""
    run_service(build_app(load_gateway_config()))


if __name__ == "__main__":
    main()
