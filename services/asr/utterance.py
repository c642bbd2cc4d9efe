"""Per-stream utterance logic: when to run partial decodes, the early final on SPEECH_ENDED and its
reuse on FINALIZE. Independent of gRPC: decoding and event delivery are injected callables.

Timeline of one user turn, as the orchestrator drives it::

    audio ... audio                 partial decodes every ``partial_interval`` of new audio
    (150 ms pause after speech)     a final-quality "pause decode" starts speculatively
    SPEECH_ENDED(at)                early final = the pause decode if it covers `at`, else a decode of
                                    [start, at + pad] that starts at once
    audio (silence) ...             no partials while the early final is valid
    FINALIZE(at)                    final = the early decode (reused_early_decode) if it covers `at`,
                                    else a fresh decode; the next utterance starts at `at`
    SPEECH_RESUMED                  (instead of FINALIZE) the early decode is discarded
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

import numpy as np

from parley import metrics
from parley.audio import Audio

from .backends.base import SAMPLE_RATE, Recognition, snap_words_to_speech
from .buffer import AudioInput, UtteranceBuffer, peak_dbfs, us_to_samples
from .decoder import Priority

log = logging.getLogger("parley.asr.utterance")

PAUSE_BELOW_PEAK_DB = 35.0
"""Audio this far below the utterance's loudest 20 ms (or below the silence level) is a pause."""
PAUSE_TAIL_MS = 100
"""Default: the newest this-many ms being quiet make a pause: no partial starts then (the transcript cannot have
changed), and a pause decode may start instead."""

DecodeFn = Callable[[np.ndarray, bool, Priority], Awaitable[Recognition]]
"""``decode(samples_16k, word_timestamps, priority) -> Recognition``."""


@dataclass(frozen=True)
class TimedWord:
    """A word on the session clock."""

    word: str
    start_us: int
    end_us: int
    confidence: float = 0.0


@dataclass(frozen=True)
class TranscriptEvent:
    """A partial or final transcript of one utterance."""

    final: bool
    text: str
    words: list[TimedWord]
    audio_start_us: int
    audio_end_us: int
    compute_ms: float
    utterance_index: int
    language: str
    reused_early_decode: bool = False


@dataclass(frozen=True)
class StreamSettings:
    """Knobs of one stream (service config merged with the AsrStart message)."""

    language: str = "en"
    partials: bool = False
    partial_interval_ms: int = 700
    word_timestamps: bool = True
    partial_word_timestamps: bool = True
    pad_ms: int = 100
    early_tolerance_ms: int = 1500
    preroll_ms: int = 1000
    silence_dbfs: float = -50.0
    max_utterance_s: float = 30.0
    pause_decode: bool = True
    pause_tail_ms: int = PAUSE_TAIL_MS


@dataclass
class _Partial:
    """A background decode of the utterance so far: a partial, or a final-quality pause decode."""

    samples: np.ndarray = field(repr=False)
    start_us: int
    end_us: int
    generation: int
    word_timestamps: bool
    pause: bool = False
    task: asyncio.Task[Recognition | None] | None = field(default=None, repr=False)


@dataclass
class _EarlyDecode:
    speech_end_us: int  # SPEECH_ENDED at_us
    start_us: int  # session time of its first sample
    covered_end_us: int  # end of the audio it decodes
    generation: int
    samples: np.ndarray = field(repr=False)
    task: asyncio.Task[Recognition | None] = field(repr=False)
    adopted: _Partial | None = None  # an in-flight partial that already covers the speech


