"""Turn-taking stage: voice activity detection and end-of-turn prediction (``parley.v1.TurnTaking``).

The orchestrator opens one ``TurnTaking.Detect`` stream per session, sends a ``TurnStart`` and then the
user's audio; the service answers with ``SpeechStarted`` / ``SpeechStopped`` / ``TurnPrediction`` /
``EndOfTurn`` events on the session clock. Default backends run offline on CPU: Silero VAD v6 and
smart-turn v3.2 (both ONNX via onnxruntime); the end-of-turn model can also be served by Triton.
"""

from services.turn.config import TurnServiceConfig, load_turn_config

__all__ = ["TurnServiceConfig", "load_turn_config"]
