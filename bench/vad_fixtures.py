"""Segmentation accuracy of the energy VAD + turn tracker, under noise, loss and crosstalk.

Builds conditions in memory from the committed fixtures (decode each track's μ-law, modify,
re-encode to Twilio-wire lines with the same SIDs, timestamps and arrival order), replays them
offline through ``CallSession`` (``replay_offline``, ``measure_features=False``) and scores the
turn records against ``fixtures/*.expected.json``. The same decoded audio also goes through
``webrtcvad`` (aggressiveness 2 and 3) with a simple segmenter, as a reference.

Conditions (rows):

- ``clean``: the committed audio.
- ``white20`` / ``white10``: white noise at 20 / 10 dB SNR below each track's active speech
  level (RMS over its ground-truth segments).
- ``babble20`` / ``babble10``: six time-shifted, level-varied copies of the other fixtures'
  speech, at 20 / 10 dB SNR.
- ``loss3``: a further 3 % of each track's media frames not sent (runs of 1-5, seeded).
- ``bleed24``: the committed ``bleed_two_track`` (each track carries the other at -24 dB).

Rows ``clean`` .. ``loss3`` aggregate fork_two_track, lossy_3pct, quiet_caller, clicks_hum and
connect_inbound (garbage_lines has connect_inbound's audio); ``bleed24`` is bleed_two_track
alone. Metrics are pooled over fixtures and tracks (micro-averaged); ``bench/README.md`` says
what each column means. Prints tables, asserts nothing.

Run: ``.venv/bin/python bench/vad_fixtures.py [--json PATH] [--vad NAME=VALUE ...] [--sweep]
[--explain FIXTURE:CONDITION]``
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _fixture_audio as fa
import _vad_scoring
from _vad_scoring import match_onsets

from mise_twilio.core import audio as mt_audio
from mise_twilio.core.call import SessionParams
from mise_twilio.core.records import TurnRecord
from mise_twilio.core.vad import BandVad, VadParams, frame_features
from mise_twilio.replay import replay_offline

try:
    import webrtcvad
except ImportError:  # the optional ``bench`` extra
    webrtcvad = None

MAIN_FIXTURES = ("fork_two_track", "lossy_3pct", "quiet_caller", "clicks_hum", "connect_inbound")
BLEED_FIXTURE = "bleed_two_track"
CONDITIONS = ("clean", "white20", "white10", "babble20", "babble10", "loss3", "bleed24")
ONSET_TOL_MS = 300
TAGS = ("barge_in", "interrupted", "backchannel")
WEBRTC_MODES = (2, 3)
WEBRTC_MIN_SPEECH_FRAMES = 3  # 60 ms
WEBRTC_HANGOVER_FRAMES = 10  # 200 ms
WEBRTC_TURN_GAP_MS = 700
TIMING_REPS = 3

Span = tuple[int, int]


# --------------------------------------------------------------------------------------------
# Conditions
# --------------------------------------------------------------------------------------------


@dataclass
class Case:
    fixture: str
    condition: str
    fx: fa.FixtureAudio
    lines: list[str]
    pcm: dict[str, NDArray[np.int16]]  # what the bridge decodes: μ-law round trip, lost = 0
    lost: dict[str, set[int]]


def build_cases(selected: Sequence[str] = CONDITIONS) -> list[Case]:
    gen = fa.load_generator()
    names = [*MAIN_FIXTURES, BLEED_FIXTURE]
    fixtures = {n: fa.load_fixture(n) for n in names}
    cases: list[Case] = []

    def case(
        fx: fa.FixtureAudio, cond: str, audio: dict[str, Any], extra: dict[str, set[int]]
    ) -> Case:
        lines = fx.encode(audio, extra)
        lost = {t: fx.lost[t] | extra.get(t, set()) for t in fx.tracks}
        pcm = {}
        for t in fx.tracks:
            y = gen.from_ulaw(gen.to_ulaw(audio[t])).copy()
            for i in lost[t]:
                y[i * fa.FRAME : (i + 1) * fa.FRAME] = 0
            pcm[t] = y
        return Case(fx.name, cond, fx, lines, pcm, lost)

    for cond in selected:
        if cond == "bleed24":
            fx = fixtures[BLEED_FIXTURE]
            cases.append(case(fx, cond, fx.audio, {}))
            continue
        for name in MAIN_FIXTURES:
            fx = fixtures[name]
            if cond == "clean":
                cases.append(case(fx, cond, fx.audio, {}))
            elif cond.startswith(("white", "babble")):
                kind = "white" if cond.startswith("white") else "babble"
                snr = float(cond[len(kind) :])
                out = {}
                for t in fx.tracks:
                    rng = np.random.default_rng(fa.seed_of("vad_accuracy", name, t, kind))
                    n = fx.audio[t].size
                    if kind == "white":
                        noise = fa.white_noise(n, rng)
                    else:
                        pool = fa.speech_pool([fixtures[o] for o in names if o != name])
                        noise = fa.babble_noise(n, pool, rng)
                    out[t] = fa.add_at_snr(fx, t, noise, snr)
                cases.append(case(fx, cond, out, {}))
            elif cond == "loss3":
                extra = {
                    t: fa.choose_drops(
                        fx.n_frames,
                        0.03,
                        np.random.default_rng(fa.seed_of("vad_accuracy", name, t, "loss")),
                        fx.lost[t],
                    )
                    for t in fx.tracks
                }
                cases.append(case(fx, cond, fx.audio, extra))
            else:
                raise ValueError(cond)
    return cases


# --------------------------------------------------------------------------------------------
# Detectors: the bridge (mise) and webrtcvad
# --------------------------------------------------------------------------------------------


@dataclass
class DetTurn:
    start_ms: int
    end_ms: int
    segments: list[Span]
    flags: dict[str, bool] = field(default_factory=dict)


@dataclass
class Detection:
    turns: dict[str, list[DetTurn]]
    cpu_us_per_frame: float
    vad_us_per_frame: float | None = None
    raw_frames: dict[str, NDArray[np.bool_]] | None = None  # webrtc: unsmoothed decisions


def run_mise(case: Case, params: VadParams, *, timing: bool = True) -> Detection:
    sp = SessionParams(vad=params, measure_features=False)
    best = math.inf
    records: list[Any] = []
    for _ in range(TIMING_REPS if timing else 1):
        t0 = time.process_time()
        records = replay_offline(case.lines, sp)
        best = min(best, time.process_time() - t0)
    turns: dict[str, list[DetTurn]] = {t: [] for t in case.fx.tracks}
    for r in records:
        if isinstance(r, TurnRecord):
            turns.setdefault(r.track, []).append(
                DetTurn(
                    r.start_ms,
                    r.end_ms,
                    [(int(s), int(e)) for s, e in r.segments],
                    {tag: bool(getattr(r, tag)) for tag in TAGS},
                )
            )
    for lst in turns.values():
        lst.sort(key=lambda d: d.start_ms)
    n = case.fx.n_frames * len(case.fx.tracks)
    vad_us = vad_step_us(case, params) if timing else None
    return Detection(turns, best / n * 1e6, vad_us)


def frame_levels(case: Case) -> dict[str, list[float]]:
    """Per-frame dBFS as the session measures it (lost frames: digital silence)."""
    out = {}
    for t, x in case.pcm.items():
        raw = x.tobytes()
        lv = [mt_audio.rms_dbfs(raw[i * 320 : (i + 1) * 320]) for i in range(case.fx.n_frames)]
        for i in case.lost[t]:
            lv[i] = mt_audio.SILENCE_DBFS
        out[t] = lv
    return out


def vad_step_us(case: Case, params: VadParams) -> float:
    """µs per frame per track of the VAD alone (band features + ``BandVad.step_block`` in
    5-frame blocks, both tracks together), lost frames as digital silence."""
    tracks = case.fx.tracks
    n = case.fx.n_frames
    pcm = np.stack([case.pcm[t][: n * 160].reshape(n, 160).copy() for t in tracks])
    for ti, t in enumerate(tracks):
        pcm[ti, sorted(case.lost[t])] = 0
    best = math.inf
    for _ in range(TIMING_REPS):
        vad = BandVad(len(tracks), params)
        t0 = time.process_time()
        for k in range(0, n, 5):
            m = min(5, n - k)
            f = frame_features(pcm[:, k : k + m].reshape(len(tracks) * m, 160))
            vad.step_block(k, f.reshape(len(tracks), m, -1))
        best = min(best, time.process_time() - t0)
    return best / (n * len(tracks)) * 1e6


def smooth_frames(raw: Sequence[bool], min_frames: int, hang_frames: int) -> list[Span]:
    """Segments (frame spans) from raw decisions: start after ``min_frames`` consecutive speech
    frames (at the first of them), end once ``hang_frames`` pass without speech (at one past the
    last speech frame): the real-speech bench's segmenter with no post-roll."""
    return _vad_scoring.smooth(np.asarray(raw, dtype=bool), min_frames, hang_frames, post=0)


