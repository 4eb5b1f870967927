"""Speech segmentation on real conversational speech: the bridge against the anchors.

Calls: ``fixtures/real_calls.py`` builds a two-track call from each of the seven 30 s AMI
excerpts in ``../shared/real-speech/ami`` (the speaker with most speech is the caller, the others
the agent; overlaps carry both voices) under each condition (rows): clean; white and pink noise
at 20, 10 and 5 dB SNR (below the track's active speech level); babble (other AMI talkers) 10 dB
under; low-frequency rumble; -24 dB bleed of each track into the other with a caller 10 dB
quieter, hum and clicks; 3 % frame loss; and ``skew``: the clean call with the two tracks'
messages arriving up to 5 s apart, through a live-parameter session (bound 5000 ms).

Columns (frame F1 with a 100 ms collar / turn-onset F1 within ±300 ms, pooled over 7 files x 2
tracks, ``_vad_scoring.py``):

- ``mise``: the bridge itself: Twilio wire lines through ``CallSession`` (``replay_offline``),
  the segments of its turn records.
- ``webrtc0``..``webrtc3``: ``webrtcvad.Vad(mode)`` on 20 ms frames at 8 kHz.
- ``silero``: ``silero_vad.onnx`` through onnxruntime alone at 8 kHz (threshold 0.5).
- ``fastvad``: ``fast_vad.VAD.with_config(8000, 0.5, 0, 0, 0)`` (its 32 ms frames mapped to
  20 ms).
- ``oracle``: the labels gated by each track's clean own speech (frames within 35 dB of its
  active level): the ceiling a frame-level detector with this segmenter can reach.

The anchors' per-frame decisions go through one segmenter (60 ms to start, 240 ms hangover,
40 ms post-roll); turns for onset scoring are segments under 700 ms apart, merged the same way
for every column (``mise`` included). CPU: µs per 20 ms frame per track, ``process_time``, best
of 3, on the clean calls: ``mise VAD`` is the band features plus the VAD on both tracks,
``mise pipeline`` the whole replay (JSON, base64, timeline, μ-law, VAD, turns; no features).

Run: ``.venv/bin/python bench/vad_accuracy.py [--conditions clean,white10] [--no-anchors]``
(anchors: ``pip install -e '.[bench]' && pip install --no-deps silero-vad``; a missing one is
left out). ``bench/vad_fixtures.py`` scores the scripted espeak-ng fixtures (tags, boundaries).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import _vad_anchors as an
import _vad_scoring as sc

from fixtures import real_calls as rc
from mise_twilio.core.call import CallSession, SessionParams
from mise_twilio.core.records import TurnRecord
from mise_twilio.replay import replay_offline

CONDITIONS = (*rc.CONDITIONS, "skew")
Runner = Callable[[rc.TwoTrackCall, int], an.Result]


def mise_spans(records: Sequence[object], track: str) -> list[sc.Span]:
    """Frame spans of a track's turn segments (call clock, frames of 20 ms)."""
    first = rc.FIRST_TIMESTAMP_MS
    return [
        ((s - first) // 20, (e - first) // 20)
        for r in records
        if isinstance(r, TurnRecord) and r.track == track
        for s, e in r.segments
    ]


def run_mise(call: rc.TwoTrackCall, reps: int, *, skew_ms: int = 0) -> an.Result:
    params = SessionParams(measure_features=False)
    if skew_ms:
        lines = rc.wire_lines(call, arrival="skew", max_skew_ms=skew_ms, seed=7)
        session = CallSession(params)  # live semantics: the 5000 ms skew bound
        records: list[object] = []
        for line in lines:
            session.receive_text(line)
            records += session.take_events()
        session.receive_eof()
        records += session.take_events()
        return an.Result({t: mise_spans(records, t) for t in rc.TRACKS}, None, 0.0)
    lines = rc.wire_lines(call)
    best = float("inf")
    out: list[object] = []
    for _ in range(max(1, reps)):
        t0 = time.process_time()
        out = list(replay_offline(lines, params))
        best = min(best, time.process_time() - t0)
    return an.Result({t: mise_spans(out, t) for t in rc.TRACKS}, None, best)


def webrtc_runner(mode: int) -> Runner:
    def run(call: rc.TwoTrackCall, reps: int) -> an.Result:
        return an.run_webrtc(call, mode, reps)

    return run


def runners(with_anchors: bool) -> dict[str, Runner]:
    out: dict[str, Runner] = {"mise": run_mise}
    if with_anchors:
        if importlib.util.find_spec("webrtcvad") is not None:
            for mode in range(4):
                out[f"webrtc{mode}"] = webrtc_runner(mode)
        if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("silero_vad"):
            out["silero"] = an.run_silero
        if importlib.util.find_spec("fast_vad") is not None:
            out["fastvad"] = an.run_fastvad
    out["oracle"] = lambda c, r: an.run_oracle(c)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--conditions", default=",".join(CONDITIONS))
    ap.add_argument("--no-anchors", action="store_true")
    args = ap.parse_args(argv)
    if not rc.AMI_DIR.exists():
        print(f"error: real speech not found at {rc.AMI_DIR}", file=sys.stderr)
        return 2
    conditions = args.conditions.split(",")
    dets = runners(not args.no_anchors)
    names = list(dets)
    table: dict[str, dict[str, sc.Counts]] = {c: {} for c in conditions}
    cpu: dict[str, float] = {}
    for cond in conditions:
        calls = [rc.build_call(f, "clean" if cond == "skew" else cond) for f in rc.FILES]
        for name, run in dets.items():
            if cond == "skew" and name != "mise":
                continue  # arrival order means nothing to a detector fed the decoded audio
            tot = sc.Counts()
            secs = 0.0
            reps = 3 if cond == "clean" else 1
            for call in calls:
                res = run_mise(call, 1, skew_ms=5000) if cond == "skew" else run(call, reps)
                secs += res.cpu_s
                for t in rc.TRACKS:
                    tot.add(sc.score_track(call, t, res.spans[t]))
            table[cond][name] = tot
            if cond == "clean":
                cpu[name] = secs / sum(2 * c.n_frames for c in calls) * 1e6
        print(f"{cond} done", file=sys.stderr, flush=True)
    if "clean" in conditions:
        calls = [rc.build_call(f, "clean") for f in rc.FILES]
        secs = sum(an.run_bandvad(c, 3).cpu_s for c in calls)
        cpu["mise VAD"] = secs / sum(2 * c.n_frames for c in calls) * 1e6

    width = 12
    print("frame F1 (100 ms collar) / turn-onset F1 (±300 ms), AMI real speech, 7 files x 2 tracks")
    print(f"{'condition':10s}" + "".join(f"{n:>{width}s}" for n in names))
    for cond in conditions:
        row = f"{cond:10s}"
        for n in names:
            c = table[cond].get(n)
            cell = "-" if c is None else f"{c.frame_f1:.3f}/{c.onset_f1:.2f}"
            row += cell.rjust(width)
        print(row)
    print("\nturn onsets (true / detected / matched)")
    for cond in conditions:
        cells = [
            f"{c.n_true}/{c.n_det}/{c.n_match}" if (c := table[cond].get(n)) else "-" for n in names
        ]
        print(f"{cond:10s}" + "".join(cell.rjust(width) for cell in cells))
    if cpu:
        print("\nCPU µs per 20 ms frame per track (clean, best of 3)")
        for n, v in cpu.items():
            label = "mise pipeline" if n == "mise" else n
            print(f"  {label:14s} {v:6.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
