"""Detectors run on a ``fixtures.real_calls.TwoTrackCall``: the mise VAD alone (``run_bandvad``,
for fitting), the anchors webrtcvad, Silero (ONNX) and fast-vad, and the label oracle.

Every runner returns a :class:`Result`: per-track detected frame spans, per-track raw frame
decisions (None where the detector has its own segmenter) and CPU seconds (``process_time``,
best of ``reps``) spent on the whole call, both tracks.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from _vad_scoring import smooth
from numpy.typing import NDArray

from fixtures.real_calls import FRAME, TRACKS, TwoTrackCall, span_mask

Span = tuple[int, int]


@dataclass
class Result:
    spans: dict[str, list[Span]]
    raw: dict[str, NDArray[np.bool_]] | None
    cpu_s: float


def best_time(fn: Callable[[], object], reps: int) -> tuple[float, object]:
    best = math.inf
    out: object = None
    for _ in range(max(1, reps)):
        t0 = time.process_time()
        out = fn()
        best = min(best, time.process_time() - t0)
    return best, out


# -- webrtcvad ------------------------------------------------------------------------------


def run_webrtc(call: TwoTrackCall, mode: int, reps: int = 1) -> Result:
    import webrtcvad

    raws: dict[str, NDArray[np.bool_]] = {}
    total = 0.0
    for t in TRACKS:
        b = call.pcm[t].tobytes()
        frames = [b[i * 320 : (i + 1) * 320] for i in range(call.n_frames)]

        def go(frames: list[bytes] = frames) -> list[bool]:
            v = webrtcvad.Vad(mode)
            return [v.is_speech(f, 8000) for f in frames]

        dt, dec = best_time(go, reps)
        total += dt
        raws[t] = np.asarray(dec, dtype=bool)
    return Result({t: smooth(r) for t, r in raws.items()}, raws, total)


# -- Silero VAD (v5/v6 ONNX, 8 kHz, 256-sample windows + 32-sample context) -----------------


def _silero_onnx() -> Path:
    """``silero_vad.onnx`` from the installed silero-vad wheel (``pip install --no-deps
    silero-vad``: only its model file is used, run by onnxruntime; importing the package would
    need torch)."""
    import importlib.util

    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("silero_vad")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "silero_vad.onnx"


SILERO_WIN = 256
SILERO_CTX = 32
SILERO_THRESHOLD = 0.5

_silero_session: object | None = None


def _silero() -> object:
    global _silero_session
    if _silero_session is None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        _silero_session = ort.InferenceSession(
            str(_silero_onnx()), sess_options=so, providers=["CPUExecutionProvider"]
        )
    return _silero_session


def silero_probs(x: NDArray[np.int16]) -> NDArray[np.float32]:
    """Speech probability per 256-sample (32 ms) window, streaming state and context."""
    sess = _silero()
    sig = x.astype(np.float32) / 32768.0
    n_win = sig.size // SILERO_WIN
    state = np.zeros((2, 1, 128), dtype=np.float32)
    ctx = np.zeros(SILERO_CTX, dtype=np.float32)
    sr = np.array(8000, dtype=np.int64)
    out = np.zeros(n_win, dtype=np.float32)
    for i in range(n_win):
        w = sig[i * SILERO_WIN : (i + 1) * SILERO_WIN]
        inp = np.concatenate([ctx, w])[None, :]
        p, state = sess.run(None, {"input": inp, "state": state, "sr": sr})  # type: ignore[attr-defined]
        out[i] = float(p[0, 0])
        ctx = w[-SILERO_CTX:]
    return out


def windows_to_frames(dec: NDArray[np.bool_], win: int, n_frames: int) -> NDArray[np.bool_]:
    """Per 20 ms frame: the decision of the latest window that ended by the frame's end
    (causal), or False before the first window."""
    ends = (np.arange(n_frames) + 1) * FRAME
    idx = ends // win - 1
    out = np.zeros(n_frames, dtype=bool)
    ok = (idx >= 0) & (idx < dec.size)
    out[ok] = dec[idx[ok]]
    return out


def run_silero(call: TwoTrackCall, reps: int = 1) -> Result:
    raws: dict[str, NDArray[np.bool_]] = {}
    total = 0.0
    for t in TRACKS:
        x = call.pcm[t]
        dt, probs = best_time(partial(silero_probs, x), reps)
        total += dt
        assert isinstance(probs, np.ndarray)
        raws[t] = windows_to_frames(probs >= SILERO_THRESHOLD, SILERO_WIN, call.n_frames)
    return Result({t: smooth(r) for t, r in raws.items()}, raws, total)


# -- fast-vad -------------------------------------------------------------------------------


def run_fastvad(call: TwoTrackCall, reps: int = 1, *, own_smoothing: bool = False) -> Result:
    """fast-vad 0.2.x: 256-sample frames at 8 kHz. Raw decisions come from a VAD configured with
    no smoothing of its own (threshold 0.5, 0 ms min speech/silence/hangover), then our common
    segmenter; ``own_smoothing`` uses its default Normal mode per-sample output instead."""
    import fast_vad

    raws: dict[str, NDArray[np.bool_]] = {}
    spans: dict[str, list[Span]] = {}
    total = 0.0
    for t in TRACKS:
        x = call.pcm[t].astype(np.float32) / 32768.0
        if own_smoothing:
            v = fast_vad.VAD(8000)
            dt, per_sample = best_time(partial(v.detect, x), reps)
            assert isinstance(per_sample, np.ndarray)
            fr = per_sample[: call.n_frames * FRAME].reshape(-1, FRAME)[:, FRAME // 2]
            raws[t] = fr.astype(bool)
            m = np.concatenate([[False], raws[t], [False]])
            d = np.flatnonzero(np.diff(m.astype(np.int8)))
            spans[t] = [(int(a), int(b)) for a, b in zip(d[::2], d[1::2], strict=True)]
        else:
            v = fast_vad.VAD.with_config(8000, 0.5, 0, 0, 0)
            dt, per_window = best_time(partial(v.detect_frames, x), reps)
            assert isinstance(per_window, np.ndarray)
            raws[t] = windows_to_frames(per_window.astype(bool), 256, call.n_frames)
            spans[t] = smooth(raws[t])
        total += dt
    return Result(spans, raws, total)


# -- oracle ---------------------------------------------------------------------------------

ORACLE_GATE_DB = -35.0  # frames within this of the track's active level, inside its regions


def oracle_raw(
    call: TwoTrackCall, track: str, gate_db: float = ORACLE_GATE_DB
) -> NDArray[np.bool_]:
    """Ideal level gate from the labels: inside the track's truth regions and the *clean* own
    speech (before line noise and conditions) within ``gate_db`` of its active level."""
    x = call.clean[track]
    truth = call.truth_ms[track]
    m = span_mask(x.size, truth)
    act = float(np.mean(x[m] ** 2)) if m.any() else 1.0
    fr = x[: call.n_frames * FRAME].reshape(-1, FRAME)
    lv = 10 * np.log10(np.mean(fr**2, axis=1) / act + 1e-20)
    inside = m[FRAME // 2 :: FRAME][: call.n_frames]
    return np.asarray(inside & (lv > gate_db))


def run_oracle(call: TwoTrackCall, gate_db: float = ORACLE_GATE_DB) -> Result:
    raws = {t: oracle_raw(call, t, gate_db) for t in TRACKS}
    return Result({t: smooth(r) for t, r in raws.items()}, raws, 0.0)


# -- the new band VAD -----------------------------------------------------------------------


def run_bandvad(
    call: TwoTrackCall,
    reps: int = 1,
    *,
    params: object | None = None,
    model: object | None = None,
    block: int = 5,
    trace: bool = False,
) -> Result:
    """The mise VAD alone (``core.vad.BandVad`` on both tracks, features included, timed end
    to end): per-track segments. ``trace``: also the model inputs per frame (``.traces``)."""
    from mise_twilio.core.vad import BandVad, frame_features

    n = call.n_frames
    both = np.stack([call.pcm[t][: n * FRAME].reshape(n, FRAME) for t in TRACKS])
    traces: dict[str, NDArray[np.float64]] = {}

    def go() -> dict[str, list[Span]]:
        open_at: list[int | None] = [None, None]
        spans: list[list[Span]] = [[], []]

        def on(ti: int, kind: str, fr: int) -> None:
            if kind == "start":
                open_at[ti] = fr
            else:
                s = open_at[ti]
                assert s is not None
                spans[ti].append((s, max(s + 1, fr)))
                open_at[ti] = None

        vad = BandVad(2, params, model)  # type: ignore[arg-type]
        if trace:
            vad.start_trace()
        for k in range(0, n, block):
            m = min(block, n - k)
            f = frame_features(both[:, k : k + m].reshape(2 * m, FRAME)).reshape(2, m, -1)
            for ti, (kind, fr), _ in vad.step_block(k, f):
                on(ti, kind, fr)
        for ti, (_, fr) in vad.flush():
            on(ti, "end", fr)
        if trace:
            tl = vad.trace
            assert tl is not None
            for ti, t in enumerate(TRACKS):
                traces[t] = np.concatenate([rows[ti] for rows in tl])
        return {TRACKS[0]: spans[0], TRACKS[1]: spans[1]}

    dt, spans = best_time(go, reps)
    assert isinstance(spans, dict)
    r = Result(spans, None, dt)
    r.traces = traces if trace else None  # type: ignore[attr-defined]
    return r
