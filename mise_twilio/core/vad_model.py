"""The VAD model (``vad.VadModel``), written by ``bench/fit_vad.py``: do not edit by hand.

Fitted on the AMI real speech in ../shared/real-speech/ami/ (trn03-trn09, CC BY 4.0, Carletta et
al. 2005) built into two-track calls by fixtures/real_calls.py under the conditions clean,
white20, white10, white5, pink20, pink10, pink5, babble10, rumble, bleed, loss3; L2 logistic
regression on standardised inputs (vad.FEATURE_NAMES: snr_b0, snr_b1, snr_b2, snr_b3, snr_b4,
snr_b5, snr_mean, snr_mean3, snr_mean5, snr_mean10, snr_mean20, ltsd10, active10, level; left
out: level, snr_mean3, snr_mean5, snr_mean10). Hysteresis chosen with the weights:
start_logit=0.5, stop_logit=-0.5.

Leave-one-file-out CV, pooled over the held-out files:

- clean: frame F1 / onset F1 [0.987, 0.979]
- white20: frame F1 / onset F1 [0.956, 0.9]
- white10: frame F1 / onset F1 [0.908, 0.679]
- white5: frame F1 / onset F1 [0.832, 0.432]
- pink20: frame F1 / onset F1 [0.956, 0.9]
- pink10: frame F1 / onset F1 [0.874, 0.509]
- pink5: frame F1 / onset F1 [0.769, 0.336]
- babble10: frame F1 / onset F1 [0.614, 0.062]
- rumble: frame F1 / onset F1 [0.919, 0.66]
- bleed: frame F1 / onset F1 [0.952, 0.857]
- loss3: frame F1 / onset F1 [0.986, 0.979]
"""

WEIGHTS = (
    1.05963,
    0.257979,
    -0.35293,
    -0.564507,
    -0.178314,
    -0.261523,
    0.0576155,
    0,
    0,
    0,
    0.185699,
    0.985995,
    0.868183,
    0,
)
BIAS = -0.131875
MEAN = (
    8.50629,
    8.31693,
    6.59426,
    5.04861,
    4.94112,
    4.22821,
    6.27257,
    0,
    0,
    0,
    6.18326,
    11.4841,
    0.347829,
    0,
)
SCALE = (
    9.66192,
    10.1922,
    8.61207,
    7.26607,
    7.41712,
    6.84024,
    7.56373,
    1e-06,
    1e-06,
    1e-06,
    6.28791,
    9.40725,
    0.407258,
    1e-06,
)
START_LOGIT = 0.5
STOP_LOGIT = -0.5
