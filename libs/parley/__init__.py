"""Parley runtime library: config, service bootstrap, audio primitives, session store, logging.

Generated gRPC/protobuf code lives in ``parley.v1`` (built by ``make proto``).
"""

__version__ = "0.1.0"