def segments_to_turns(segs: list[Span], gap_ms: int) -> list[DetTurn]:
    turns: list[DetTurn] = []
    for s, e in segs:
        if turns and s - turns[-1].end_ms < gap_ms:
            turns[-1].segments.append((s, e))
            turns[-1].end_ms = e
        else:
            turns.append(DetTurn(s, e, [(s, e)]))
    return turns


def run_webrtc(case: Case, mode: int) -> Detection:
    assert webrtcvad is not None
    first = case.fx.first_ts
    turns: dict[str, list[DetTurn]] = {}
    raws: dict[str, NDArray[np.bool_]] = {}
    total = 0.0
    for t in case.fx.tracks:
        raw_bytes = case.pcm[t].tobytes()
        frames = [raw_bytes[i * 320 : (i + 1) * 320] for i in range(case.fx.n_frames)]
        best = math.inf
        dec: list[bool] = []
        for _ in range(TIMING_REPS):
            vad = webrtcvad.Vad(mode)
            t0 = time.process_time()
            dec = [vad.is_speech(f, 8000) for f in frames]
            segs = smooth_frames(dec, WEBRTC_MIN_SPEECH_FRAMES, WEBRTC_HANGOVER_FRAMES)
            best = min(best, time.process_time() - t0)
        total += best
        segs_ms = [(first + s * fa.FRAME_MS, first + e * fa.FRAME_MS) for s, e in segs]
        turns[t] = segments_to_turns(segs_ms, WEBRTC_TURN_GAP_MS)
        raws[t] = np.asarray(dec, dtype=bool)
    n = case.fx.n_frames * len(case.fx.tracks)
    return Detection(turns, total / n * 1e6, raw_frames=raws)


