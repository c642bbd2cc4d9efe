import math

import numpy as np
import pytest

from parley.audio import (
    Audio,
    Framer,
    decode_frame,
    encode_frame,
    float_to_pcm16,
    pcm16_to_float,
    read_wav,
    resample,
    rms_dbfs,
    write_wav,
)
from parley.errors import InvalidInput
from parley.v1 import common_pb2


def tone(freq=440.0, rate=16_000, seconds=0.5, amp=0.5):
    t = np.arange(round(rate * seconds)) / rate
    return (amp * np.sin(2 * math.pi * freq * t)).astype(np.float32)


def test_pcm16_round_trip_is_within_one_step():
    x = tone()
    y = pcm16_to_float(float_to_pcm16(x))
    assert np.max(np.abs(x - y)) < 2 / 32768


def test_resample_keeps_pitch_and_length():
    x = tone(1000, 48_000, 1.0)
    y = resample(x, 48_000, 16_000)
    assert abs(len(y) - 16_000) <= 2
    spectrum = np.abs(np.fft.rfft(y))
    assert abs(np.argmax(spectrum) * 16_000 / len(y) - 1000) < 5


def test_decode_frame_resamples_and_downmixes():
    stereo = np.stack([tone(rate=48_000), tone(rate=48_000)], axis=1).reshape(-1)
    frame = common_pb2.AudioFrame(data=float_to_pcm16(stereo), sample_rate=48_000, channels=2, timestamp_us=123)
    audio = decode_frame(frame, target_rate=16_000)
    assert audio.sample_rate == 16_000 and audio.timestamp_us == 123
    assert abs(len(audio.samples) - 8000) <= 2


@pytest.mark.parametrize(
    "frame, message",
    [
        (common_pb2.AudioFrame(data=b"\0\0", sample_rate=1000), "sample_rate"),
        (common_pb2.AudioFrame(data=b"\0\0\0", sample_rate=16000), "whole number"),
        (common_pb2.AudioFrame(data=b"\0\0", sample_rate=16000, channels=6), "channels"),
        (common_pb2.AudioFrame(data=b"\0\0", sample_rate=16000, encoding=9), "encoding"),
        (
            common_pb2.AudioFrame(
                data=np.array([0.1, np.nan], "<f4").tobytes(), sample_rate=16000,
                encoding=common_pb2.AUDIO_ENCODING_PCM_F32LE,
            ),
            "NaN",
        ),
        (
            common_pb2.AudioFrame(
                data=np.array([3.0], "<f4").tobytes(), sample_rate=16000, encoding=common_pb2.AUDIO_ENCODING_PCM_F32LE
            ),
            "\\[-1, 1\\]",
        ),
        (common_pb2.AudioFrame(data=bytes(2 * 16000 * 6), sample_rate=16000), "exceeds"),
    ],
)
def test_decode_frame_rejects_bad_input(frame, message):
    with pytest.raises(InvalidInput, match=message):
        decode_frame(frame)


def test_encode_then_decode():
    frame = encode_frame(tone(), 16_000, timestamp_us=5)
    audio = decode_frame(frame)
    assert audio.timestamp_us == 5 and len(audio.samples) == 8000


def test_framer_cuts_fixed_frames_with_timestamps():
    framer = Framer(160, 16_000)
    frames = list(framer.push(Audio(np.zeros(250, np.float32), 16_000, 1_000)))
    frames += list(framer.push(Audio(np.zeros(250, np.float32), 16_000, 1_000 + 250 * 1_000_000 // 16_000)))
    assert [len(f.samples) for f in frames] == [160, 160, 160]
    assert [f.timestamp_us for f in frames] == [1_000, 11_000, 21_000]


def test_wav_round_trip_and_level(tmp_path):
    path = write_wav(tmp_path / "t.wav", tone(amp=0.5), 16_000)
    audio = read_wav(path)
    assert audio.sample_rate == 16_000 and len(audio.samples) == 8000
    assert -10 < rms_dbfs(audio.samples) < -8  # a 0.5 sine is -9 dBFS
    assert rms_dbfs(np.zeros(10, np.float32)) <= -119


def test_read_wav_rejects_garbage(tmp_path):
    path = tmp_path / "bad.wav"
    path.write_bytes(b"RIFF not really a wav")
    with pytest.raises(InvalidInput, match="not a readable"):
        read_wav(path)


def test_stream_resampler_is_seamless_across_chunks():
    from parley.audio import StreamResampler

    x = tone(440, 48_000, 1.0)
    whole = resample(x, 48_000, 16_000)
    stream = StreamResampler(16_000)
    pieces = [stream.push(x[i:i + 960], 48_000) for i in range(0, len(x), 960)] + [stream.flush()]
    joined = np.concatenate(pieces)
    assert abs(len(joined) - len(whole)) <= 2
    # chunk-by-chunk one-shot resampling leaves edge errors; the stream matches the one-shot whole signal
    n = min(len(joined), len(whole)) - 200
    assert np.max(np.abs(joined[100:n] - whole[100:n])) < 1e-3
    naive = np.concatenate([resample(x[i:i + 960], 48_000, 16_000) for i in range(0, len(x), 960)])
    assert np.max(np.abs(naive[100:n] - whole[100:n])) > 10 * np.max(np.abs(joined[100:n] - whole[100:n]))
    # a new input rate starts a new run; equal rates pass through untouched
    assert len(stream.push(x[:480], 16_000)) == 480
