"""Losses: pure TensorFlow functions returning per-utterance values (no gin, no models)."""

from tfkd.losses.rnnt import check_rnnt_inputs, rnnt_log_prob, rnnt_loss

__all__ = ["check_rnnt_inputs", "rnnt_log_prob", "rnnt_loss"]