# --------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------


def frame_mask(first: int, n_frames: int, spans: Iterable[Span]) -> NDArray[np.bool_]:
    """Frames whose midpoint lies in one of ``spans`` (stream ms, [start, end))."""
    mids = first + fa.FRAME_MS * np.arange(n_frames) + fa.FRAME_MS // 2
    mask = np.zeros(n_frames, dtype=bool)
    for s, e in spans:
        mask |= (mids >= s) & (mids < e)
    return mask


def ms_mask(first: int, n_ms: int, spans: Iterable[Span]) -> NDArray[np.bool_]:
    mask = np.zeros(n_ms, dtype=bool)
    for s, e in spans:
        a, b = max(0, s - first), min(n_ms, e - first)
        if b > a:
            mask[a:b] = True
    return mask


@dataclass
class Score:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    n_true_turns: int = 0
    n_det_turns: int = 0
    n_onset_match: int = 0
    start_err: list[int] = field(default_factory=list)  # det - truth, matched turns
    end_err: list[int] = field(default_factory=list)
    ov_truth_ms: int = 0
    ov_hit_ms: int = 0
    ov_det_ms: int = 0
    two_track: bool = False
    tags: dict[str, list[int]] = field(
        default_factory=lambda: {t: [0, 0, 0] for t in TAGS}
    )  # [truth n, hit, false alarm]

    def add(self, o: Score) -> None:
        for f in dataclasses.fields(self):
            a, b = getattr(self, f.name), getattr(o, f.name)
            if f.name == "tags":
                for k in TAGS:
                    a[k] = [x + y for x, y in zip(a[k], b[k], strict=True)]
            elif f.name == "two_track":
                self.two_track = a or b
            else:
                setattr(self, f.name, a + b)

    # derived
    @staticmethod
    def _prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
        p = tp / (tp + fp) if tp + fp else float("nan")
        r = tp / (tp + fn) if tp + fn else float("nan")
        f = 2 * p * r / (p + r) if tp else (0.0 if fp + fn else float("nan"))
        return p, r, f

    def frame_prf(self) -> tuple[float, float, float]:
        return self._prf(self.tp, self.fp, self.fn)

    def onset_prf(self) -> tuple[float, float, float]:
        m = self.n_onset_match
        return self._prf(m, self.n_det_turns - m, self.n_true_turns - m)

    def summary(self) -> dict[str, Any]:
        fp_, fr, ff = self.frame_prf()
        op, orr, of = self.onset_prf()

        def stats(xs: list[int]) -> dict[str, float | None]:
            if not xs:
                return {"abs_median": None, "abs_p90": None, "signed_median": None}
            a = np.abs(np.asarray(xs, dtype=float))
            return {
                "abs_median": float(np.median(a)),
                "abs_p90": float(np.percentile(a, 90)),
                "signed_median": float(np.median(xs)),
            }

        return {
            "frame": {
                "tp": self.tp,
                "fp": self.fp,
                "fn": self.fn,
                "precision": fp_,
                "recall": fr,
                "f1": ff,
            },
            "onset": {
                "true": self.n_true_turns,
                "detected": self.n_det_turns,
                "matched": self.n_onset_match,
                "precision": op,
                "recall": orr,
                "f1": of,
            },
            "boundary_ms": {
                "n": len(self.start_err),
                "start": stats(self.start_err),
                "end": stats(self.end_err),
            },
            "overlap": {
                "truth_ms": self.ov_truth_ms,
                "hit_ms": self.ov_hit_ms,
                "detected_ms": self.ov_det_ms,
                "recall": (self.ov_hit_ms / self.ov_truth_ms) if self.ov_truth_ms else None,
            }
            if self.two_track
            else None,
            "tags": {
                k: {"truth": v[0], "hit": v[1], "false_alarm": v[2]} for k, v in self.tags.items()
            },
        }


