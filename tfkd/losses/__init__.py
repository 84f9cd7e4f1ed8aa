"""Losses: pure TensorFlow functions returning per-utterance values (no gin, no models)."""

from tfkd.losses.ctc import check_ctc_inputs, ctc_feasible, ctc_loss
from tfkd.losses.prefix_rows import PrefixRows, nbest_prefix_rows
from tfkd.losses.rnnt import check_rnnt_inputs, rnnt_log_prob, rnnt_loss
from tfkd.losses.rnnt_chunked import rnnt_log_prob_from_joint, rnnt_loss_from_joint
from tfkd.losses.rnnt_nbest import rnnt_nbest_log_prob, rnnt_nbest_log_prob_from_joint

__all__ = [
    "PrefixRows",
    "check_ctc_inputs",
    "check_rnnt_inputs",
    "ctc_feasible",
    "ctc_loss",
    "nbest_prefix_rows",
    "rnnt_log_prob",
    "rnnt_log_prob_from_joint",
    "rnnt_loss",
    "rnnt_loss_from_joint",
    "rnnt_nbest_log_prob",
    "rnnt_nbest_log_prob_from_joint",
]

# Distillation losses (METHODS.md §2–§5).
from tfkd.losses.distillation import (  # noqa: E402
    COLLAPSED_CLASSES,
    collapsed_lattice,
    collapsed_soft_distillation_loss,
    discriminative_fullsum_loss,
    fullsum_distillation_loss,
    hard_distillation_loss,
    soft_distillation_loss,
)

__all__ += [
    "COLLAPSED_CLASSES",
    "collapsed_lattice",
    "collapsed_soft_distillation_loss",
    "discriminative_fullsum_loss",
    "fullsum_distillation_loss",
    "hard_distillation_loss",
    "soft_distillation_loss",
]
