"""Learning-rate schedules."""

from __future__ import annotations

import math

import keras
import tensorflow as tf

DECAY_KINDS = ("rsqrt", "cosine", "constant")


class WarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to a peak, then decay.

    - steps `[0, warmup_steps)`: `peak * (step + 1) / warmup_steps`, so step 0 is not a zero step;
    - then `decay="rsqrt"`: `peak * sqrt(warmup_steps / step)` (the Transformer/Conformer recipe);
    - or `decay="cosine"`: from `peak` at `warmup_steps` to `final_learning_rate` at `decay_steps`,
      constant after;
    - or `decay="constant"`: `peak`.
    All decays are floored at `final_learning_rate`.
    """

    def __init__(
        self,
        peak_learning_rate: float = 1e-3,
        warmup_steps: int = 1000,
        decay: str = "rsqrt",
        decay_steps: int = 100_000,
        final_learning_rate: float = 0.0,
    ):
        if decay not in DECAY_KINDS:
            raise ValueError(f"unknown decay {decay!r}; expected one of {DECAY_KINDS}")
        if warmup_steps < 0 or (decay == "cosine" and decay_steps <= warmup_steps):
            raise ValueError(
                f"need 0 <= warmup_steps (got {warmup_steps}) and, for cosine, "
                f"decay_steps > warmup_steps (got {decay_steps})"
            )
        self.peak_learning_rate = float(peak_learning_rate)
        self.warmup_steps = int(warmup_steps)
        self.decay = decay
        self.decay_steps = int(decay_steps)
        self.final_learning_rate = float(final_learning_rate)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        peak = self.peak_learning_rate
        warmup = float(max(self.warmup_steps, 1))
        warm = peak * tf.minimum(1.0, (step + 1.0) / warmup)
        if self.decay == "rsqrt":
            decayed = peak * tf.math.rsqrt(tf.maximum(step, warmup) / warmup)
        elif self.decay == "cosine":
            span = float(self.decay_steps - self.warmup_steps)
            progress = tf.clip_by_value((step - self.warmup_steps) / span, 0.0, 1.0)
            cosine = 0.5 * (1.0 + tf.cos(math.pi * progress))
            decayed = self.final_learning_rate + (peak - self.final_learning_rate) * cosine
        else:
            decayed = tf.constant(peak)
        decayed = tf.maximum(decayed, self.final_learning_rate)
        return tf.where(step < self.warmup_steps, warm, decayed)

    def get_config(self):
        return {
            "peak_learning_rate": self.peak_learning_rate,
            "warmup_steps": self.warmup_steps,
            "decay": self.decay,
            "decay_steps": self.decay_steps,
            "final_learning_rate": self.final_learning_rate,
        }