def score_case(case: Case, det: Detection, *, flags: bool) -> tuple[Score, dict[str, Score]]:
    fx = case.fx
    first, n = fx.first_ts, fx.n_frames
    total = Score(two_track=len(fx.tracks) == 2)
    per_track: dict[str, Score] = {}
    for t in fx.tracks:
        sc = Score()
        truth_turns = fx.truth_turns(t)
        det_turns = det.turns.get(t, [])
        tm = frame_mask(first, n, fx.truth_segments(t))
        dm = frame_mask(first, n, [s for d in det_turns for s in d.segments])
        sc.tp = int(np.sum(tm & dm))
        sc.fp = int(np.sum(~tm & dm))
        sc.fn = int(np.sum(tm & ~dm))
        sc.n_true_turns, sc.n_det_turns = len(truth_turns), len(det_turns)
        pairs = match_onsets(
            [x["start_ms"] for x in truth_turns], [d.start_ms for d in det_turns], ONSET_TOL_MS
        )
        sc.n_onset_match = len(pairs)
        for i, j in pairs:
            sc.start_err.append(det_turns[j].start_ms - truth_turns[i]["start_ms"])
            sc.end_err.append(det_turns[j].end_ms - truth_turns[i]["end_ms"])
        if flags:
            score_tags(sc, truth_turns, det_turns)
        per_track[t] = sc
        total.add(sc)
    if len(fx.tracks) == 2:
        n_ms = n * fa.FRAME_MS
        a, b = fx.tracks
        tov = ms_mask(first, n_ms, fx.truth_segments(a)) & ms_mask(
            first, n_ms, fx.truth_segments(b)
        )
        dov = ms_mask(first, n_ms, [s for d in det.turns.get(a, []) for s in d.segments]) & ms_mask(
            first, n_ms, [s for d in det.turns.get(b, []) for s in d.segments]
        )
        total.ov_truth_ms = int(tov.sum())
        total.ov_hit_ms = int((tov & dov).sum())
        total.ov_det_ms = int(dov.sum())
    return total, per_track


