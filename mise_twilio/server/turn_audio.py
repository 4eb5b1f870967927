"""Turn audio (``MISE_TURN_AUDIO=wav``): each turn's audio as a 16 kHz 16-bit mono WAV file.

The session keeps a closed turn's 8 kHz PCM (``CallSession.take_turn_audio()``); this module
names its file and writes it. The path is a pure function of the turn record, so the server
sets ``TurnRecord.audio`` before the file exists and writes it off the event loop
(``asyncio.to_thread(write_turn_wav, ...)``). Files appear atomically (written to a temporary
name, then renamed), so a reader that sees the path never sees half a file, and are mode 0600
(``mkstemp``'s, kept by the rename): they are recordings of people's voices.

Layout: ``DATA_DIR/audio/<call_sid>/<stream_sid>/<turn index>-<speaker>.wav`` (a call can have
several streams: a fork and a ``<Connect>``; turn indexes are per stream).
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import wave
from pathlib import Path

from mise_twilio.core import audio
from mise_twilio.core.records import TurnRecord

WAV_RATE_HZ = 16_000
"""Sample rate of the written files (speech models' usual input rate)."""

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def _safe_component(value: str | None, fallback: str) -> str:
    # call_sid comes from the peer's ``start`` message: never let it name a path outside the
    # audio directory (``..``, ``/``) or an odd file name.
    cleaned = _UNSAFE.sub("_", value or "")[:64]
    return cleaned if cleaned.strip("_") else fallback


def turn_audio_path(data_dir: Path, record: TurnRecord) -> Path:
    """``data_dir/audio/<call_sid>/<stream_sid>/<index>-<speaker>.wav`` for ``record`` (nothing
    is created). The sids are reduced to ``[A-Za-z0-9_-]`` (``unknown`` when missing): they come
    from the peer's ``start`` message."""
    call = _safe_component(record.call_sid, "unknown")
    stream = _safe_component(record.stream_sid, "unknown")
    return data_dir / "audio" / call / stream / f"{record.index}-{record.speaker}.wav"


def wav_bytes_16k(pcm_8k: bytes) -> bytes:
    """16-bit 8 kHz mono PCM → the 16 kHz 16-bit little-endian mono samples (soxr, HQ)."""
    samples = audio.pcm16_array(pcm_8k[: len(pcm_8k) // 2 * 2])
    if samples.size == 0:
        return b""
    resampled = audio.resample(samples, audio.SAMPLE_RATE_HZ, WAV_RATE_HZ)
    return resampled.astype("<i2", copy=False).tobytes()


def write_turn_wav(path: Path, pcm_8k: bytes) -> Path:
    """Resample ``pcm_8k`` to 16 kHz and write it as a 16-bit mono WAV at ``path``.

    Blocking (CPU and disk): call it in a thread. Creates the parent directories; replaces an
    existing file atomically. Raises ``OSError``."""
    frames = wav_bytes_16k(pcm_8k)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".tmp-", suffix=".wav", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            with wave.open(handle, "wb") as wav:
                wav.setnchannels(1)
                wav.setsampwidth(2)
                wav.setframerate(WAV_RATE_HZ)
                wav.writeframes(frames)
            handle.flush()
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    return path
