"""Helpers for benches that need the committed fixtures' audio, modified and re-sent.

- ``load_generator()``: the fixture generator module (``fixtures/make_fixtures.py``).
- ``load_fixture(name)``: a fixture's audio per track on the stream clock (int16, lost frames
  as 0), which frames were sent, the arrival order, SIDs, dtmf/mark events and the ground truth.
- ``FixtureAudio.encode(tracks, dropped)``: back to a Twilio-wire line list with the same SIDs,
  timestamps, arrival order and events (the committed file is reproduced byte for byte when
  nothing changed; ``roundtrip_ok`` checks that).
- Noise: ``white_noise``, ``babble_noise`` (several time-shifted, level-varied copies of other
  fixtures' speech), ``add_at_snr``; ``choose_drops`` for extra frame loss.

Nothing here touches ``mise_twilio`` beyond the audio constants: benches measure the package.
"""

from __future__ import annotations

import base64
import json
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from numpy.typing import NDArray

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures"
sys.path.insert(0, str(ROOT))

from fixtures import make_fixtures  # noqa: E402  (needs the root on the path)
from fixtures.real_calls import choose_drops as choose_drops  # noqa: E402  (re-exported)


def load_generator() -> ModuleType:
    """``fixtures/make_fixtures.py`` (shared with the tests)."""
    return make_fixtures


FRAME_MS = 20
FRAME = 160  # μ-law bytes (= samples) per 20 ms frame at 8 kHz
SPM = 8  # samples per ms

Span = tuple[int, int]


def seed_of(*parts: object) -> int:
    """A stable seed from strings/ints (``hash()`` is salted per process)."""
    return zlib.crc32("|".join(map(str, parts)).encode())


@dataclass
class FixtureAudio:
    name: str
    expected: dict[str, Any]
    lines: list[str]
    tracks: list[str]
    first_ts: int
    n_frames: int
    audio: dict[str, NDArray[np.int16]]  # per track, n_frames * 160 samples, lost frames = 0
    order: list[tuple[str, int]]  # arrival order of the sent media frames
    lost: dict[str, set[int]]  # frame indices never sent, per track
    sids: dict[str, str]
    custom_parameters: dict[str, str] | None
    events: list[Any] = field(default_factory=list)  # make_fixtures.Event

    # -- ground truth helpers (stream-clock ms) ----------------------------------------------

    def truth_turns(self, track: str) -> list[dict[str, Any]]:
        return [t for t in self.expected["turns"] if t["track"] == track]

    def truth_segments(self, track: str) -> list[Span]:
        return [(s, e) for t in self.truth_turns(track) for s, e in t["segments"]]

    def digital_silence(self, track: str) -> list[Span]:
        return [tuple(s) for s in (self.expected.get("digital_silence") or {}).get(track, [])]

    def span_mask(self, track: str, spans: list[Span]) -> NDArray[np.bool_]:
        """Sample mask of stream-ms spans on this fixture's track timeline."""
        mask = np.zeros(self.n_frames * FRAME, dtype=bool)
        for s, e in spans:
            a = max(0, (s - self.first_ts) * SPM)
            b = min(mask.size, (e - self.first_ts) * SPM)
            if b > a:
                mask[a:b] = True
        return mask

    def speech_rms(self, track: str) -> float:
        """Active speech RMS (linear, int16 units) over the track's ground-truth segments."""
        x = self.audio[track].astype(np.float64)
        mask = self.span_mask(track, self.truth_segments(track))
        mask &= self.sent_sample_mask(track)
        return float(np.sqrt(np.mean(x[mask] ** 2))) if mask.any() else 0.0

    def sent_sample_mask(self, track: str) -> NDArray[np.bool_]:
        sent = np.ones(self.n_frames, dtype=bool)
        for i in self.lost[track]:
            if 0 <= i < self.n_frames:
                sent[i] = False
        return np.repeat(sent, FRAME)

    # -- back to the wire --------------------------------------------------------------------

    def encode(
        self,
        audio: dict[str, NDArray[Any]] | None = None,
        dropped: dict[str, set[int]] | None = None,
    ) -> list[str]:
        """Twilio-wire lines for ``audio`` (default: the fixture's own), with the fixture's
        SIDs, timestamps, arrival order and events; ``dropped`` frames (plus the fixture's own
        lost ones) are not sent and sequenceNumber/chunk stay contiguous, as Twilio does."""
        gen = load_generator()
        audio = self.audio if audio is None else audio
        ulaw = {t: gen.to_ulaw(audio[t]) for t in self.tracks}
        drops = {t: set(self.lost[t]) | set((dropped or {}).get(t, ())) for t in self.tracks}
        lines, _ = gen.encode_messages(
            ulaw,
            stream_sid=self.sids["stream_sid"],
            call_sid=self.sids["call_sid"],
            account_sid=self.sids["account_sid"],
            first_timestamp_ms=self.first_ts,
            custom_parameters=self.custom_parameters,
            dropped=drops,
            events=self.events,
            order=self.order,
        )
        return list(lines)

    def roundtrip_ok(self) -> bool:
        """Whether ``encode()`` of the decoded audio reproduces the committed lines exactly."""
        return self.encode() == self.lines


