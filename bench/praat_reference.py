"""Pitch and voice quality against Praat's, on synthetic signals and on real speech through the
bridge.

Praat (6.1, through parselmouth: ``pip install praat-parselmouth``, GPL, a benchmark dependency
only) is the reference implementation of the definitions ``core/features.py`` and
``core/voice.py`` follow, with its own methods: an autocorrelation pitch tracker with a path
search across frames (``To Pitch``), glottal pulses found in the waveform (``To PointProcess
(periodic, cc)``). This project's F0 range (60-400 Hz) is given to both.

1. **Synthetic pulse trains** whose jitter and shimmer are known by construction
   (``fixtures/signals.py``'s ``pulse_train``, 2 s, through μ-law; the signals of
   ``tests/test_voice.py``): set value, the bridge's reading, Praat's (``Get jitter (local)``
   and ``Get shimmer (local_dB)`` with periods 0.1-20 ms, period factor 1.3, amplitude factor
   1.6).
2. **Real turns**: every turn record of the 24 rated emotion clips (one ``<Connect>`` call each,
   as ``bench/arousal_accuracy.py`` makes them) and of the seven AMI calls (two tracks, as
   ``fixtures/real_calls.py`` builds them), μ-law at 8 kHz through ``CallSession``; Praat is
   given the session's own audio of the turn.

   * **Pitch, frame by frame** (``features.pitch_track`` on the turn's audio and speech mask,
     against Praat's ``To Pitch`` at a 10 ms step read at the centre of each 20 ms frame, over
     the speech frames): voicing disagreement (frames one calls voiced and the other not), the
     frames only the bridge voices and how many of those lie at 280-320 Hz (the telephone
     band's lower edge, where breath and line noise ring), and gross errors (> 20 %, where both
     voice a frame). Beside this release, the anchor ``f0_range_db`` = ∞ (no F0 level gate,
     the release before), in the same run. Then turn medians more than 3 semitones from
     Praat's (records' ``pitch.median_hz``), and on the AMI turns the medians outside a
     generous range for the speaker's labelled sex (``PLAUSIBLE_HZ``; AMI speaker ids begin
     with M or F).
   * **Voice quality per turn** (the records' ``voice`` fields): each side's median,
     Spearman's ρ and Pearson's r across turns, median difference; ``To Harmonicity (cc)`` at
     10 ms, 0.1 silence threshold, 1 period per window, ``Get mean`` for HNR; the records'
     pitch range (10th-90th percentile) against Praat's quantiles of the same.

3. **Octave evidence** (``octave_report``): on the same real turns, the voiced runs Praat reads
   an octave lower than the bridge against the runs the two agree on, by ``1 - r`` at twice the
   bridge's period over ``1 - r`` at it (what ``_octave_down`` weighs), per run and per frame,
   and how many of each a per-run threshold on it would fold. Then the spectrum's evidence
   (``half_harmonic_db``): a pick an octave up (the bridge at 2 F0) leaves the voice's odd
   harmonics at the odd multiples of half the bridge's F0, so the power there, against the
   power at the multiples of it, reads near 0 dB for such a pick and far under it for a true
   one. Beside the real runs, the same measure on synthetic harmonic complexes through the
   phone line read at their F0 and at twice it, as anchors.

Praat is a reference, not the truth: at 8 kHz through a phone band its own picks have errors
(on the synthetic trains it reads jitter low and shimmer high). No assertions.

Run: ``.venv/bin/python bench/praat_reference.py`` (~10 s)
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

from _vad_scoring import mask_to_spans  # noqa: E402
from arousal_accuracy import DATA, connect_call, load, spearman, through_bridge  # noqa: E402
from pitch_accuracy import phone_line  # noqa: E402

from fixtures import signals  # noqa: E402
from mise_twilio.core.audio import FRAME_SAMPLES, SAMPLE_RATE_HZ  # noqa: E402
from mise_twilio.core.features import (  # noqa: E402
    FeatureParams,
    measure_turn,
    pitch_track,
)
from mise_twilio.core.records import TurnRecord  # noqa: E402

F0_MIN_HZ, F0_MAX_HZ = 60.0, 400.0
"""This project's F0 search range (``FeatureParams``), given to Praat too."""
PARAMS = {"this release": FeatureParams(), "f0_range_db = inf": FeatureParams(f0_range_db=math.inf)}
VOICE_MEASURES = ("jitter_local_pct", "shimmer_local_db", "hnr_db", "pitch_range_semitones")
BAND_EDGE_HZ = (280.0, 320.0)
GROSS = 0.2
"""A frame's F0 is a gross error when more than 20 % from Praat's."""


