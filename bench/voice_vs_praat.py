"""Turn voice quality (jitter, shimmer, HNR) against Praat's, on real speech through the bridge.

``core/voice.py`` follows Praat's definitions (jitter local, shimmer local dB, cross-correlation
HNR), but finds the glottal periods its own way: marks placed from the F0 track, moved onto
the peaks of an LPC residual and matched by cross-correlation, where Praat's
``To PointProcess (periodic, cc)`` searches pulse by pulse in the waveform. On synthetic
signals both read the set values (``tests/test_voice.py``); this checks that on people they
rank turns alike.

Turns: the 24 rated emotion clips (``../shared/real-speech/emotion/``, one ``<Connect>`` call
each, as ``bench/arousal_accuracy.py`` makes them) and the seven AMI conversation calls
(``../shared/real-speech/ami/``, two tracks, as ``fixtures/real_calls.py`` builds them), all
μ-law at 8 kHz through ``CallSession``. Each turn record's own audio (the session's turn audio,
pauses included) goes to Praat 6 through parselmouth (``pip install praat-parselmouth``: GPL,
a benchmark dependency only) with its voice-report settings and this project's F0 range
(60-400 Hz): ``To PointProcess (periodic, cc)``; ``Get jitter (local)`` and ``Get shimmer
(local_dB)`` with shortest and longest period 0.1 ms and 20 ms, period factor 1.3, amplitude
factor 1.6; ``To Harmonicity (cc)`` at a 10 ms step, 0.1 silence threshold, 1 period per
window, ``Get mean``. The bridge's figures are the records' ``voice`` fields.

First, both on synthetic glottal pulse trains whose jitter and shimmer are known by
construction (``fixtures/signals.py``'s ``pulse_train``, 2 s, through μ-law; the signals of
``tests/test_voice.py``): which of the two reads the truth at 8 kHz. Then, on the real turns,
printed per measure: turns where both give a value; each side's median; Spearman's ρ and
Pearson's r across those turns; the median of bridge − Praat and the median |difference|; then
the same over the emotion clips and the AMI turns apart. Praat is the reference
implementation, not the truth: at 8 kHz through a phone band its pulse picking has its own
errors. No assertions.

Run: ``.venv/bin/python bench/voice_vs_praat.py``
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from arousal_accuracy import DATA, connect_call, load, spearman  # noqa: E402

from fixtures import signals  # noqa: E402
from mise_twilio.core.call import CallSession, SessionParams  # noqa: E402
from mise_twilio.core.features import measure_turn  # noqa: E402
from mise_twilio.core.records import TurnRecord  # noqa: E402

F0_MIN_HZ, F0_MAX_HZ = 60.0, 400.0
"""This project's F0 search range (``FeatureParams``), given to Praat too."""
MEASURES = ("jitter_local_pct", "shimmer_local_db", "hnr_db")


@dataclass(frozen=True)
class Pair:
    source: str
    """``emotion`` or ``ami``."""
    bridge: dict[str, float | None]
    praat: dict[str, float | None]


def turns(lines: list[str]) -> list[tuple[TurnRecord, NDArray[np.int16]]]:
    """Every turn record of one call with the session's own audio of that turn."""
    session = CallSession(SessionParams(keep_turn_audio=True))
    records = []
    for line in lines:
        session.receive_text(line)
        records += session.take_events()
    session.receive_eof()
    records += session.take_events()
    audio = dict(session.take_turn_audio())
    return [
        (r, np.frombuffer(audio[r.id], dtype=np.int16))
        for r in records
        if isinstance(r, TurnRecord)
    ]


def praat_voice(pcm: NDArray[np.int16]) -> dict[str, float | None]:
    """Praat's jitter (local, %), shimmer (local, dB) and mean cc HNR (dB) of 8 kHz int16
    samples; ``None`` where Praat gives none (too few pulses: NaN or undefined)."""
    import parselmouth
    from parselmouth.praat import call

    sound = parselmouth.Sound(pcm.astype(np.float64) / 32768.0, sampling_frequency=8000.0)
    pulses = call(sound, "To PointProcess (periodic, cc)", F0_MIN_HZ, F0_MAX_HZ)
    jitter = call(pulses, "Get jitter (local)", 0.0, 0.0, 0.0001, 0.02, 1.3)
    shimmer = call([sound, pulses], "Get shimmer (local_dB)", 0.0, 0.0, 0.0001, 0.02, 1.3, 1.6)
    harmonicity = call(sound, "To Harmonicity (cc)", 0.01, F0_MIN_HZ, 0.1, 1.0)
    hnr = call(harmonicity, "Get mean", 0.0, 0.0)

    def value(v: float, scale: float = 1.0) -> float | None:
        return None if v is None or not math.isfinite(v) else float(v) * scale

    return {
        "jitter_local_pct": value(jitter, 100.0),
        "shimmer_local_db": value(shimmer),
        "hnr_db": value(hnr),
    }