def score_tags(sc: Score, truth_turns: list[dict[str, Any]], det_turns: list[DetTurn]) -> None:
    """Each truth turn ↔ the detected turn of its track it overlaps most; a tag is a hit when
    that turn carries the flag. A flagged detected turn whose best truth turn lacks the tag (or
    that overlaps none) is a false alarm."""

    def inter(a0: int, a1: int, b0: int, b1: int) -> int:
        return max(0, min(a1, b1) - max(a0, b0))

    for tt in truth_turns:
        best = max(
            det_turns,
            key=lambda d: inter(tt["start_ms"], tt["end_ms"], d.start_ms, d.end_ms),
            default=None,
        )
        ok = (
            best is not None and inter(tt["start_ms"], tt["end_ms"], best.start_ms, best.end_ms) > 0
        )
        for tag in TAGS:
            if tag in tt["tags"]:
                sc.tags[tag][0] += 1
                if ok and best is not None and best.flags.get(tag):
                    sc.tags[tag][1] += 1
    for d in det_turns:
        best_t = max(
            truth_turns,
            key=lambda x: inter(x["start_ms"], x["end_ms"], d.start_ms, d.end_ms),
            default=None,
        )
        ok = (
            best_t is not None
            and inter(best_t["start_ms"], best_t["end_ms"], d.start_ms, d.end_ms) > 0
        )
        for tag in TAGS:
            if d.flags.get(tag) and not (ok and best_t is not None and tag in best_t["tags"]):
                sc.tags[tag][2] += 1


# --------------------------------------------------------------------------------------------
# Running and printing
# --------------------------------------------------------------------------------------------


def detectors() -> list[str]:
    return ["mise"] + ([f"webrtc{m}" for m in WEBRTC_MODES] if webrtcvad is not None else [])


def evaluate(
    cases: list[Case], params: VadParams, *, timing: bool = True, with_webrtc: bool = True
) -> dict[str, Any]:
    """{condition: {detector: {"score": Score, "cpu": [...], "vad": [...]}}, "per_fixture": ...}"""
    dets = detectors() if with_webrtc else ["mise"]
    by_cond: dict[str, dict[str, dict[str, Any]]] = {}
    per_fixture: dict[tuple[str, str, str, str], Score] = {}
    for case in cases:
        slot = by_cond.setdefault(case.condition, {})
        for name in dets:
            det = (
                run_mise(case, params, timing=timing)
                if name == "mise"
                else run_webrtc(case, int(name[-1]))
            )
            total, per_track = score_case(case, det, flags=name == "mise")
            s = slot.setdefault(
                name, {"score": Score(), "cpu": [], "vad": [], "frames": 0, "raw": [0, 0, 0]}
            )
            if det.raw_frames is not None:  # webrtc's unsmoothed decisions, scored alike
                for t, raw in det.raw_frames.items():
                    tm = frame_mask(case.fx.first_ts, case.fx.n_frames, case.fx.truth_segments(t))
                    s["raw"][0] += int(np.sum(tm & raw))
                    s["raw"][1] += int(np.sum(~tm & raw))
                    s["raw"][2] += int(np.sum(tm & ~raw))
            s["score"].add(total)
            frames = case.fx.n_frames * len(case.fx.tracks)
            s["cpu"].append(det.cpu_us_per_frame * frames)
            if det.vad_us_per_frame is not None:
                s["vad"].append(det.vad_us_per_frame * frames)
            s["frames"] += frames
            for t, sc in per_track.items():
                per_fixture[(case.condition, case.fixture, t, name)] = sc
    return {"conditions": by_cond, "per_fixture": per_fixture}


def fmt(x: float | None, spec: str = ".3f") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return format(x, spec)


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) for i in range(len(header))]
    print(f"\n{title}")
    print(
        "  ".join(
            h.ljust(widths[0]) if i == 0 else h.rjust(widths[i]) for i, h in enumerate(header)
        )
    )
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(
            "  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r))
        )