@dataclass(frozen=True)
class Turn:
    source: str
    """``emotion`` or ``ami``."""
    record: TurnRecord
    pcm: NDArray[np.int16]
    mask: NDArray[np.bool_]
    praat_track: NDArray[np.float64]
    """Praat's F0 at each 20 ms frame's centre, Hz, NaN where unvoiced."""
    praat: dict[str, float | None]
    sex: str | None = None
    """AMI turns: ``M`` or ``F``, the first letter of the AMI speaker id of the turn's speaker
    (the track's speaker; on the agent track, the labelled speaker talking longest in it)."""


def praat_measures(pcm: NDArray[np.int16]) -> tuple[NDArray[np.float64], dict[str, float | None]]:
    """Praat's F0 at the centre of each whole 20 ms frame of 8 kHz int16 samples (Hz, NaN
    unvoiced), and its jitter (local, %), shimmer (local, dB), mean cc HNR (dB), median F0 (Hz)
    and 10-90 % F0 range (semitones); ``None`` where Praat gives none."""
    import parselmouth
    from parselmouth.praat import call

    sound = parselmouth.Sound(pcm.astype(np.float64) / 32768.0, sampling_frequency=8000.0)
    pitch = call(sound, "To Pitch", 0.01, F0_MIN_HZ, F0_MAX_HZ)
    track = np.asarray(
        [pitch.get_value_at_time((j + 0.5) * 0.02) for j in range(pcm.shape[0] // 160)],
        dtype=np.float64,
    )
    pulses = call(sound, "To PointProcess (periodic, cc)", F0_MIN_HZ, F0_MAX_HZ)
    jitter = call(pulses, "Get jitter (local)", 0.0, 0.0, 0.0001, 0.02, 1.3)
    shimmer = call([sound, pulses], "Get shimmer (local_dB)", 0.0, 0.0, 0.0001, 0.02, 1.3, 1.6)
    harmonicity = call(sound, "To Harmonicity (cc)", 0.01, F0_MIN_HZ, 0.1, 1.0)
    p10 = call(pitch, "Get quantile", 0.0, 0.0, 0.1, "semitones re 1 Hz")
    p90 = call(pitch, "Get quantile", 0.0, 0.0, 0.9, "semitones re 1 Hz")

    def value(v: float | None, scale: float = 1.0) -> float | None:
        return None if v is None or not math.isfinite(v) else float(v) * scale

    return track, {
        "jitter_local_pct": value(jitter, 100.0),
        "shimmer_local_db": value(shimmer),
        "hnr_db": value(call(harmonicity, "Get mean", 0.0, 0.0)),
        "f0_median_hz": value(call(pitch, "Get quantile", 0.0, 0.0, 0.5, "Hertz")),
        "pitch_range_semitones": value(p90 - p10),
    }


def real_turns(source: str, calls: list[list[str]], names: list[str] | None = None) -> list[Turn]:
    """The turns of ``calls``; ``names``: the AMI file of each call, for the speaker's sex."""
    from fixtures.real_calls import load_regions

    regions = load_regions() if names is not None else {}
    out = []
    for i, lines in enumerate(calls):
        for turn in through_bridge(lines):
            record, pcm, mask = turn.record, turn.pcm, turn.mask
            track, praat = praat_measures(pcm)
            sex = None if names is None else speaker_of(regions[names[i]], record)[0]
            out.append(Turn(source, record, pcm, mask, track, praat, sex))
    return out


def speaker_of(regions: dict[str, list[tuple[int, int]]], record: TurnRecord) -> str:
    """The AMI speaker id of a turn of ``fixtures/real_calls.py``'s call of a file whose
    speakers' regions are ``regions``: the caller on the inbound track, else the other speaker
    labelled longest inside the turn."""
    from fixtures.real_calls import LEAD_IN_MS, caller_of

    caller = caller_of(regions)
    if record.track == "inbound":
        return caller
    s, e = record.start_ms - LEAD_IN_MS, record.end_ms - LEAD_IN_MS
    inside = {
        spk: sum(max(0, min(e, b) - max(s, a)) for a, b in r)
        for spk, r in sorted(regions.items())
        if spk != caller
    }
    return max(inside, key=lambda k: inside[k])


PLAUSIBLE_HZ = {"M": (70.0, 200.0), "F": (130.0, 320.0)}
"""Generous ranges of a man's and a woman's median F0 in conversation (typical medians are
about 85-180 and 165-255 Hz): a turn median outside is most likely an octave error."""


def bridge_value(record: TurnRecord, name: str) -> float | None:
    if name == "pitch_range_semitones":
        return record.prosody.pitch_range_semitones if record.prosody else None
    value: float | None = getattr(record.voice, name) if record.voice else None
    return value


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
            praat = praat_measures(pcm)[1]
            jitter = (
                f"{signals.expected_jitter_pct(times):5.2f}: {_num(ours.jitter_local_pct)}"
                f" / {_num(praat['jitter_local_pct'])}"
            )
            shimmer = (
                f"{signals.expected_shimmer_db(amps):5.2f}: {_num(ours.shimmer_local_db)}"
                f" / {_num(praat['shimmer_local_db'])}"
            )
            print(f"  {f0:>6.0f}  {jitter:<26}{shimmer:<26}")
    print()


def _num(v: float | None) -> str:
    return "  -  " if v is None else f"{v:5.2f}"


def pitch_report(title: str, turns: list[Turn]) -> None:
    frames_in_speech = sum(int(t.mask.sum()) for t in turns)
    print(f"pitch, {title} ({len(turns)} turns, {frames_in_speech} speech frames)")
    print(
        f"  {'':<20}{'voicing differs':>16}{'bridge only':>13}{'of them 280-320 Hz':>20}"
        f"{'gross (both voiced)':>21}{'turn median > 3 st':>20}"
    )
    for label, params in PARAMS.items():
        frames = differs = only = edge = both = gross = 0
        far = medians = 0
        for t in turns:
            ours = pitch_track(t.pcm, t.mask, params=params)[t.mask]
            praat = t.praat_track[t.mask]
            ov, pv = ~np.isnan(ours), ~np.isnan(praat)
            frames += ours.shape[0]
            differs += int(np.count_nonzero(ov != pv))
            alone = ours[ov & ~pv]
            only += alone.shape[0]
            edge += int(np.count_nonzero((alone >= BAND_EDGE_HZ[0]) & (alone <= BAND_EDGE_HZ[1])))
            b = ov & pv
            both += int(np.count_nonzero(b))
            gross += int(np.count_nonzero(np.abs(ours[b] / praat[b] - 1.0) > GROSS))
            median_hz = measure_turn(t.pcm, t.mask, params=params).pitch.median_hz
            praat_median = t.praat["f0_median_hz"]
            if median_hz is not None and praat_median is not None:
                medians += 1
                far += abs(12.0 * math.log2(median_hz / praat_median)) > 3.0
        print(
            f"  {label:<20}{differs / frames:>16.1%}{only:>13}{edge:>20}"
            f"{f'{gross / both:.1%} of {both}':>21}{f'{far} of {medians}':>20}"
        )
    labelled = [t for t in turns if t.sex in PLAUSIBLE_HZ]
    if labelled:
        bridge = [(t.sex, t.record.pitch.median_hz if t.record.pitch else None) for t in labelled]
        praat_medians = [(t.sex, t.praat["f0_median_hz"]) for t in labelled]
        print(
            "  turn medians outside the labelled sex's range (men 70-200 Hz, women 130-320 Hz):"
            f" bridge {_implausible(bridge)}, Praat {_implausible(praat_medians)}"
        )


def _implausible(medians: list[tuple[str | None, float | None]]) -> str:
    known = [(sex, f) for sex, f in medians if sex is not None and f is not None]
    outside = sum(not PLAUSIBLE_HZ[sex][0] <= f <= PLAUSIBLE_HZ[sex][1] for sex, f in known)
    return f"{outside} of {len(known)}"


def voice_report(title: str, turns: list[Turn]) -> None:
    print(f"voice quality, {title} ({len(turns)} turns)")
    print(
        f"  {'measure':<23}{'turns':>6}{'bridge':>9}{'Praat':>9}{'rho':>8}{'r':>8}"
        f"{'median diff':>13}{'median |diff|':>15}"
    )
    for name in VOICE_MEASURES:
        pairs = [(bridge_value(t.record, name), t.praat[name]) for t in turns]
        both = [(b, p) for b, p in pairs if b is not None and p is not None]
        if len(both) < 3:
            print(f"  {name:<23}{len(both):>6}   (too few)")
            continue
        ours = np.asarray([b for b, _ in both])
        praat = np.asarray([p for _, p in both])
        diff = ours - praat
        print(
            f"  {name:<23}{len(both):>6}{float(np.median(ours)):>9.3f}"
            f"{float(np.median(praat)):>9.3f}{spearman(ours, praat):>+8.3f}"
            f"{pearson(ours, praat):>+8.3f}"
            f"{float(np.median(diff)):>+13.3f}{float(np.median(np.abs(diff))):>15.3f}"
        )


YIN_FRAME = (
    round(PARAMS["this release"].yin_window_ms * SAMPLE_RATE_HZ / 1000.0)
    + math.ceil(SAMPLE_RATE_HZ / PARAMS["this release"].f0_min_hz)
    + 1
)
"""Samples YIN compares per pitch frame at 8 kHz: ``FeatureParams``' integration window, the
longest lag (1 / ``f0_min_hz``) and one (375 with the defaults)."""
OCTAVE_BAND_ST = (9.0, 15.0)
"""A voiced run Praat reads an octave lower: the median of 12 log2(bridge / Praat) over its
frames both voice lies in this band (semitones); runs within 3 semitones agree."""
FOLD_AT = (1.0, 1.2, 1.4)
"""Per-run thresholds tried: a run whose ratio is under one would be folded an octave down."""
SPECTRUM_FRAME = 400
"""Samples per ``half_harmonic_db`` frame: 50 ms (a Hann main lobe of ±40 Hz, under half the
spacing of half-harmonics above 160 Hz), centred on the pitch frame's centre."""
SPECTRUM_NFFT = 2048
PEAK_TOLERANCE = 0.06
"""A harmonic's power is the largest bin within ±6 % of its frequency (F0 moves in 50 ms)."""
ANCHOR_F0_HZ = (120.0, 180.0, 240.0)
"""The synthetic anchors' F0 (``fixtures.signals.harmonic_complex`` through the phone line)."""


def repeat_gap(x: NDArray[np.float64], lag: float) -> float:
    """``1 - r`` of a frame with itself ``lag`` samples later: ``1 - 2 sum x_i x_(i+lag) /
    (E_head + E_tail)``, YIN's normalised difference (what ``_octave_down`` compares), linearly
    interpolated between integer lags."""

    def at(t: int) -> float:
        head, tail = x[: x.shape[0] - t], x[t:]
        energy = float(np.dot(head, head) + np.dot(tail, tail))
        return 1.0 - 2.0 * float(np.dot(head, tail)) / energy if energy > 0.0 else 1.0

    lo = math.floor(lag)
    frac = lag - lo
    return at(lo) if frac == 0.0 else (1.0 - frac) * at(lo) + frac * at(lo + 1)


def octave_report(turns: list[Turn]) -> None:
    """Whether the evidence ``_octave_down`` weighs separates the voiced runs Praat reads an
    octave lower from the runs the two agree on: per frame the bridge voices, q(T) = ``1 - r``
    at the bridge's period T and q(2T) the least of it at 2T and 2T ± 0.5; per run the ratio of
    their sums, per frame their own ratio. A low ratio means the frame repeats about as well
    after 2T as after T, as an octave-up pick does."""
    runs: dict[str, list[float]] = {"octave lower": [], "agree": []}
    frames: dict[str, list[float]] = {"octave lower": [], "agree": []}
    # Per run: the median of its frames' half_harmonic_db, and of its F0 (Hz).
    half_db: dict[str, list[tuple[float, float]]] = {"octave lower": [], "agree": []}
    for t in turns:
        ours = pitch_track(t.pcm, t.mask)
        hop = FRAME_SAMPLES
        x = np.zeros(ours.shape[0] * hop + YIN_FRAME, dtype=np.float64)
        left = YIN_FRAME // 2 - hop // 2  # pitch frame j centred on sample hop j + hop / 2
        x[left : left + t.pcm.shape[0]] = t.pcm
        for s, e in mask_to_spans(~np.isnan(ours)):
            both = [j for j in range(s, e) if not np.isnan(t.praat_track[j])]
            if not both:
                continue
            st = float(np.median([12.0 * math.log2(ours[j] / t.praat_track[j]) for j in both]))
            if OCTAVE_BAND_ST[0] <= st <= OCTAVE_BAND_ST[1]:
                kind = "octave lower"
            elif abs(st) < 3.0:
                kind = "agree"
            else:
                continue
            q1 = q2 = 0.0
            for j in range(s, e):
                frame = x[hop * j : hop * j + YIN_FRAME]
                period = SAMPLE_RATE_HZ / float(ours[j])
                a = repeat_gap(frame, period)
                b = min(repeat_gap(frame, 2.0 * period + d) for d in (-0.5, 0.0, 0.5))
                q1, q2 = q1 + a, q2 + b
                frames[kind].append(b / max(a, 1e-12))
            runs[kind].append(q2 / max(q1, 1e-12))
            spectra = spectrum_frames(t.pcm, s, e)
            ratios = [half_harmonic_db(p, float(ours[j])) for j, p in enumerate(spectra, s)]
            half_db[kind].append((float(np.median(ratios)), float(np.median(ours[s:e]))))
    print("octave evidence, q(2T) / q(T) over the voiced runs of all turns")
    folds = "".join(f"{'under ' + str(at):>10}" for at in FOLD_AT)
    print(
        f"  {'runs':<14}{'runs':>6}{'frames':>8}{'median':>8}{'p10':>7}{'frame median':>14}{folds}"
    )
    for kind in ("octave lower", "agree"):
        r = np.asarray(runs[kind])
        f = np.asarray(frames[kind])
        if r.shape[0] == 0:
            print(f"  {kind:<14}{0:>6}")
            continue
        under = "".join(f"{int(np.count_nonzero(r < at)):>10}" for at in FOLD_AT)
        print(
            f"  {kind:<14}{r.shape[0]:>6}{f.shape[0]:>8}{float(np.median(r)):>8.2f}"
            f"{float(np.quantile(r, 0.1)):>7.2f}{float(np.median(f)):>14.2f}{under}"
        )
    half_harmonic_report(half_db)


def half_harmonic_report(half_db: dict[str, list[tuple[float, float]]]) -> None:
    """``half_harmonic_db`` per run (the median over its frames), for the runs Praat reads an
    octave lower, the runs the two agree on, and those of them at 250 Hz or more (where the
    octave-lower runs lie), beside the synthetic anchors read at F0 and at 2 F0."""
    print("octave evidence in the spectrum, half_harmonic_db per voiced run (0 dB: octave up)")
    print(f"  {'runs':<24}{'runs':>6}{'median':>8}{'p10':>7}{'p90':>7}{'over -6 dB':>12}")
    groups = {
        "octave lower": [db for db, _ in half_db["octave lower"]],
        "agree": [db for db, _ in half_db["agree"]],
        "agree, F0 >= 250 Hz": [db for db, hz in half_db["agree"] if hz >= 250.0],
    }
    for name, values in groups.items():
        v = np.asarray(values)
        if v.shape[0] == 0:
            print(f"  {name:<24}{0:>6}")
            continue
        print(
            f"  {name:<24}{v.shape[0]:>6}{float(np.median(v)):>8.1f}"
            f"{float(np.quantile(v, 0.1)):>7.1f}{float(np.quantile(v, 0.9)):>7.1f}"
            f"{int(np.count_nonzero(v > -6.0)):>12}"
        )
    for f0_hz in ANCHOR_F0_HZ:
        pcm = phone_line(signals.harmonic_complex(f0_hz, 1.0))
        spectra = spectrum_frames(pcm, 5, pcm.shape[0] // FRAME_SAMPLES - 5)
        at_f0 = float(np.median([half_harmonic_db(p, f0_hz) for p in spectra]))
        at_2f0 = float(np.median([half_harmonic_db(p, 2.0 * f0_hz) for p in spectra]))
        print(
            f"  anchor: {f0_hz:.0f} Hz harmonic complex read at F0 {at_f0:+.1f} dB,"
            f" at 2 F0 {at_2f0:+.1f} dB"
        )


def spectrum_frames(pcm: NDArray[np.int16], start: int, end: int) -> NDArray[np.float64]:
    """Power spectra of pitch frames ``start..end - 1`` of ``pcm`` (8 kHz): each
    ``SPECTRUM_FRAME`` samples Hann-windowed, centred on the frame's centre (zeros past the
    turn), ``SPECTRUM_NFFT`` points; shape ``(end - start, SPECTRUM_NFFT // 2 + 1)``."""
    half = SPECTRUM_FRAME // 2
    x = np.zeros(pcm.shape[0] + 2 * SPECTRUM_FRAME)
    x[SPECTRUM_FRAME : SPECTRUM_FRAME + pcm.shape[0]] = pcm
    centres = np.arange(start, end) * FRAME_SAMPLES + FRAME_SAMPLES // 2 + SPECTRUM_FRAME
    frames = np.stack([x[c - half : c + half] for c in centres])
    power: NDArray[np.float64] = (
        np.abs(np.fft.rfft(frames * np.hanning(SPECTRUM_FRAME), SPECTRUM_NFFT, axis=1)) ** 2
    )
    return power


def half_harmonic_db(power: NDArray[np.float64], f0_hz: float) -> float:
    """10 log10 of the mean power at the odd multiples of ``f0_hz / 2`` over the mean power at
    the multiples of ``f0_hz``, both within the phone band (300-3400 Hz); each the largest bin
    within ±``PEAK_TOLERANCE`` of its frequency. ``power``: one row of ``spectrum_frames``.
    After Sun's subharmonic-to-harmonic ratio (Sun 2002, "Pitch determination and voice
    quality analysis using subharmonic-to-harmonic ratio", ICASSP), on linear power: a pitch
    read an octave up has the voice's odd harmonics at those half-harmonics (about 0 dB); a
    true pitch has only leakage and noise there."""
    bin_hz = SAMPLE_RATE_HZ / SPECTRUM_NFFT

    def peak(hz: float) -> float:
        lo = math.ceil(hz * (1.0 - PEAK_TOLERANCE) / bin_hz)
        hi = math.floor(hz * (1.0 + PEAK_TOLERANCE) / bin_hz)
        return float(power[lo : hi + 1].max())

    harmonics = [k * f0_hz for k in range(1, 40) if 300.0 <= k * f0_hz <= 3400.0]
    halves = [(k - 0.5) * f0_hz for k in range(1, 40) if 300.0 <= (k - 0.5) * f0_hz <= 3400.0]
    h = float(np.mean([peak(hz) for hz in harmonics]))
    s = float(np.mean([peak(hz) for hz in halves]))
    return 10.0 * math.log10(max(s, 1e-30) / max(h, 1e-30))


def pearson(a: NDArray[np.float64], b: NDArray[np.float64]) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float(np.dot(a, b) / math.sqrt(float(np.dot(a, a)) * float(np.dot(b, b))))


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
    emotion = real_turns("emotion", [connect_call(c) for c in load(DATA)])
    ami = real_turns("ami", [wire_lines(build_call(name, "clean")) for name in FILES], list(FILES))
    groups = (("all", emotion + ami), ("emotion clips", emotion), ("AMI calls", ami))
    for title, turns in groups:
        pitch_report(title, turns)
    print()
    for title, turns in groups:
        voice_report(title, turns)
    print()
    octave_report(emotion + ami)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