def load_fixture(name: str) -> FixtureAudio:
    """Read ``fixtures/NAME.jsonl`` + ``.expected.json`` (valid media of the stream only)."""
    gen = load_generator()
    expected = json.loads((FIXTURES / f"{name}.expected.json").read_text())
    lines = [ln for ln in (FIXTURES / f"{name}.jsonl").read_text().splitlines() if ln.strip()]
    first_ts = int(expected["first_timestamp_ms"])
    n_frames = int(expected["frames_per_track"])
    tracks = list(expected["tracks"])
    frames: dict[str, dict[int, bytes]] = {t: {} for t in tracks}
    order: list[tuple[str, int]] = []
    custom: dict[str, str] | None = None
    stream_sid = None
    for ln in lines:
        try:
            m = json.loads(ln)
        except json.JSONDecodeError:
            continue
        if not isinstance(m, dict):
            continue
        if m.get("event") == "start" and stream_sid is None:
            stream_sid = m["streamSid"]
            custom = m["start"].get("customParameters")
        if m.get("event") != "media" or m.get("streamSid") != stream_sid:
            continue
        med = m["media"]
        payload = base64.b64decode(med["payload"])
        i = (int(med["timestamp"]) - first_ts) // FRAME_MS
        frames[med["track"]][i] = payload
        order.append((med["track"], i))
    audio: dict[str, NDArray[np.int16]] = {}
    lost: dict[str, set[int]] = {}
    for t in tracks:
        buf = bytearray(b"\xff" * (n_frames * FRAME))
        for i, p in frames[t].items():
            buf[i * FRAME : (i + 1) * FRAME] = p
        audio[t] = gen.from_ulaw(bytes(buf)).copy()
        lost[t] = set(range(n_frames)) - set(frames[t])
    events = [gen.Event("dtmf", d["at_ms"], d["digit"]) for d in expected.get("dtmf") or []]
    events += [gen.Event("mark", d["at_ms"], d["name"]) for d in expected.get("marks") or []]
    sids = {k: expected[k] for k in ("stream_sid", "call_sid", "account_sid")}
    return FixtureAudio(
        name,
        expected,
        lines,
        tracks,
        first_ts,
        n_frames,
        audio,
        order,
        lost,
        sids,
        custom,
        events,
    )


# -- noise and loss ---------------------------------------------------------------------------


def white_noise(n: int, rng: np.random.Generator) -> NDArray[np.float64]:
    """Unit-RMS Gaussian white noise (flat 0-4 kHz at 8 kHz)."""
    return rng.standard_normal(n)


def speech_pool(fixtures: list[FixtureAudio]) -> NDArray[np.float64]:
    """Concatenated ground-truth speech of ``fixtures`` (all tracks), each track's speech
    normalised to unit RMS so that no one fixture dominates the babble."""
    parts = []
    for fx in fixtures:
        for t in fx.tracks:
            mask = fx.span_mask(t, fx.truth_segments(t)) & fx.sent_sample_mask(t)
            x = fx.audio[t].astype(np.float64)[mask]
            if x.size:
                parts.append(x / max(1e-9, float(np.sqrt(np.mean(x**2)))))
    return np.concatenate(parts)


def babble_noise(
    n: int, pool: NDArray[np.float64], rng: np.random.Generator, talkers: int = 6
) -> NDArray[np.float64]:
    """Unit-RMS babble: ``talkers`` copies of ``pool`` from random offsets (wrapping), each with
    its own slowly varying gain (±4 dB, ~1 s correlation), summed."""
    out = np.zeros(n)
    t_ms = n // SPM
    for _ in range(talkers):
        off = int(rng.integers(0, pool.size))
        idx = (off + np.arange(n)) % pool.size
        # gain in dB: smoothed random walk sampled every 250 ms, interpolated per sample
        knots = max(2, t_ms // 250 + 2)
        db = np.convolve(rng.uniform(-4.0, 4.0, knots), np.ones(4) / 4.0, mode="same")
        db += rng.uniform(-3.0, 3.0)  # per-talker level
        gain = 10.0 ** (np.interp(np.arange(n), np.linspace(0, n, knots), db) / 20.0)
        out += pool[idx] * gain
    return out / max(1e-9, float(np.sqrt(np.mean(out**2))))


def add_at_snr(
    fx: FixtureAudio, track: str, noise_unit: NDArray[np.float64], snr_db: float
) -> NDArray[np.int16]:
    """The track plus ``noise_unit`` scaled to ``snr_db`` below its active speech level. Digital
    silence spans (μ-law zero: the far end sent nothing) and lost frames stay as they are."""
    x = fx.audio[track].astype(np.float64)
    level = fx.speech_rms(track)
    noise = noise_unit * (level / 10.0 ** (snr_db / 20.0))
    keep = fx.span_mask(track, fx.digital_silence(track)) | ~fx.sent_sample_mask(track)
    noise[keep] = 0.0
    y: NDArray[np.int16] = np.clip(np.round(x + noise), -32768, 32767).astype(np.int16)
    return y
