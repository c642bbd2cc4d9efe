"""``python -m services.llm``: load the ``llm`` config section, build the service and serve it.

Prints one JSON ready line once SERVING (model loaded and warmed up), drains on SIGTERM/SIGINT, exits 0.
"""

from parley.bootstrap import run_service
from services.llm.config import load_llm_config
from services.llm.server import build_app


def main() -> None:
    """Serve the Llm service until SIGTERM/SIGINT."""
    run_service(build_app(load_llm_config()))


if __name__ == "__main__":
    main()
