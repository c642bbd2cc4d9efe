"""Parley TTS stage: streaming text (LLM tokens) to speech audio with word and phoneme timings.

The ``parley.v1.Tts/Synthesize`` stream takes a ``TtsStart``, then ``TextPiece`` fragments as an LLM
produces them, then a ``TtsFlush``; the service cuts the text into clauses (:mod:`.chunker`), synthesizes
each clause on a worker thread with the configured backend (:mod:`.backends`) and streams the audio
with stream-relative timings. See :mod:`.server` for the stream contract and :mod:`.config` for settings.
"""
