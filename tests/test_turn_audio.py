"""Turn audio: the file name, the WAV header, the length and the content of each turn's file."""

from __future__ import annotations

import math
import os
import stat
import wave
from pathlib import Path

import numpy as np
import pytest
from support import fixture_lines

from mise_twilio.core import audio
from mise_twilio.core.call import CallSession, SessionParams
from mise_twilio.core.records import TurnRecord
from mise_twilio.server.turn_audio import WAV_RATE_HZ, turn_audio_path, write_turn_wav

FRAME_16K = WAV_RATE_HZ * audio.FRAME_MS // 1000


def read_wav(path: Path) -> tuple[wave._wave_params, np.ndarray]:
    with wave.open(str(path), "rb") as wav:
        params = wav.getparams()
        samples = np.frombuffer(wav.readframes(params.nframes), dtype="<i2")
    return params, samples


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(samples.astype(np.float64) ** 2)))


def session_turns(name: str) -> list[tuple[TurnRecord, bytes]]:
    """Every turn of fixture ``name`` replayed offline, with its 8 kHz PCM."""
    session = CallSession(SessionParams(keep_turn_audio=True))
    records: list[TurnRecord] = []
    pcm: dict[str, bytes] = {}
    for line in [*fixture_lines(name), None]:
        if line is None:
            session.receive_eof()
        else:
            session.receive_text(line)
        records += [r for r in session.take_events() if isinstance(r, TurnRecord)]
        pcm.update(session.take_turn_audio())
    assert records and set(pcm) == {r.id for r in records}
    return [(r, pcm[r.id]) for r in records]


def tone_8k(seconds: float, hz: float = 440.0, amplitude: float = 8000.0) -> bytes:
    t = np.arange(int(seconds * audio.SAMPLE_RATE_HZ)) / audio.SAMPLE_RATE_HZ
    return (amplitude * np.sin(2 * math.pi * hz * t)).astype("<i2").tobytes()


def test_wav_header_length_and_content(tmp_path: Path) -> None:
    pcm = tone_8k(1.5)
    path = write_turn_wav(tmp_path / "a" / "b" / "0-caller.wav", pcm)
    params, samples = read_wav(path)
    assert (params.nchannels, params.sampwidth, params.framerate) == (1, 2, 16_000)
    assert params.comptype == "NONE"
    assert params.nframes == 2 * (len(pcm) // 2)  # twice the 8 kHz sample count
    src = audio.pcm16_array(pcm)
    assert rms(samples) == pytest.approx(rms(src), rel=0.02)
    # Every other 16 kHz sample is (nearly) the 8 kHz input: soxr compensates its delay.
    core = slice(200, -200)
    corr = np.corrcoef(samples[::2][core].astype(float), src[core].astype(float))[0, 1]
    assert corr > 0.99
    assert not list(path.parent.glob(".tmp-*"))  # written under a temporary name, renamed


def test_empty_turn_gives_a_valid_empty_wav(tmp_path: Path) -> None:
    params, samples = read_wav(write_turn_wav(tmp_path / "0-agent.wav", b""))
    assert params.framerate == 16_000 and params.nframes == 0 and samples.size == 0


def test_fixture_turns_duration_and_rms(tmp_path: Path) -> None:
    turns = session_turns("fork_two_track")
    assert len(turns) >= 4
    for record, pcm in turns:
        path = write_turn_wav(turn_audio_path(tmp_path, record), pcm)
        params, samples = read_wav(path)
        assert params.framerate == 16_000 and params.nchannels == 1 and params.sampwidth == 2
        wav_ms = params.nframes * 1000 / params.framerate
        assert abs(wav_ms - record.duration_ms) <= audio.FRAME_MS, (record.id, wav_ms)
        assert abs(params.nframes - record.duration_ms * 16) <= FRAME_16K
        src = audio.pcm16_array(pcm)
        assert rms(samples) == pytest.approx(rms(src), rel=0.05), record.id


def test_path_layout_and_unsafe_call_sid(tmp_path: Path) -> None:
    record, _ = session_turns("fork_two_track")[0]
    path = turn_audio_path(tmp_path, record)
    assert path == (
        tmp_path
        / "audio"
        / str(record.call_sid)
        / str(record.stream_sid)
        / f"0-{record.speaker}.wav"
    )
    evil = record.model_copy(
        update={"call_sid": "../../etc/x", "stream_sid": "../..", "index": 7, "speaker": "agent"}
    )
    path = turn_audio_path(tmp_path, evil)
    assert path.parent.parent.parent == tmp_path / "audio"
    assert path.name == "7-agent.wav" and ".." not in path.parts
    anonymous = record.model_copy(update={"call_sid": None, "stream_sid": None})
    assert turn_audio_path(tmp_path, anonymous).parent.parts[-2:] == ("unknown", "unknown")


def test_wav_files_are_owner_only(tmp_path: Path) -> None:
    # Recordings of voices: mode 0600 whatever the umask (mkstemp's mode, kept by the rename),
    # as docs/operations.md §7 says.
    old = os.umask(0o022)
    try:
        path = write_turn_wav(tmp_path / "a" / "1-caller.wav", b"\x00\x01" * 800)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not list(path.parent.glob(".tmp-*"))