def report(res: dict[str, Any], conditions: Sequence[str]) -> dict[str, Any]:
    conds = [c for c in conditions if c in res["conditions"]]
    dets = [d for d in detectors() if d in res["conditions"][conds[0]]]
    summ = {c: {d: res["conditions"][c][d]["score"].summary() for d in dets} for c in conds}
    for c in conds:
        for d in dets[1:]:
            p_, r_, f_ = Score._prf(*res["conditions"][c][d]["raw"])
            summ[c][d]["frame_raw"] = {"precision": p_, "recall": r_, "f1": f_}

    # frame-level
    header = ["condition"] + [
        f"{d} {m}" for d in dets for m in (("P", "R", "F1") + (("raw F1",) if d != "mise" else ()))
    ]
    rows = []
    for c in conds:
        row = [c]
        for d in dets:
            f = summ[c][d]["frame"]
            row += [fmt(f["precision"]), fmt(f["recall"]), fmt(f["f1"])]
            if d != "mise":
                row.append(fmt(summ[c][d]["frame_raw"]["f1"]))
        rows.append(row)
    print_table(
        "Frame-level speech detection (20 ms frames, pooled over fixtures and tracks; "
        "raw = webrtcvad without smoothing)",
        header,
        rows,
    )

    # onsets
    header = ["condition", "true"] + [f"{d} {m}" for d in dets for m in ("det", "P", "R", "F1")]
    rows = []
    for c in conds:
        row = [c, str(summ[c][dets[0]]["onset"]["true"])]
        for d in dets:
            o = summ[c][d]["onset"]
            row += [
                str(o["detected"]),
                fmt(o["precision"], ".2f"),
                fmt(o["recall"], ".2f"),
                fmt(o["f1"], ".3f"),
            ]
        rows.append(row)
    print_table(
        f"Turn onsets (match within ±{ONSET_TOL_MS} ms, same track, one-to-one)", header, rows
    )

    # boundary errors
    header = ["condition"] + [
        f"{d} {m}" for d in dets for m in ("n", "start med/p90", "end med/p90", "bias s/e")
    ]
    rows = []
    for c in conds:
        row = [c]
        for d in dets:
            b = summ[c][d]["boundary_ms"]
            s, e = b["start"], b["end"]
            row += [
                str(b["n"]),
                f"{fmt(s['abs_median'], '.0f')}/{fmt(s['abs_p90'], '.0f')}",
                f"{fmt(e['abs_median'], '.0f')}/{fmt(e['abs_p90'], '.0f')}",
                f"{fmt(s['signed_median'], '+.0f')}/{fmt(e['signed_median'], '+.0f')}",
            ]
        rows.append(row)
    print_table(
        "Turn boundary error over onset-matched turns, ms "
        "(|err| median/p90; bias = signed median of det - truth, start/end)",
        header,
        rows,
    )

    # overlap & interruption flags
    header = (
        ["condition", "ovl truth ms"]
        + [f"ovl rec {d}" for d in dets]
        + [
            "mise ovl det ms",
            "barge_in",
            "interrupted",
            "backchannel",
            "flag FA b/i/bc",
        ]
    )
    rows = []
    for c in conds:
        ov0 = summ[c][dets[0]]["overlap"]
        row = [c, str(ov0["truth_ms"]) if ov0 else "-"]
        for d in dets:
            ov = summ[c][d]["overlap"]
            row.append(fmt(ov["recall"], ".2f") if ov else "-")
        row.append(str(ov0["detected_ms"]) if ov0 else "-")
        tg = summ[c]["mise"]["tags"]
        row += [f"{tg[k]['hit']}/{tg[k]['truth']}" for k in TAGS]
        row.append("/".join(str(tg[k]["false_alarm"]) for k in TAGS))
        rows.append(row)
    print_table(
        "Overlap recall (truth both-speaking ms also detected as both) "
        "and cross-track tags (mise; hit/truth)",
        header,
        rows,
    )

    # CPU
    header = ["condition", "frames", "mise pipeline", "mise VAD step"] + [
        f"{d} VAD" for d in dets[1:]
    ]
    rows = []
    cpu: dict[str, dict[str, float]] = {}
    for c in conds:
        slot = res["conditions"][c]
        frames = slot["mise"]["frames"]
        cpu[c] = {
            "frames": frames,
            "mise_pipeline_us": sum(slot["mise"]["cpu"]) / frames,
            "mise_vad_step_us": sum(slot["mise"]["vad"]) / frames
            if slot["mise"]["vad"]
            else float("nan"),
        }
        for d in dets[1:]:
            cpu[c][f"{d}_us"] = sum(slot[d]["cpu"]) / slot[d]["frames"]
        rows.append(
            [
                c,
                str(frames),
                fmt(cpu[c]["mise_pipeline_us"], ".1f"),
                fmt(cpu[c]["mise_vad_step_us"], ".2f"),
            ]
            + [fmt(cpu[c][f"{d}_us"], ".1f") for d in dets[1:]]
        )
    print_table(
        "CPU µs per 20 ms frame per track (process_time, best of "
        f"{TIMING_REPS}; pipeline = replay_offline without features)",
        header,
        rows,
    )

    # per fixture (mise): frame F1 / onset F1 per track
    pf = res["per_fixture"]
    keys = sorted(
        {(fx, t) for (_, fx, t, _) in pf},
        key=lambda k: ([*MAIN_FIXTURES, BLEED_FIXTURE].index(k[0]), k[1]),
    )
    header = ["fixture/track", *conds]
    rows = []
    per_fixture_json: dict[str, Any] = {}
    for fx, t in keys:
        row = [f"{fx}/{t[:3]}"]
        for c in conds:
            sc = pf.get((c, fx, t, "mise"))
            if sc is None:
                row.append("")
                continue
            ff = sc.frame_prf()[2]
            of = sc.onset_prf()[2]
            row.append(f"{fmt(ff, '.2f')}/{fmt(of, '.2f')}")
            for d in dets:
                sd = pf[(c, fx, t, d)]
                per_fixture_json.setdefault(c, {}).setdefault(f"{fx}/{t}", {})[d] = sd.summary()
        rows.append(row)
    print_table("Per fixture and track (mise): frame F1 / onset F1", header, rows)

    # one-line summary
    def f1s(d: str, key: str) -> list[tuple[float, str]]:
        return [(summ[c][d][key]["f1"], c) for c in conds]

    parts = []
    for d in dets:
        fr, on = f1s(d, "frame"), f1s(d, "onset")
        worst = min(fr)
        parts.append(
            f"{d} frame F1 mean {np.mean([x for x, _ in fr]):.3f} "
            f"(worst {worst[0]:.3f} {worst[1]}), onset F1 mean {np.mean([x for x, _ in on]):.3f}"
        )
    frames = sum(cpu[c]["frames"] for c in conds)

    def us(key: str) -> str:
        return fmt(sum(cpu[c][key] * cpu[c]["frames"] for c in conds) / frames, ".1f")

    print(
        f"\nSUMMARY  {' | '.join(parts)} | µs/frame: mise pipeline {us('mise_pipeline_us')}, "
        f"mise VAD step {us('mise_vad_step_us')}"
        + "".join(f", {d} {us(f'{d}_us')}" for d in dets[1:])
    )
    return {"conditions": summ, "cpu_us_per_frame": cpu, "per_fixture": per_fixture_json}


