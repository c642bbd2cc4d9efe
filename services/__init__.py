"""Parley services: one package per stage service, plus the orchestrator and the ``parley`` CLI."""
