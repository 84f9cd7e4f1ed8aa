"""Losses: pure TensorFlow functions returning per-utterance values (no gin, no models)."""

from tfkd.losses.rnnt import check_rnnt_inputs, rnnt_log_prob, rnnt_loss

__all__ = ["check_rnnt_inputs", "rnnt_log_prob", "rnnt_loss"]

# Distillation losses (METHODS.md §2–§5).
from tfkd.losses.distillation import (  # noqa: E402
    discriminative_fullsum_loss,
    fullsum_distillation_loss,
    hard_distillation_loss,
    soft_distillation_loss,
)

__all__ += [
    "discriminative_fullsum_loss",
    "fullsum_distillation_loss",
    "hard_distillation_loss",
    "soft_distillation_loss",
]