# --------------------------------------------------------------------------------------------
# Parameter sweep and explain
# --------------------------------------------------------------------------------------------

SWEEP: list[tuple[str, dict[str, Any]]] = [
    ("defaults", {}),
    ("start 1.0", {"start_logit": 1.0}),
    ("stop 0.0", {"stop_logit": 0.0}),
    ("hangover 160", {"hangover_ms": 160}),
    ("hangover 320", {"hangover_ms": 320}),
    ("pre_roll 60", {"pre_roll_ms": 60}),
    ("pre_roll 200", {"pre_roll_ms": 200}),
    ("post_roll 0", {"post_roll_ms": 0}),
    ("edge 6", {"edge_snr_db": 6.0}),
    ("echo loss 12", {"echo_min_loss_db": 12.0}),
    ("echo loss 20", {"echo_min_loss_db": 20.0}),
]


def sweep(
    cases: list[Case], base: VadParams, variants: list[tuple[str, dict[str, Any]]]
) -> list[dict[str, Any]]:
    conds = sorted({c.condition for c in cases}, key=CONDITIONS.index)
    out = []
    header = (
        ["variant"] + [f"{c} F1/on" for c in conds] + ["mean F1", "mean on", "end|med|", "tags"]
    )
    rows = []
    known = {f.name for f in dataclasses.fields(VadParams)}
    for name, over in variants:
        if not set(over) <= known:  # a field this version of VadParams does not have
            continue
        params = dataclasses.replace(base, **over)
        res = evaluate(cases, params, timing=False, with_webrtc=False)
        row = [name]
        f1s, ons, ends = [], [], []
        tag_hit = tag_n = 0
        per = {}
        for c in conds:
            s = res["conditions"][c]["mise"]["score"]
            f1, on = s.frame_prf()[2], s.onset_prf()[2]
            f1s.append(f1)
            ons.append(on)
            ends += s.end_err
            for k in TAGS:
                tag_n += s.tags[k][0]
                tag_hit += s.tags[k][1] - s.tags[k][2]
            row.append(f"{f1:.3f}/{on:.2f}")
            per[c] = {"frame_f1": f1, "onset_f1": on}
        end_med = float(np.median(np.abs(ends))) if ends else float("nan")
        row += [
            f"{np.mean(f1s):.3f}",
            f"{np.mean(ons):.3f}",
            f"{end_med:.0f}",
            f"{tag_hit}/{tag_n}",
        ]
        rows.append(row)
        out.append(
            {
                "variant": name,
                "overrides": over,
                "per_condition": per,
                "mean_frame_f1": float(np.mean(f1s)),
                "mean_onset_f1": float(np.mean(ons)),
            }
        )
    print_table(
        "VadParams sweep (mise; frame F1 / onset F1; tags = hits - false alarms over truth)",
        header,
        rows,
    )
    return out


