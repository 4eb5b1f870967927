"""core/vad.py: band features, the state machine on constructed inputs, echo on real speech.

The state-machine tests use a one-input model (``z = snr_mean - BIAS_DB``: the logit is the
frame's mean band SNR minus a constant), so each case lands on one side of one rule. The echo
and double-talk tests use real conversational speech (AMI, ``../shared/real-speech``).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fixtures import real_calls as rc
from mise_twilio.core.audio import FRAME_SAMPLES, SAMPLE_RATE_HZ
from mise_twilio.core.vad import (
    BAND_EDGES_HZ,
    F_BANDS,
    F_LEVEL,
    F_PURITY,
    F_SILENT,
    FEATURE_NAMES,
    N_BANDS,
    N_FEATURES,
    TONE_PURITY,
    BandVad,
    VadModel,
    VadParams,
    _initial_floor,
    frame_features,
)

BIAS_DB = 8.25
"""With the one-input model: mean band SNR 8.5 dB gives z = 0.25, between stop (0) and start
(0.5): active, never loud."""


def one_input_model() -> VadModel:
    weights = tuple(1.0 if n == "snr_mean" else 0.0 for n in FEATURE_NAMES)
    zeros = tuple(0.0 for _ in FEATURE_NAMES)
    ones = tuple(1.0 for _ in FEATURE_NAMES)
    return VadModel(weights, -BIAS_DB, zeros, ones)


FLOOR = _initial_floor(VadParams().initial_noise_floor_dbfs)


def rows(snr_db: list[float], level_dbfs: float = -30.0) -> np.ndarray:
    """Feature rows with every band ``snr_db`` above the initial noise floor."""
    out = np.zeros((len(snr_db), N_FEATURES), dtype=np.float32)
    out[:, F_BANDS] = FLOOR[None, :] + np.asarray(snr_db, dtype=np.float64)[:, None]
    out[:, F_LEVEL] = level_dbfs
    return out


def run(snr_db: list[float], block: int = 5, **params: float) -> list[tuple[str, int]]:
    vad = BandVad(1, VadParams(**params), one_input_model())  # type: ignore[arg-type]
    feats = rows(snr_db)
    out: list[tuple[str, int]] = []
    for k in range(0, len(snr_db), block):
        out += [tr for _, tr, _ in vad.step_block(k, feats[None, k : k + block])]
    out += [tr for _, tr in vad.flush()]
    return out


# The line sits exactly at the initial floor (SNR 0): the floor does not move.
QUIET, BETWEEN, LOUD = 0.0, 8.5, 35.0


def test_frame_features_of_a_tone_and_of_silence() -> None:
    t = np.arange(FRAME_SAMPLES * 5) / SAMPLE_RATE_HZ
    tone = (10 ** (-20 / 20) * 32768 * np.sqrt(2) * np.sin(2 * np.pi * 1200 * t)).astype(np.int16)
    f = frame_features(tone.reshape(5, FRAME_SAMPLES))
    assert f.shape == (5, N_FEATURES) and f.dtype == np.float32
    band = next(b for b in range(N_BANDS) if BAND_EDGES_HZ[b] <= 1200 < BAND_EDGES_HZ[b + 1])
    assert np.all(np.argmax(f[:, F_BANDS], axis=1) == band)
    assert np.allclose(f[:, F_LEVEL], -20.0, atol=0.5)  # a -20 dBFS RMS tone reads -20 dBFS
    assert not f[:, F_SILENT].any()
    silent = frame_features(np.zeros((2, FRAME_SAMPLES), dtype=np.int16))
    assert silent[:, F_SILENT].all() and (silent[:, F_LEVEL] < -90).all()
    rumble = (3000 * np.sin(2 * np.pi * 80 * t)).astype(np.int16)  # under 200 Hz: not counted
    assert (frame_features(rumble.reshape(5, FRAME_SAMPLES))[:, F_LEVEL] < -45).all()


def test_a_score_between_the_stop_and_start_thresholds_never_starts_speech() -> None:
    assert run([QUIET] * 100 + [BETWEEN] * 100 + [QUIET] * 100) == []


def test_a_score_between_the_thresholds_sustains_speech_that_started() -> None:
    p = VadParams()
    transitions = run([QUIET] * 100 + [LOUD] * 10 + [BETWEEN] * 40 + [QUIET] * 100)
    assert transitions[0] == ("start", 100)
    # the end follows the last *active* frame (149), not the last loud one (109): hysteresis
    assert transitions[1] == ("end", 150 + p.post_roll_ms // 20)


def test_pre_roll_moves_the_start_back_over_soft_onset_frames() -> None:
    pre = VadParams().pre_roll_ms // 20
    assert pre >= 2
    onset = [QUIET] * 100 + [BETWEEN] * (pre + 2) + [LOUD] * 20 + [QUIET] * 100
    assert run(onset)[0] == ("start", 100 + 2)  # back by exactly the pre-roll, no further
    assert run([QUIET] * 100 + [BETWEEN] + [LOUD] * 20 + [QUIET] * 100)[0] == ("start", 100)
    assert run([QUIET] * 100 + [LOUD] * 20 + [QUIET] * 100)[0] == ("start", 100)


def test_clicks_shorter_than_the_confirmation_are_not_speech() -> None:
    levels = [QUIET] * 300
    for i in (50, 120, 121, 200):
        levels[i] = LOUD
    assert run(levels) == []


def _end_decided_at(snr: list[float]) -> int:
    vad = BandVad(1, VadParams(), one_input_model())
    return next(at for _, tr, at in vad.step_block(0, rows(snr)[None]) if tr[0] == "end")


def test_the_hangover_grows_on_a_noisy_line() -> None:
    p = VadParams()
    # the same speech run, once far above the floor and once at the low-SNR end of the ramp
    clean = [QUIET] * 100 + [LOUD] * 50 + [QUIET] * 100
    noisy = [QUIET] * 100 + [p.hangover_low_snr_db] * 50 + [QUIET] * 100
    assert run(clean)[1] == run(noisy)[1] == ("end", 150 + p.post_roll_ms // 20)
    assert _end_decided_at(clean) == 149 + p.hangover_ms // 20
    assert _end_decided_at(noisy) == 149 + p.hangover_low_snr_ms // 20


@settings(max_examples=40, deadline=None)
@given(
    snr=st.lists(st.sampled_from([QUIET, BETWEEN, LOUD, 15.0, 3.0]), min_size=1, max_size=400),
    block=st.integers(1, 7),
)
# a burst in the first sub-window: its floor once averaged the frames after the one decided
@example(snr=[QUIET, QUIET, 15.0, LOUD, LOUD], block=1)
# a pause ended by a hangover that once followed the peak at the end of each block
@example(
    snr=[QUIET, 15.0, 3.0, QUIET, BETWEEN]
    + [QUIET] * 4
    + [LOUD, BETWEEN, 15.0, 3.0]
    + [QUIET] * 3
    + [15.0, 3.0, QUIET, BETWEEN, QUIET]
    + [15.0] * 3
    + [QUIET, QUIET]
    + [BETWEEN, 3.0, BETWEEN, BETWEEN]
    + [QUIET] * 3
    + [LOUD]
    + [QUIET] * 13,
    block=1,
)
def test_decisions_do_not_depend_on_the_block_size(snr: list[float], block: int) -> None:
    assert run(snr, block=block) == run(snr, block=5)


def test_digital_silence_never_moves_the_noise_floor() -> None:
    vad = BandVad(1, VadParams())
    silent = frame_features(np.zeros((5, FRAME_SAMPLES), dtype=np.int16))[None]
    for k in range(0, 600, 5):
        vad.step_block(k, silent)
    assert np.allclose(vad.noise_floor_db(0), FLOOR)


def test_frames_must_come_without_gaps() -> None:
    vad = BandVad(1, VadParams(), one_input_model())
    vad.step_block(0, rows([QUIET] * 5)[None])
    with pytest.raises(ValueError):
        vad.step_block(7, rows([QUIET] * 5)[None])


def test_parameters_are_validated() -> None:
    with pytest.raises(ValueError):
        VadParams(start_logit=0.0, stop_logit=0.5)
    with pytest.raises(ValueError):
        VadParams(hangover_ms=5)
    with pytest.raises(ValueError):
        VadParams(hangover_low_snr_ms=100)
    with pytest.raises(ValueError):
        BandVad(3)


# -- echo and double-talk on real speech ---------------------------------------------------


def _two_track(agent: np.ndarray, caller: np.ndarray) -> list[list[tuple[str, int]]]:
    n = min(agent.size, caller.size) // FRAME_SAMPLES
    pcm = np.stack([rc.ulaw_roundtrip(x[: n * FRAME_SAMPLES]) for x in (caller, agent)])
    pcm = pcm.reshape(2, n, FRAME_SAMPLES)
    vad = BandVad(2)
    out: list[list[tuple[str, int]]] = [[], []]
    for k in range(0, n, 5):
        m = min(5, n - k)
        f = frame_features(pcm[:, k : k + m].reshape(2 * m, FRAME_SAMPLES)).reshape(2, m, -1)
        for ti, tr, _ in vad.step_block(k, f):
            out[ti].append(tr)
    for ti, tr in vad.flush():
        out[ti].append(tr)
    return out


def _line_noise(n: int, seed: str) -> np.ndarray:
    rng = np.random.default_rng(rc.seed_of("test_vad", seed))
    return rc.pink(n, rng) * rc.dbfs_to_amp(rc.LINE_NOISE_DBFS)


@pytest.mark.parametrize("delay_ms", [0, 40])
@pytest.mark.parametrize("name", ["trn04", "trn08"])
def test_a_minus_24_db_echo_of_the_other_track_opens_no_speech(name: str, delay_ms: int) -> None:
    agent = rc.load_file(name)
    agent = agent + _line_noise(agent.size, name + "a")
    echo = np.zeros_like(agent)
    d = delay_ms * 8
    echo[d:] = agent[: agent.size - d] * 10 ** (-24 / 20)
    caller = _line_noise(agent.size, name + "c") + echo
    caller_transitions, agent_transitions = _two_track(agent, caller)
    assert [t for t in caller_transitions if t[0] == "start"] == []
    assert any(t[0] == "start" for t in agent_transitions)  # the agent itself is speech


def test_double_talk_at_equal_level_is_speech_on_both_tracks() -> None:
    a, b = rc.load_file("trn04"), rc.load_file("trn07")
    regions = rc.load_regions()
    ta = rc.merge_spans(r for rr in regions["trn04"].values() for r in rr)
    tb = rc.merge_spans(r for rr in regions["trn07"].values() for r in rr)
    b = b * (rc.active_rms(a, ta) / rc.active_rms(b, tb))
    n = min(a.size, b.size)
    caller = a[:n] + _line_noise(n, "dt-a")
    agent = b[:n] + _line_noise(n, "dt-b")
    caller_transitions, agent_transitions = _two_track(agent, caller)
    n_frames = n // FRAME_SAMPLES

    def frames_of(spans: list[tuple[int, int]]) -> np.ndarray:
        # a frame is labelled speech when its midpoint is inside a labelled span (ms)
        mid_ms = np.arange(n_frames) * 20 + 10
        return np.asarray([any(s <= m < e for s, e in spans) for m in mid_ms])

    both = frames_of(ta) & frames_of(tb)  # frames where both talk

    def recall(transitions: list[tuple[str, int]]) -> float:
        on = np.zeros(n_frames, dtype=bool)
        start = None
        for kind, frame in transitions:
            if kind == "start":
                start = frame
            elif start is not None:
                on[start:frame] = True
                start = None
        return float((on & both).sum() / both.sum())

    assert both.sum() > 100
    assert recall(caller_transitions) > 0.85 and recall(agent_transitions) > 0.85


def test_a_pure_tone_is_speech_and_dtmf_or_a_voice_is_not_a_tone() -> None:
    from fixtures import signals

    t = np.arange(FRAME_SAMPLES * 20) / SAMPLE_RATE_HZ

    def purity(x: np.ndarray) -> np.ndarray:
        pcm = np.clip(x * 32768 * 0.1, -32768, 32767).astype(np.int16)
        return frame_features(pcm[: 20 * FRAME_SAMPLES].reshape(20, FRAME_SAMPLES))[:, F_PURITY]

    assert (purity(np.sin(2 * np.pi * 1000 * t)) > TONE_PURITY).all()
    assert (purity(np.sin(2 * np.pi * 440 * t)) > TONE_PURITY).all()
    dtmf = np.sin(2 * np.pi * 770 * t) + np.sin(2 * np.pi * 1336 * t)  # digit 5, no twist
    assert (purity(dtmf) < TONE_PURITY).all()
    voice = signals.harmonic_complex(180.0, 0.4, sample_rate_hz=SAMPLE_RATE_HZ)
    assert (purity(voice / np.max(np.abs(voice))) < TONE_PURITY).all()
    # a beep over line noise opens speech even though the model alone would not call it speech
    noise = np.random.default_rng(0).normal(0, 32768 * 10 ** (-60 / 20), 160 * 150)
    beep = noise.copy()
    beep[160 * 50 : 160 * 70] += 32768 * 0.2 * np.sin(2 * np.pi * 1000 * np.arange(3200) / 8000)
    pcm = np.clip(beep, -32768, 32767).astype(np.int16).reshape(150, FRAME_SAMPLES)
    vad = BandVad(1)
    out = [
        tr
        for k in range(0, 150, 5)
        for _, tr, _ in vad.step_block(k, frame_features(pcm[k : k + 5])[None])
    ]
    assert out and out[0][0] == "start" and 48 <= out[0][1] <= 51


def test_purity_is_computed_wherever_a_frame_could_be_a_tone() -> None:
    """``frame_features`` skips the purity of frames whose power is spread over more than two
    adjacent bands; on real speech, noise, DTMF and tones (swept over 400-2000 Hz, on and off
    bin centres, at several levels, over noise) no skipped frame reaches ``TONE_PURITY``."""
    from mise_twilio.core import vad as vad_module

    rng = np.random.default_rng(7)
    t = np.arange(FRAME_SAMPLES * 4) / SAMPLE_RATE_HZ
    signals_pcm = [rc.load_file(name)[: 8000 * 20] for name in rc.FILES]  # 140 s of speech
    signals_pcm.append(rng.normal(0, 3000, 8000 * 5))
    for hz in np.arange(380.0, 2020.0, 7.0):
        for level_db, noise_db in ((-6, -90), (-30, -60), (-20, -45)):
            x = 32768 * 10 ** (level_db / 20) * np.sin(2 * np.pi * hz * t + rng.uniform(0, 6))
            signals_pcm.append(x + rng.normal(0, 32768 * 10 ** (noise_db / 20), x.shape[0]))
    for low, high in ((697, 1209), (770, 1336), (852, 1477), (941, 1633)):
        signals_pcm.append(8000 * (np.sin(2 * np.pi * low * t) + np.sin(2 * np.pi * high * t)))
    pcm = np.concatenate(
        [
            np.clip(x[: x.shape[0] // FRAME_SAMPLES * FRAME_SAMPLES], -32768, 32767)
            .astype(np.int16)
            .reshape(-1, FRAME_SAMPLES)
            for x in signals_pcm
        ]
    )
    got = frame_features(pcm)[:, F_PURITY]
    y = pcm.astype(np.float32) @ vad_module._DFT
    exact = vad_module._purity(y * y)
    computed = got > 0
    assert (got[computed] == exact[computed]).all()
    assert exact[~computed].max() < TONE_PURITY
    assert ((exact >= TONE_PURITY) == (got >= TONE_PURITY)).all()
    assert (exact >= TONE_PURITY).sum() > 1000  # the tones are there
