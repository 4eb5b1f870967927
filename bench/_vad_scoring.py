"""Scoring of VAD segments against real-speech labels (``vad_accuracy.py``, ``fit_vad.py``).

- **Frames**: 20 ms on the call clock. A frame is truly speech when its midpoint lies in a truth
  region of that track, detected when its midpoint lies in a detected segment. Frames whose
  midpoint is within ``COLLAR_MS`` of a truth boundary (a region start or end) are not scored.
  Lost frames are scored (a detector should bridge them).
- **Turns**: segments (truth regions or detected segments) closer than ``TURN_PAUSE_MS`` are
  merged into turns, the same simple rule for every detector. Turn onsets are matched
  one-to-one within ``ONSET_TOL_MS``, closest pairs first.
- Counts are pooled over tracks and files (micro-average).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from fixtures.real_calls import FRAME_MS, TwoTrackCall

COLLAR_MS = 100
TURN_PAUSE_MS = 700
ONSET_TOL_MS = 300
SMOOTH_MIN_FRAMES = 3  # 60 ms of speech frames start a segment (at the first of them)
SMOOTH_HANG_FRAMES = 12  # 240 ms without one end it
SMOOTH_POST_FRAMES = 2  # the segment ends 40 ms after its last speech frame

Span = tuple[int, int]


def smooth(
    raw: NDArray[np.bool_],
    min_frames: int = SMOOTH_MIN_FRAMES,
    hang: int = SMOOTH_HANG_FRAMES,
    post: int = SMOOTH_POST_FRAMES,
) -> list[Span]:
    """Frame spans from raw per-frame decisions (the anchors' common segmenter)."""
    segs: list[Span] = []
    run = 0
    start = last = -1
    on = False
    n = len(raw)
    for i, d in enumerate(raw.tolist()):
        if on:
            if d:
                last = i
            elif i - last >= hang:
                segs.append((start, min(n, last + 1 + post)))
                on = False
                run = 0
            continue
        run = run + 1 if d else 0
        if run >= min_frames:
            on, start, last, run = True, i - min_frames + 1, i, 0
    if on:
        segs.append((start, last + 1))
    return segs


def turns_of(spans_ms: Sequence[Span], pause_ms: int = TURN_PAUSE_MS) -> list[Span]:
    out: list[Span] = []
    for s, e in sorted(spans_ms):
        if out and s - out[-1][1] < pause_ms:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def match_onsets(
    truth: Sequence[int], det: Sequence[int], tol: int = ONSET_TOL_MS
) -> list[tuple[int, int]]:
    """One-to-one (truth index, det index) pairs within ``tol`` ms, closest pairs first."""
    pairs = sorted(
        (abs(d - t), i, j)
        for i, t in enumerate(truth)
        for j, d in enumerate(det)
        if abs(d - t) <= tol
    )
    used_t: set[int] = set()
    used_d: set[int] = set()
    out = []
    for _, i, j in pairs:
        if i not in used_t and j not in used_d:
            used_t.add(i)
            used_d.add(j)
            out.append((i, j))
    return out


@dataclass
class Counts:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    n_true: int = 0
    n_det: int = 0
    n_match: int = 0

    def add(self, o: Counts) -> None:
        self.tp += o.tp
        self.fp += o.fp
        self.fn += o.fn
        self.n_true += o.n_true
        self.n_det += o.n_det
        self.n_match += o.n_match

    @staticmethod
    def _f1(tp: int, fp: int, fn: int) -> float:
        return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")

    @property
    def frame_f1(self) -> float:
        return self._f1(self.tp, self.fp, self.fn)

    @property
    def onset_f1(self) -> float:
        return self._f1(self.n_match, self.n_det - self.n_match, self.n_true - self.n_match)

    @property
    def onset_p(self) -> float:
        return self.n_match / self.n_det if self.n_det else float("nan")

    @property
    def onset_r(self) -> float:
        return self.n_match / self.n_true if self.n_true else float("nan")


def truth_frames(
    n_frames: int, truth_ms: Sequence[Span]
) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """(truth speech per frame, scored per frame) for one track."""
    mids = FRAME_MS * np.arange(n_frames) + FRAME_MS // 2
    speech = np.zeros(n_frames, dtype=bool)
    scored = np.ones(n_frames, dtype=bool)
    for s, e in truth_ms:
        speech |= (mids >= s) & (mids < e)
        for b in (s, e):
            scored &= np.abs(mids - b) > COLLAR_MS
    return speech, scored


def spans_to_mask(n_frames: int, spans: Sequence[Span]) -> NDArray[np.bool_]:
    m = np.zeros(n_frames, dtype=bool)
    for s, e in spans:
        m[max(0, s) : max(0, min(n_frames, e))] = True
    return m


def mask_to_spans(mask: NDArray[np.bool_]) -> tuple[Span, ...]:
    """The ``[start, end)`` index spans of the True runs of a 1-D mask (``spans_to_mask``'s
    inverse)."""
    edges = np.flatnonzero(np.diff(np.concatenate(([0], mask.astype(np.int8), [0]))))
    return tuple(zip(edges[0::2].tolist(), edges[1::2].tolist(), strict=True))


def score_track(call: TwoTrackCall, track: str, spans: Sequence[Span]) -> Counts:
    """Counts for one track's detected frame spans."""
    n = call.n_frames
    speech, scored = truth_frames(n, call.truth_ms[track])
    det = spans_to_mask(n, spans)
    c = Counts()
    c.tp = int(np.sum(speech & det & scored))
    c.fp = int(np.sum(~speech & det & scored))
    c.fn = int(np.sum(speech & ~det & scored))
    tt = turns_of(call.truth_ms[track])
    dt = turns_of([(s * FRAME_MS, e * FRAME_MS) for s, e in spans])
    c.n_true, c.n_det = len(tt), len(dt)
    c.n_match = len(match_onsets([s for s, _ in tt], [s for s, _ in dt]))
    return c


def score_raw(call: TwoTrackCall, track: str, raw: NDArray[np.bool_]) -> Counts:
    """Frame counts only, for unsmoothed per-frame decisions."""
    speech, scored = truth_frames(call.n_frames, call.truth_ms[track])
    c = Counts()
    c.tp = int(np.sum(speech & raw & scored))
    c.fp = int(np.sum(~speech & raw & scored))
    c.fn = int(np.sum(speech & ~raw & scored))
    return c
