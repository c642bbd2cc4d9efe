"""The per-conversation loop: user audio -> turn + ASR -> LLM -> TTS -> reply audio, with barge-in.

It runs wherever a session lives (the CLI today, the WebRTC gateway's session worker later) and talks
to the stage services over their bidirectional gRPC streams.
"""

from services.orchestrator.config import OrchestratorConfig, StageEndpoints
from services.orchestrator.conversation import Conversation
from services.orchestrator.events import (
    EndOfTurnDetected,
    Event,
    ReplyAudio,
    ReplyDone,
    ReplyInterrupted,
    ReplyText,
    StageFailed,
    UserSpeechStarted,
    UserSpeechStopped,
    UserTranscript,
)

__all__ = [
    "Conversation",
    "EndOfTurnDetected",
    "Event",
    "OrchestratorConfig",
    "ReplyAudio",
    "ReplyDone",
    "ReplyInterrupted",
    "ReplyText",
    "StageFailed",
    "StageEndpoints",
    "UserSpeechStarted",
    "UserSpeechStopped",
    "UserTranscript",
]
