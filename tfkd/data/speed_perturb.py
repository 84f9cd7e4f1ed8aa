"""On-the-fly speed perturbation of training audio (Kaldi-style: tempo and pitch change together).

An utterance played `factor` times faster is the waveform resampled at positions
`0, factor, 2·factor, ...` by linear interpolation: `factor = 1.1` is 10 % shorter and 10 % higher.
The transcript is unchanged, so it is a supervised-training augmentation only: stored teacher
scores and soft targets describe the unperturbed audio (`make_dataset` refuses the combination).

No anti-aliasing filter: at the factors used (0.9–1.1) speeding up folds only the band above
~7.3 kHz, where the 80-bin log-mel features of 16 kHz audio have little energy.
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf


def check_factors(factors: Sequence[float]) -> tuple[float, ...]:
    """Returns `factors` as a tuple of floats; raises ValueError unless all are in [0.5, 2]."""
    out = tuple(float(f) for f in factors)
    if not out:
        raise ValueError("speed_factors is empty: give e.g. (0.9, 1.0, 1.1), or None for none")
    bad = [f for f in out if not 0.5 <= f <= 2.0]
    if bad:
        raise ValueError(f"speed factors must lie in [0.5, 2], got {bad}")
    return out


def change_speed(waveform: tf.Tensor, num_samples: tf.Tensor, factor: tf.Tensor):
    """Plays one utterance `factor` times faster.

    Args:
        waveform: float32 `[N]`, of which the first `num_samples` are real.
        num_samples: int32 scalar, >= 1.
        factor: float scalar > 0.

    Returns:
        `(waveform float32 [N'], num_samples int32)` with `N' = floor((num_samples − 1) / factor)
        + 1`: the first and every `factor`-th position of the original, linearly interpolated.
    """
    n = tf.cast(num_samples, tf.int32)
    step = tf.cast(factor, tf.float64)
    new_n = tf.cast(tf.math.floor(tf.cast(n - 1, tf.float64) / step), tf.int32) + 1
    # Positions in float64: float32 would lose the fraction beyond ~2^24 / 16 kHz = 17 min.
    pos = tf.cast(tf.range(new_n), tf.float64) * step
    lo = tf.cast(tf.floor(pos), tf.int32)
    hi = tf.minimum(lo + 1, n - 1)
    frac = tf.cast(pos - tf.floor(pos), tf.float32)
    out = tf.gather(waveform, lo) * (1.0 - frac) + tf.gather(waveform, hi) * frac
    return out, new_n


def perturb_dataset(ds: tf.data.Dataset, factors: Sequence[float], seed: int | None):
    """Maps `ds` (unbatched examples with `waveform` and `num_samples`) to a speed drawn
    uniformly from `factors` per utterance, reproducibly for a given `seed`."""
    table = tf.constant(check_factors(factors), tf.float32)
    draws = tf.data.Dataset.random(seed=seed)

    def apply(ex, draw):
        factor = tf.gather(table, tf.math.floormod(draw, tf.size(table, out_type=tf.int64)))
        ex = dict(ex)
        ex["waveform"], ex["num_samples"] = change_speed(ex["waveform"], ex["num_samples"], factor)
        return ex

    return tf.data.Dataset.zip((ds, draws)).map(apply, num_parallel_calls=tf.data.AUTOTUNE)
