"""Parley ASR stage: streaming speech recognition (``parley.v1.Asr``) with partials and early finals.

``python -m services.asr`` runs it; :func:`services.asr.server.build_app` embeds it.
"""
