"""A persona's per-layer settings (as the control plane stores them) applied to a conversation's config."""

from __future__ import annotations

from typing import Any

from services.orchestrator.config import OrchestratorConfig

MAX_REPLY_TOKENS = 512
"""The LLM service's default cap on Sampling.max_tokens."""

PATIENCE = {
    # level: (end-of-turn probability needed, silence that closes the turn whatever the model says)
    "LEVEL_LOW": (0.35, 700),      # answers quickly, may cut in on a slow speaker
    "LEVEL_MEDIUM": (0.5, 1200),   # the turn service's defaults
    "LEVEL_HIGH": (0.7, 2000),     # waits for the user to really finish
}


def apply_persona_layers(config: OrchestratorConfig, layers: dict[str, Any]) -> OrchestratorConfig:
    """``config`` with a persona's ``layers`` (llm, tts, asr, turn_taking) applied; unset fields keep theirs.

    ``layers`` is the JSON form of ``parley.v1.PersonaLayers`` (proto field names). The LLM endpoint
    (backend / base_url / api_key) and tools are chosen by the LLM service's deployment, not per call.
    """
    update: dict[str, Any] = {}
    llm = layers.get("llm") or {}
    sampling = llm.get("sampling") or {}
    if llm.get("model"):
        update["llm_model"] = str(llm["model"])
    if "temperature" in sampling:
        update["temperature"] = float(sampling["temperature"])
    if "top_p" in sampling:
        update["top_p"] = float(sampling["top_p"])
    if "max_tokens" in sampling:
        update["max_tokens"] = max(1, min(MAX_REPLY_TOKENS, int(sampling["max_tokens"])))
    tts = layers.get("tts") or {}
    if tts.get("voice"):
        update["voice"] = str(tts["voice"])
    if tts.get("speed"):
        update["speed"] = float(tts["speed"])
    asr = layers.get("asr") or {}
    if asr.get("language"):
        update["language"] = str(asr["language"]).split("-")[0].lower()  # Whisper takes the base language
    turn = layers.get("turn_taking") or {}
    if turn.get("patience") in PATIENCE:
        update["end_of_turn_threshold"], update["silence_timeout_ms"] = PATIENCE[turn["patience"]]
    if turn.get("interruptibility") == "LEVEL_LOW":
        update["barge_in"] = False
    elif turn.get("interruptibility") in ("LEVEL_MEDIUM", "LEVEL_HIGH"):
        update["barge_in"] = True
    return config.model_copy(update=update) if update else config
