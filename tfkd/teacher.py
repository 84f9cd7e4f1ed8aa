"""A distillation teacher's outputs: one module for offline pseudo-labelling and online teachers.

A frozen teacher `Transducer` runs with `training=False`: its encoder pass (`encode`), its beam
N-best with **full-sum** scores `log P_T(y_n|x)` (METHODS.md §4; not the beam score, which sums
only the alignments the beam kept), and its lattice over a label sequence for soft distillation
(§3): the logits `[B, T, U+1, V]` (`lattice_logits`, online soft students) or their collapsed
log-probs `[B, T, U+1, 3]` (`soft_targets`, stored by `bin/pseudo_label --soft_targets`).

`tfkd.pseudo_label` writes these into records; `tfkd.training.distillation` computes them per
batch for an online teacher (`nbest_fields`, the pipeline's N-best fields). Everything is pure
TensorFlow on one replica's batch; callers wrap it in their `tf.function`s.
"""

from __future__ import annotations

import tensorflow as tf

from tfkd import decoding, losses
from tfkd.data import pipeline


def encode(teacher, frontend, waveform, num_samples):
    """`(enc [B, T, D], enc_lengths int32 [B])`: one teacher encoder pass over a waveform batch
    (`waveform [B, S]`, `num_samples [B]`) through `frontend`."""
    feats, lengths = frontend(waveform, num_samples)
    enc, enc_lengths = teacher.encode(feats, lengths, training=False)
    return enc, tf.cast(enc_lengths, tf.int32)


def beam_nbest(teacher, enc, enc_lengths, beam_width, nbest_size, max_symbols_per_frame):
    """`decoding.NBest` of the encoder output: `token_ids [B, N, U]`, `lengths [B, N]` and beam
    `scores [B, N]` (-inf for empty slots), `tfkd.decoding.beam_search_encoded`."""
    return decoding.beam_search_encoded(
        teacher, enc, enc_lengths, beam_width, nbest_size, max_symbols_per_frame
    )


def full_sum_scores(teacher, enc, enc_lengths, hypotheses, lengths):
    """`[B, N]` full-sum `log P_T(y_n|x)` of `hypotheses [B, N, U]` (`lengths [B, N]`), reusing
    the encoder output (`tfkd.decoding.score_encoded`)."""
    return decoding.score_encoded(teacher, enc, enc_lengths, hypotheses, lengths)


def nbest_fields(
    teacher, enc, enc_lengths, *, beam_width, nbest_size, max_symbols_per_frame, full_sum
):
    """The batch's N-best fields (`tfkd.data.pipeline.NBEST_FIELDS`) from the teacher, as the
    pipeline yields them from pseudo-label records: `nbest_token_ids [B, N, U]`, `nbest_lengths
    [B, N]` (0 for empty slots), `teacher_scores [B, N]` (`NBEST_PAD_SCORE` for empty slots),
    `nbest_count [B]`; under `stop_gradient`.

    Args:
        full_sum: `teacher_scores` are full-sum log-likelihoods (`full_sum_scores`); False: the
            beam scores (cheaper, for students that do not read them).
    """
    found = beam_nbest(teacher, enc, enc_lengths, beam_width, nbest_size, max_symbols_per_frame)
    valid = tf.math.is_finite(found.scores)
    lengths = tf.where(valid, found.lengths, 0)
    if full_sum:
        scores = full_sum_scores(teacher, enc, enc_lengths, found.token_ids, lengths)
    else:
        scores = found.scores
    ids, lengths_field, scores_field, count = pipeline.NBEST_FIELDS
    return {
        ids: tf.stop_gradient(found.token_ids),
        lengths_field: lengths,
        scores_field: tf.stop_gradient(tf.where(valid, scores, pipeline.NBEST_PAD_SCORE)),
        count: tf.reduce_sum(tf.cast(valid, tf.int32), axis=1),
    }


def lattice_logits(teacher, enc, labels):
    """`[B, T, U+1, V]` the teacher's joint output over the lattice of `labels [B, U]`."""
    return teacher.joint(enc, teacher.predict_labels(labels, training=False))


def soft_targets(teacher, enc, hyp, hyp_lengths):
    """`[B, T, U+1, 3]` the teacher's collapsed lattice log-probs on `hyp [B, U]`
    (`tfkd.losses.collapsed_lattice`): what an online soft student compares with, stored."""
    return losses.collapsed_lattice(lattice_logits(teacher, enc, hyp), hyp, hyp_lengths)
