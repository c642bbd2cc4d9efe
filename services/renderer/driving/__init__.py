"""Driving the rig: speech (visemes or audio), emotion and listening behaviour -> Controls per frame.

Pure logic, no rendering: see :mod:`.visemes`, :mod:`.audio`, :mod:`.emotion`, :mod:`.idle` and
:mod:`.timeline` (which combines them at a fixed fps).
"""

from services.renderer.driving.audio import AudioMouth, Loudness
from services.renderer.driving.emotion import EMOTION_OFFSETS, Emotion, EmotionState
from services.renderer.driving.idle import IdleMotion, Mode
from services.renderer.driving.timeline import DrivingOptions, SpeechTrack, Timeline, Word, speech_controls
from services.renderer.driving.visemes import MOUTH, Phone, VisemeOptions, VisemeTrack, viseme_for

__all__ = [
    "EMOTION_OFFSETS", "MOUTH", "AudioMouth", "DrivingOptions", "Emotion", "EmotionState", "IdleMotion",
    "Loudness", "Mode", "Phone", "SpeechTrack", "Timeline", "VisemeOptions", "VisemeTrack", "Word",
    "speech_controls", "viseme_for",
]
