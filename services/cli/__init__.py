"""The ``parley`` command: run the local stack and talk to it."""