def pairs_of(source: str, calls: list[list[str]]) -> list[Pair]:
    out = []
    for lines in calls:
        for record, pcm in turns(lines):
            v = record.voice
            if v is None:  # features off: not this session's settings
                continue
            bridge = {
                "jitter_local_pct": v.jitter_local_pct,
                "shimmer_local_db": v.shimmer_local_db,
                "hnr_db": v.hnr_db,
            }
            out.append(Pair(source, bridge, praat_voice(pcm)))
    return out


SYNTHETIC_F0_HZ = (100.0, 150.0, 220.0)
SYNTHETIC_JITTER_SD = (0.005, 0.01, 0.02)
SYNTHETIC_SHIMMER_SD = (0.03, 0.06)


def synthetic() -> None:
    """Known jitter and shimmer: the set value, the bridge's reading and Praat's."""
    print("synthetic pulse trains, 2 s through μ-law (set value: bridge / Praat)")
    print(f"  {'F0 Hz':>6}  {'jitter %':<26}{'shimmer dB':<26}")
    for f0 in SYNTHETIC_F0_HZ:
        for i, jitter_sd in enumerate(SYNTHETIC_JITTER_SD):
            shimmer_sd = SYNTHETIC_SHIMMER_SD[i % len(SYNTHETIC_SHIMMER_SD)]
            x, times, amps = signals.pulse_train(
                f0, 2.0, jitter_sd=jitter_sd, shimmer_sd=shimmer_sd, seed=3 + i
            )
            pcm = signals.to_pcm(x)
            ours = measure_turn(pcm).voice
            praat = praat_voice(pcm)
            cells = []
            for want, got, ref in (
                (
                    signals.expected_jitter_pct(times),
                    ours.jitter_local_pct,
                    praat["jitter_local_pct"],
                ),
                (
                    signals.expected_shimmer_db(amps),
                    ours.shimmer_local_db,
                    praat["shimmer_local_db"],
                ),
            ):
                cells.append(f"{want:5.2f}: {_num(got)} / {_num(ref)}")
            print(f"  {f0:>6.0f}  {cells[0]:<26}{cells[1]:<26}")
    print()


def _num(v: float | None) -> str:
    return "  -  " if v is None else f"{v:5.2f}"


def pearson(a: NDArray[np.float64], b: NDArray[np.float64]) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float(np.dot(a, b) / math.sqrt(float(np.dot(a, a)) * float(np.dot(b, b))))


def report(title: str, pairs: list[Pair]) -> None:
    print(f"{title} ({len(pairs)} turns)")
    print(
        f"  {'measure':<18}{'turns':>6}{'bridge':>9}{'Praat':>9}{'rho':>8}{'r':>8}"
        f"{'median diff':>13}{'median |diff|':>15}"
    )
    for name in MEASURES:
        both = [
            (b, p)
            for b, p in ((x.bridge[name], x.praat[name]) for x in pairs)
            if b is not None and p is not None
        ]
        if len(both) < 3:
            print(f"  {name:<18}{len(both):>6}   (too few)")
            continue
        ours = np.asarray([b for b, _ in both])
        praat = np.asarray([p for _, p in both])
        diff = ours - praat
        print(
            f"  {name:<18}{len(both):>6}{float(np.median(ours)):>9.3f}"
            f"{float(np.median(praat)):>9.3f}{spearman(ours, praat):>+8.3f}"
            f"{pearson(ours, praat):>+8.3f}"
            f"{float(np.median(diff)):>+13.3f}{float(np.median(np.abs(diff))):>15.3f}"
        )


def main() -> int:
    try:
        import parselmouth  # noqa: F401
    except ImportError:
        print("error: needs praat-parselmouth (pip install praat-parselmouth)", file=sys.stderr)
        return 2
    from fixtures.real_calls import AMI_DIR, FILES, build_call, wire_lines

    if not (DATA / "ratings.csv").is_file() or not AMI_DIR.is_dir():
        print("error: no real speech at ../shared/real-speech (see its README)", file=sys.stderr)
        return 2
    synthetic()
    emotion = pairs_of("emotion", [connect_call(c) for c in load(DATA)])
    ami = pairs_of("ami", [wire_lines(build_call(name, "clean")) for name in FILES])
    report("all turns", emotion + ami)
    report("emotion clips", emotion)
    report("AMI calls", ami)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