def explain(cases: list[Case], params: VadParams, which: str) -> None:
    fixture, _, cond = which.partition(":")
    cond = cond or "clean"
    for case in cases:
        if case.fixture != fixture or case.condition != cond:
            continue
        det = run_mise(case, params, timing=False)
        wdet = run_webrtc(case, 2) if webrtcvad is not None else None
        print(f"\n== {fixture} [{cond}]")
        for t in case.fx.tracks:
            print(f"-- {t}")
            for tt in case.fx.truth_turns(t):
                span = f"{tt['start_ms']:6d}-{tt['end_ms']:6d}"
                print(f"  truth {span} {tt['tags']} segs={tt['segments']}")
            for d in det.turns.get(t, []):
                fl = [k for k, v in d.flags.items() if v]
                print(f"  mise  {d.start_ms:6d}-{d.end_ms:6d} {fl} segs={d.segments}")
            if wdet is not None:
                for d in wdet.turns.get(t, []):
                    print(f"  wrtc2 {d.start_ms:6d}-{d.end_ms:6d} segs={d.segments}")


# --------------------------------------------------------------------------------------------


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    fields = {f.name: f.type for f in dataclasses.fields(VadParams)}
    out: dict[str, Any] = {}
    for item in items:
        key, _, val = item.partition("=")
        if key not in fields:
            raise SystemExit(f"unknown VadParams field {key!r}")
        out[key] = float(val) if "float" in str(fields[key]) else int(val)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, help="write every number to this JSON file")
    ap.add_argument(
        "--vad",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a VadParams field",
    )
    ap.add_argument("--conditions", default=",".join(CONDITIONS), help="comma-separated subset")
    ap.add_argument("--sweep", action="store_true", help="also try the built-in VadParams variants")
    ap.add_argument(
        "--explain",
        action="append",
        default=[],
        metavar="FIXTURE[:CONDITION]",
        help="print true vs detected turns",
    )
    args = ap.parse_args(argv)
    conds = [c for c in args.conditions.split(",") if c]
    for c in conds:
        if c not in CONDITIONS:
            raise SystemExit(f"unknown condition {c!r}; choose from {', '.join(CONDITIONS)}")
    params = VadParams(**parse_overrides(args.vad))
    t0 = time.perf_counter()
    cases = build_cases(conds)
    have = "available" if webrtcvad is not None else "NOT installed (pip install -e '.[bench]')"
    print(f"VAD accuracy bench: {len(cases)} cases ({', '.join(conds)}); webrtcvad {have}")
    changed = {k: v for k, v in dataclasses.asdict(params).items() if v != getattr(VadParams(), k)}
    print(f"VadParams: {changed if changed else 'defaults'}")
    res = evaluate(cases, params)
    out = report(res, conds)
    out["vad_params"] = dataclasses.asdict(params)
    out["webrtc"] = {
        "modes": list(WEBRTC_MODES) if webrtcvad is not None else [],
        "min_speech_ms": WEBRTC_MIN_SPEECH_FRAMES * fa.FRAME_MS,
        "hangover_ms": WEBRTC_HANGOVER_FRAMES * fa.FRAME_MS,
        "turn_gap_ms": WEBRTC_TURN_GAP_MS,
    }
    if args.sweep:
        out["sweep"] = sweep(cases, params, SWEEP)
    for which in args.explain:
        explain(cases, params, which)
    print(f"\n(total wall time {time.perf_counter() - t0:.1f} s)")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=float) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