class UtteranceSession:
    """The state machine of one ASR stream. Call its methods from one task, in message order."""

    def __init__(
        self,
        decode: DecodeFn,
        emit: Callable[[TranscriptEvent], None],
        settings: StreamSettings,
    ) -> None:
        self._decode = decode
        self._emit = emit
        self.settings = settings
        self.buffer = UtteranceBuffer(settings.max_utterance_s)
        self.input = AudioInput()
        self.utterance_index = 0  # index of the next final
        self._generation = 0  # bumped whenever the current utterance ends (stale results are dropped)
        self._new_samples = 0  # appended since the last partial started
        self._level = -120.0  # loudest 20 ms of the utterance so far (dBFS)
        self._partial: _Partial | None = None  # the latest partial / pause decode (running or done)
        self._audible_end_us = -1  # session time where the last audible frame ended
        self._early: _EarlyDecode | None = None
        self._early_pending_at: int | None = None  # SPEECH_ENDED whose audio has not arrived yet
        self._early_timer: asyncio.TimerHandle | None = None
        self._speech_active: bool | None = None  # None until the client sends a VAD control
        self._speech_ended_in_utterance = False
        self.early_decodes = 0  # counters for tests and logs
        self.adopted_partials = 0
        self.partial_decodes = 0
        self.pause_decodes = 0

    # -- input -------------------------------------------------------------------------------
    def push_audio(self, audio: Audio) -> None:
        """Append a validated frame at any rate (resampled to 16 kHz on the session clock)."""
        for samples, start_us in self.input.push(audio):
            self.push(samples, start_us)

    def push(self, samples: np.ndarray, start_us: int) -> None:
        """Append 16 kHz audio starting at session time ``start_us``."""
        self.buffer.append(samples, start_us)
        self._new_samples += len(samples)
        level = peak_dbfs(samples)
        self._level = max(self._level, level)
        if level >= self._pause_threshold():
            self._audible_end_us = self.buffer.end_us
        pending = self._early_pending_at
        if pending is not None and self.buffer.end_us >= pending + 1000 * self.settings.pad_ms:
            self._start_early(pending)
        self._maybe_start_decode()

    def speech_ended(self, at_us: int) -> None:
        """SPEECH_ENDED: decode the utterance up to ``at_us`` (+ pad) now, in the background."""
        self._speech_active = False
        self._speech_ended_in_utterance = True
        self._discard_early()
        at = at_us or self.buffer.end_us
        if self.buffer.end_us >= at + 1000 * self.settings.pad_ms:
            self._start_early(at)
            return
        # The audio up to `at` (+ pad) is not here yet: start when it arrives, or after the pad's worth
        # of wall time with whatever covers `at`.
        self._early_pending_at = at
        generation = self._generation
        self._early_timer = asyncio.get_running_loop().call_later(
            self.settings.pad_ms / 1000 + 0.05, self._early_timeout, at, generation
        )

    def speech_resumed(self, at_us: int) -> None:
        """SPEECH_RESUMED: the user goes on; drop the early decode. On the first speech of an
        utterance, audio older than ``at_us - preroll`` (silence before the user spoke) is dropped."""
        self._discard_early()
        first_speech = not self._speech_ended_in_utterance and self._speech_active is not True
        if first_speech and at_us > 0 and self.settings.preroll_ms > 0:
            cut = at_us - 1000 * self.settings.preroll_ms
            if cut > self.buffer.start_us and len(self.buffer):
                keep_from = min(cut, self.buffer.end_us)
                self.buffer.drop_before(keep_from)
                self._new_samples = min(self._new_samples, len(self.buffer))
        self._speech_active = True
        self._maybe_start_decode()

    async def finalize(self, at_us: int) -> TranscriptEvent:
        """FINALIZE: emit (and return) the final transcript of the audio up to ``at_us`` (0 = all
        buffered audio), reusing the early decode when it still covers it; the next utterance starts
        at ``at_us`` with any audio already buffered after it."""
        started = time.perf_counter()
        buf, pad_us = self.buffer, 1000 * self.settings.pad_ms
        cut_us = at_us if at_us > 0 else buf.end_us
        fin_at = min(max(cut_us, buf.start_us), buf.end_us)
        start_us = buf.start_us
        if self._early is None and self._adopt_background(fin_at):
            self._early_pending_at = None  # a background decode already holds everything up to `at`
        early = self._early
        reuse = (
            early is not None
            and early.generation == self._generation
            and early.speech_end_us - pad_us <= fin_at <= early.covered_end_us + 1000 * self.settings.early_tolerance_ms
        )
        if early is not None and reuse:
            self._early = None  # keep its task running: we are about to await it
            if early.adopted is not None and early.adopted is self._partial:
                self._partial = None  # now owned by the early decode: not cancelled with the utterance
            samples, start_us, end_us = early.samples, early.start_us, early.covered_end_us
        else:
            end_index = buf.index_at(min(fin_at + pad_us, buf.end_us))
            samples, end_us = buf.copy(end_index), buf.time_at(end_index)
        # The utterance ends here: later audio, partials and controls belong to the next one.
        self._end_utterance(keep_from_us=cut_us)
        index = self.utterance_index
        self.utterance_index += 1

        rec: Recognition | None = None
        if early is not None and reuse:
            await asyncio.wait({early.task})  # not cancelled if this call is
            if not early.task.cancelled():
                rec = early.task.result()
            if rec is None:
                reuse = False  # the early decode failed: decode its audio again now
        if rec is None:
            rec = await self._final_decode(samples, Priority.FINAL)
        event = self._event(True, rec, start_us, end_us, index, reused=reuse)
        self._emit(event)
        metrics.observe("finalize_to_final", time.perf_counter() - started)
        return event

    def reset(self) -> None:
        """RESET: drop the current utterance's audio without a transcript."""
        self.input.reset()
        self._end_utterance(keep_from_us=None)

    async def close(self) -> None:
        """Cancel background decodes (the stream is over)."""
        self._generation += 1
        tasks = [self._partial.task if self._partial else None, self._early.task if self._early else None]
        tasks = [t for t in tasks if t is not None]
        self._discard_early()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- internals ---------------------------------------------------------------------------
    def _end_utterance(self, keep_from_us: int | None) -> None:
        self._generation += 1
        self._discard_early()
        if self._partial is not None and self._partial.task is not None and not self._partial.task.done():
            self._partial.task.cancel()  # its result would be stale; the backend slot frees itself
        self._partial = None
        if keep_from_us is None:
            self.buffer.clear()
        else:
            self.buffer.drop_before(keep_from_us)
        self._new_samples = len(self.buffer)
        self._level = peak_dbfs(self.buffer.samples)
        self._speech_ended_in_utterance = False

    def _discard_early(self) -> None:
        if self._early_timer is not None:
            self._early_timer.cancel()
            self._early_timer = None
        self._early_pending_at = None
        if self._early is not None:
            if not self._early.task.done():
                self._early.task.cancel()
            self._early = None

    def _early_timeout(self, at_us: int, generation: int) -> None:
        self._early_timer = None
        if self._early_pending_at == at_us and generation == self._generation and self.buffer.end_us >= at_us:
            self._start_early(at_us)

    def _start_early(self, at_us: int) -> None:
        self._early_pending_at = None
        if self._early_timer is not None:
            self._early_timer.cancel()
            self._early_timer = None
        if self._adopt_background(at_us):
            return
        buf = self.buffer
        end_index = buf.index_at(min(at_us + 1000 * self.settings.pad_ms, buf.end_us))
        samples, covered = buf.copy(end_index), buf.time_at(end_index)
        generation = self._generation
        task = asyncio.create_task(self._early_job(samples, buf.start_us, covered, generation))
        self._early = _EarlyDecode(at_us, buf.start_us, covered, generation, samples, task)
        self.early_decodes += 1

    def _adopt_background(self, at_us: int) -> bool:
        """Make the latest partial/pause decode the early final if it is final-quality (word timings
        as finals have them), covers the audio up to ``at_us`` and holds nothing audible after
        ``at_us`` + pad (words that would belong to the next utterance). Running or done both do."""
        partial = self._partial
        if (
            partial is None
            or partial.task is None
            or partial.generation != self._generation
            or partial.word_timestamps != self.settings.word_timestamps
            or partial.end_us < at_us
        ):
            return False
        if partial.task.done() and (partial.task.cancelled() or partial.task.result() is None):
            return False  # it failed
        after = us_to_samples(at_us + 1000 * self.settings.pad_ms - partial.start_us)
        if 0 <= after < len(partial.samples) and peak_dbfs(partial.samples[after:]) >= self._pause_threshold():
            return False
        task = asyncio.create_task(self._adopt(partial.task))
        self._early = _EarlyDecode(
            at_us, partial.start_us, partial.end_us, self._generation, partial.samples, task, partial
        )
        self.adopted_partials += 1
        return True

    @staticmethod
    async def _adopt(partial_task: asyncio.Task[Recognition | None]) -> Recognition | None:
        return await asyncio.shield(partial_task)  # discarding the early final leaves the partial be

    async def _early_job(self, samples: np.ndarray, start_us: int, end_us: int, generation: int) -> Recognition | None:
        try:
            rec = await self._final_decode(samples, Priority.EARLY_FINAL)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # FINALIZE decodes again (and reports the error if it persists)
            log.warning("early final decode failed", extra={"error": f"{type(exc).__name__}: {exc}"})
            return None
        early = self._early
        current = early is not None and early.task is asyncio.current_task()
        if self.settings.partials and generation == self._generation and current and rec.text:
            # The freshest view of what the user said: share it as a partial right away.
            self._emit(self._event(False, rec, start_us, end_us, self.utterance_index, reused=False))
        return rec

    async def _final_decode(self, samples: np.ndarray, priority: Priority) -> Recognition:
        """Decode for a final (fresh or early); silent/empty audio gives empty text without decoding."""
        if not len(samples) or peak_dbfs(samples) < self.settings.silence_dbfs:
            return Recognition("", [], 0.0, self.settings.language)
        rec = await self._decode(samples, self.settings.word_timestamps, priority)
        metrics.observe("final_decode", rec.compute_s)
        return self._snap(rec, samples)

    def _snap(self, rec: Recognition, samples: np.ndarray) -> Recognition:
        if not rec.words:
            return rec
        return replace(rec, words=snap_words_to_speech(rec.words, samples, self.settings.silence_dbfs))

    def _pause_threshold(self) -> float:
        return max(self.settings.silence_dbfs, self._level - PAUSE_BELOW_PEAK_DB)

    def _maybe_start_decode(self) -> None:
        """Start a partial (every interval of new audio, not in pauses) or a pause decode (speech just
        paused and no decode has seen it yet), unless a decode of this stream is running."""
        s = self.settings
        if self._speech_active is False or self._early is not None or self._early_pending_at is not None:
            return
        latest = self._partial
        if latest is not None and latest.task is not None and not latest.task.done():
            return
        if self._level < s.silence_dbfs:
            return  # nothing audible in this utterance yet
        tail = self.buffer.samples[-s.pause_tail_ms * SAMPLE_RATE // 1000 :]
        if peak_dbfs(tail) < self._pause_threshold():
            # Unless the latest decode already is a final-quality one of all the speech so far:
            unseen = (
                latest is None or latest.end_us < self._audible_end_us or latest.word_timestamps != s.word_timestamps
            )
            if s.pause_decode and unseen and self.buffer.end_us - self._audible_end_us >= 1000 * s.pause_tail_ms:
                self._start_background(pause=True)
            return  # otherwise wait for speech: the next partial starts with the first audible frame
        if s.partials and self._new_samples >= s.partial_interval_ms * SAMPLE_RATE // 1000:
            self._start_background(pause=False)

    def _start_background(self, pause: bool) -> None:
        self._new_samples = 0
        words = self.settings.word_timestamps if pause else self.settings.partial_word_timestamps
        partial = _Partial(self.buffer.copy(), self.buffer.start_us, self.buffer.end_us, self._generation, words, pause)
        partial.task = asyncio.create_task(self._partial_job(partial))
        self._partial = partial

    async def _partial_job(self, partial: _Partial) -> Recognition | None:
        priority = Priority.EARLY_FINAL if partial.pause else Priority.PARTIAL
        try:
            rec = await self._decode(partial.samples, partial.word_timestamps, priority)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a failed partial is not worth ending the stream for
            log.warning("background decode failed", extra={"error": f"{type(exc).__name__}: {exc}"})
            return None
        if partial.pause:
            self.pause_decodes += 1
            metrics.observe("final_decode", rec.compute_s)
        else:
            self.partial_decodes += 1
            metrics.observe("partial_decode", rec.compute_s)
        rec = self._snap(rec, partial.samples)
        early = self._early
        current = partial.generation == self._generation and (early is None or early.adopted is partial)
        if self.settings.partials and current and rec.text:
            self._emit(self._event(False, rec, partial.start_us, partial.end_us, self.utterance_index, reused=False))
        return rec

    def _event(
        self, final: bool, rec: Recognition, start_us: int, end_us: int, index: int, reused: bool
    ) -> TranscriptEvent:
        words = [
            TimedWord(w.word, start_us + round(w.start_s * 1e6), start_us + round(w.end_s * 1e6), w.confidence)
            for w in rec.words
        ]
        return TranscriptEvent(
            final=final,
            text=rec.text,
            words=words,
            audio_start_us=start_us,
            audio_end_us=end_us,
            compute_ms=1000 * rec.compute_s,
            utterance_index=index,
            language=rec.language or self.settings.language,
            reused_early_decode=reused,
        )
