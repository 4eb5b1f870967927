"""Audio constants and per-frame μ-law helpers for Twilio Media Streams.

Twilio always sends and accepts ``audio/x-mulaw``, 8000 Hz, mono, in 20 ms frames of 160 bytes
in practice (https://www.twilio.com/docs/voice/media-streams/websocket-messages). Per-message work
here uses C-backed ``audioop`` calls (stdlib on 3.11/3.12, ``audioop-lts`` on 3.13+); numpy is for
per-turn work only.
"""

from __future__ import annotations

import math
import warnings

with warnings.catch_warnings():
    # Python 3.11/3.12 ship audioop (deprecated, removed in 3.13); 3.13+ gets the same module
    # from the audioop-lts package. Either way it is C and fast, which is why we use it.
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

import numpy as np
from numpy.typing import NDArray

SAMPLE_RATE_HZ = 8000
"""Twilio Media Streams sample rate, both directions."""
FRAME_MS = 20
"""Twilio's media chunk duration in practice, and our VAD frame length."""
SAMPLES_PER_MS = SAMPLE_RATE_HZ // 1000
FRAME_SAMPLES = SAMPLE_RATE_HZ * FRAME_MS // 1000
"""160 samples (= 160 μ-law bytes, 320 bytes of 16-bit PCM) per 20 ms frame."""
SAMPLE_WIDTH_BYTES = 2
"""Decoded PCM is signed 16-bit little-endian (native) linear."""
MULAW_SILENCE_BYTE = 0xFF
"""μ-law code for 0 (0x7F is the negative zero). Used to fill timeline gaps."""
FULL_SCALE_RMS = 32768.0
"""dBFS reference: a full-scale square wave has RMS 32768 and reads 0 dBFS."""
SILENCE_DBFS = -100.0
"""Level reported for digital silence (RMS 0) instead of -inf."""


def ulaw_to_pcm16(payload: bytes) -> bytes:
    """Decode μ-law bytes to 16-bit linear PCM (2 bytes per byte) with ``audioop.ulaw2lin``."""
    return audioop.ulaw2lin(payload, SAMPLE_WIDTH_BYTES)


def pcm16_to_ulaw(pcm: bytes) -> bytes:
    """Encode 16-bit linear PCM bytes to μ-law (1 byte per sample) with ``audioop.lin2ulaw``."""
    return audioop.lin2ulaw(pcm, SAMPLE_WIDTH_BYTES)


def rms_dbfs(pcm: bytes) -> float:
    """RMS level of 16-bit PCM bytes in dBFS (0 dBFS = RMS 32768); ``SILENCE_DBFS`` for silence."""
    rms = audioop.rms(pcm, SAMPLE_WIDTH_BYTES)
    if rms <= 0:
        return SILENCE_DBFS
    return max(SILENCE_DBFS, 20.0 * math.log10(rms / FULL_SCALE_RMS))


def pcm16_array(pcm: bytes) -> NDArray[np.int16]:
    """View 16-bit PCM bytes as a 1-D ``int16`` array (no copy)."""
    return np.frombuffer(pcm, dtype=np.int16)


def resample(pcm: NDArray[np.int16], in_rate_hz: int, out_rate_hz: int) -> NDArray[np.int16]:
    """Resample a whole int16 signal with soxr (HQ, one shot; not for the per-message path).

    Shape ``(n,)`` in, ``(round(n * out/in),)`` out, dtype int16.
    """
    import soxr

    if in_rate_hz == out_rate_hz:
        return pcm.copy()
    out = soxr.resample(pcm, in_rate_hz, out_rate_hz, quality="HQ")
    return np.asarray(out, dtype=np.int16)
