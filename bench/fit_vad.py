"""Fit the band VAD's logistic model on the AMI real speech, with leave-one-file-out CV.

Data: every file of ``realspeech.FILES`` under every training condition
(``TRAIN_CONDITIONS``: clean, white/pink 20/10/5 dB, babble 10 dB, rumble, bleed, 3 % loss),
both tracks. For each frame the model inputs (``core.vad.FEATURE_NAMES``) are taken from the
detector itself (``BandVad.trace``: the floors it really tracks, run with the model of the
previous pass, ``PASSES`` passes) and the target is the ground truth (``scoring.truth_frames``:
speech if the frame midpoint is in a labelled region); frames within the 100 ms collar and
digital-silence frames are left out.

Model: L2-regularised logistic regression on standardised inputs, fitted by Newton's method
(IRLS), each condition weighted equally. Then the hysteresis (``start_logit``, ``stop_logit``)
is chosen on the *training* files by end-to-end frame F1 + ½ onset F1 (mean over conditions)
over a small grid.

Cross-validation: for each of the 7 files, fit model + thresholds on the other 6 and run the
whole detector on the held-out file; the pooled held-out counts are the CV numbers printed per
condition. The committed model (``mise_twilio/core/vad_model.py``) is then fitted on all 7
files. ``--drop`` leaves inputs out (weight 0): by default the absolute level, so that the model
only judges how far a frame stands out of its own line's noise, whatever the call's gain.

Run: ``.venv/bin/python bench/fit_vad.py [--no-cv] [--no-grid] [--drop level]`` (about ten
minutes with the cross-validation on two cores).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import _vad_anchors as anchors
import _vad_scoring as sc

from fixtures import real_calls as rs
from mise_twilio.core import vad as bv

TRAIN_CONDITIONS = tuple(c for c in rs.CONDITIONS)
L2 = 1.0  # ridge on standardised weights, per 10k frames
PASSES = 2
GRID_START = (0.5, 1.0, 1.5)
GRID_STOP = (-0.5, 0.0)

Data = dict[tuple[str, str], tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.bool_]]]


def collect(model: bv.VadModel, params: bv.VadParams, files: Sequence[str]) -> Data:
    """(inputs, targets, usable mask) per (file, condition), both tracks concatenated."""
    out: Data = {}
    for f in files:
        for cond in TRAIN_CONDITIONS:
            call = rs.build_call(f, cond)
            r = anchors.run_bandvad(call, params=params, model=model, trace=True)
            xs, ys, ms = [], [], []
            for t in rs.TRACKS:
                x = r.traces[t]  # type: ignore[attr-defined]
                speech, scored = sc.truth_frames(call.n_frames, call.truth_ms[t])
                silent = ~call.pcm[t].reshape(-1, rs.FRAME).any(axis=1)
                xs.append(x)
                ys.append(speech.astype(np.float64))
                ms.append(scored & ~silent)
            out[(f, cond)] = (np.concatenate(xs), np.concatenate(ys), np.concatenate(ms))
    return out


DROP: tuple[str, ...] = ("level",)


def fit_logistic(
    x: NDArray[np.float64], y: NDArray[np.float64], w: NDArray[np.float64], l2: float = L2
) -> bv.VadModel:
    """Weighted L2 logistic regression (Newton/IRLS) on standardised inputs; the ``DROP``
    inputs get weight 0 (a constant column, standardised to 0)."""
    x = x.copy()
    for name in DROP:
        x[:, bv.FEATURE_NAMES.index(name)] = 0.0
    mean = np.average(x, axis=0, weights=w)
    scale = np.sqrt(np.average((x - mean) ** 2, axis=0, weights=w)) + 1e-6
    xs = (x - mean) / scale
    xa = np.hstack([xs, np.ones((xs.shape[0], 1))])
    beta = np.zeros(xa.shape[1])
    lam = l2 * w.sum() / 1e4
    reg = np.full(xa.shape[1], lam)
    reg[-1] = 0.0
    for _ in range(30):
        z = np.clip(xa @ beta, -30, 30)
        p = 1.0 / (1.0 + np.exp(-z))
        g = xa.T @ (w * (p - y)) + reg * beta
        h = (xa * (w * p * (1 - p))[:, None]).T @ xa + np.diag(reg)
        step = np.linalg.solve(h, g)
        beta -= step
        if float(np.max(np.abs(step))) < 1e-6:
            break
    return bv.VadModel(
        tuple(float(v) for v in beta[:-1]),
        float(beta[-1]),
        tuple(float(v) for v in mean),
        tuple(float(v) for v in scale),
    )


def fit_on(data: Data, files: Sequence[str]) -> bv.VadModel:
    xs, ys, ws = [], [], []
    for (f, _cond), (x, y, m) in data.items():
        if f not in files:
            continue
        xs.append(x[m])
        ys.append(y[m])
        ws.append(np.full(int(m.sum()), 1.0))
    x, y, w = np.concatenate(xs), np.concatenate(ys), np.concatenate(ws)
    return fit_logistic(x, y, w)


def evaluate(
    model: bv.VadModel,
    params: bv.VadParams,
    files: Sequence[str],
    conditions: Sequence[str] = TRAIN_CONDITIONS,
) -> dict[str, sc.Counts]:
    """End-to-end pooled counts per condition on ``files``."""
    out: dict[str, sc.Counts] = {}
    for cond in conditions:
        tot = sc.Counts()
        for f in files:
            call = rs.build_call(f, cond)
            r = anchors.run_bandvad(call, params=params, model=model)
            for t in rs.TRACKS:
                tot.add(sc.score_track(call, t, r.spans[t]))
        out[cond] = tot
    return out


def objective(counts: dict[str, sc.Counts]) -> float:
    return float(np.mean([c.frame_f1 + 0.5 * c.onset_f1 for c in counts.values()]))


def choose_thresholds(
    model: bv.VadModel, base: bv.VadParams, files: Sequence[str]
) -> tuple[bv.VadParams, float]:
    best: tuple[float, bv.VadParams] | None = None
    for start in GRID_START:
        for stop in GRID_STOP:
            if stop > start:
                continue
            p = dataclasses.replace(base, start_logit=start, stop_logit=stop)
            val = objective(evaluate(model, p, files))
            if best is None or val > best[0]:
                best = (val, p)
    assert best is not None
    return best[1], best[0]


def write_weights(
    path: Path, model: bv.VadModel, params: bv.VadParams, cv: dict[str, object]
) -> None:
    def tup(v: Sequence[float]) -> str:
        return "(\n" + "".join(f"    {x:.6g},\n" for x in v) + ")"

    about = (
        "Fitted on the AMI real speech in ../shared/real-speech/ami/ (trn03-trn09, CC BY 4.0, "
        "Carletta et al. 2005) built into two-track calls by fixtures/real_calls.py under the "
        "conditions "
        f"{', '.join(TRAIN_CONDITIONS)}; L2 logistic regression on standardised inputs "
        f"(vad.FEATURE_NAMES: {', '.join(bv.FEATURE_NAMES)}; left out: {', '.join(DROP) or '-'})."
        " Hysteresis chosen with the "
        f"weights: start_logit={params.start_logit}, stop_logit={params.stop_logit}."
    )
    cv_lines = [f"{c}: frame F1 / onset F1 {v}" for c, v in cv.items()]
    text = (
        '"""The VAD model (``vad.VadModel``), written by ``bench/fit_vad.py``: do not edit '
        "by hand.\n\n"
        + "\n".join(textwrap.wrap(about, 96))
        + "\n\nLeave-one-file-out CV, pooled over the held-out files:\n\n"
        + "\n".join(f"- {line}" for line in cv_lines)
        + '\n"""\n\n'
        + f"""WEIGHTS = {tup(model.weights)}
BIAS = {model.bias:.6g}
MEAN = {tup(model.mean)}
SCALE = {tup(model.scale)}
START_LOGIT = {params.start_logit}
STOP_LOGIT = {params.stop_logit}
"""
    )
    path.write_text(text, encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-cv", action="store_true")
    ap.add_argument("--no-grid", action="store_true", help="keep the params' thresholds")
    ap.add_argument(
        "--out",
        default=str(Path(__file__).resolve().parents[1] / "mise_twilio" / "core" / "vad_model.py"),
    )
    ap.add_argument(
        "--drop", default="level", help="comma-separated model inputs left out (weight 0)"
    )
    args = ap.parse_args(argv)
    global DROP
    DROP = tuple(n for n in args.drop.split(",") if n)

    params = bv.VadParams()
    model = bv.default_model()
    files = list(rs.FILES)
    data: Data = {}
    for _ in range(PASSES):
        data = collect(model, params, files)
        model = fit_on(data, files)

    cv_out: dict[str, object] = {}
    if not args.no_cv:
        pooled = {c: sc.Counts() for c in TRAIN_CONDITIONS}
        for held in files:
            train = [f for f in files if f != held]
            m = fit_on(data, train)
            p = params if args.no_grid else choose_thresholds(m, params, train)[0]
            res = evaluate(m, p, [held])
            for c, cnt in res.items():
                pooled[c].add(cnt)
            print(
                f"fold {held}: start {p.start_logit} stop {p.stop_logit} "
                + " ".join(f"{c}={cnt.frame_f1:.3f}" for c, cnt in res.items()),
                flush=True,
            )
        print("\nleave-one-file-out CV, pooled over held-out files (frame F1 / onset F1):")
        for c, cnt in pooled.items():
            print(f"  {c:9s} {cnt.frame_f1:.3f} / {cnt.onset_f1:.3f}")
            cv_out[c] = [round(cnt.frame_f1, 3), round(cnt.onset_f1, 3)]
    if not args.no_grid:
        params, val = choose_thresholds(model, params, files)
        print(
            f"thresholds on all files: start {params.start_logit} "
            f"stop {params.stop_logit} ({val:.3f})"
        )
    for name, wv in zip(bv.FEATURE_NAMES, model.folded()[0], strict=True):
        print(f"  w[{name}] = {wv:+.4f} per unit")
    write_weights(Path(args.out), model, params, cv_out)
    print("wrote", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
