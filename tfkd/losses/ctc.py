"""CTC loss `−log P_CTC(y|x)` per utterance, on `tf.nn.ctc_loss` (an auxiliary encoder loss).

Shapes: `logits [B, T, V]` (any float dtype, computed in float32), `labels [B, U]` int padded,
`logit_lengths [B]` (valid frames T_b), `label_lengths [B]` (valid labels U_b). Blank is one of
the V classes (0 by default, the transducer's blank).

The loss is `tf.nn.ctc_loss` on dense labels, batch-major, which is TensorFlow's pure-TF
forward-backward (`ctc_loss_dense`): it runs on CPU, GPU and TPU and compiles under XLA. Padded
frames (t >= T_b) and labels (positions >= U_b) may hold anything, NaN included: they are
replaced before the loss sees them, and padded frames get exactly zero gradient.

Infeasible utterances: a CTC path needs at least `U_b + r_b` frames, where r_b counts the adjacent
repeated labels (`a a` needs a blank between them). `tf.nn.ctc_loss` then returns a large, finite,
meaningless number (about 707) with a nonzero gradient. Here such rows get loss 0 and exactly zero
gradient: they are computed with label length 0 (always feasible, so nothing non-finite enters
the backward pass) and replaced by 0. `ctc_feasible` tells which rows are feasible, so callers
can count them.

Input checks (`InvalidArgumentError` naming the problem) are those of `tfkd.losses.rnnt`, except
that T_b = 0 is legal (an empty utterance has probability 1 of the empty label sequence). As
there, the asserts are compiled away inside a caller's `tf.function(jit_compile=True)`; invalid
rows then give NaN (zero gradient) instead of a plausible number.

Cost: `ctc_loss_dense` picks each label's log-probs and sums its gradient through one-hot
products of size `[T, B, U, V]`, the size of an RNN-T lattice. For the 2×256 LSTM student
(B = 16, 4–6 s, U = 32–48, V = 256, no XLA) a step took ~5 % longer and peaked ~250 MB higher.
Its loops are legacy `Defun`s whose names ignore shapes, so once one process traces plain (non-XLA)
graphs at several label or frame shapes, grappler logs "'tfg.While' op body function argument ...
is not compatible" and "Ignoring multi-device function optimization failure" and leaves those
graphs unoptimised; values are unaffected (tested), and that step was no slower than the above.
"""

import tensorflow as tf

from tfkd.losses.rnnt import check_static_dims


def check_ctc_inputs(logits_shape, labels, logit_lengths, label_lengths, blank=0, name="ctc_loss"):
    """Asserts that lengths and labels fit the logits; returns the checked, int32 inputs.

    Args:
      logits_shape: int32 `[3]`, the shape `[B, T, V]` of the logits.
      labels: `[B, U]` integer label ids, padded beyond `label_lengths`.
      logit_lengths: `[B]` valid frames per utterance.
      label_lengths: `[B]` valid labels per utterance.
      blank: the blank id (Python int).
      name: prefix of the error messages.

    Returns:
      `(labels, logit_lengths, label_lengths)` as int32, with control dependencies on the asserts.

    Raises:
      TypeError: non-integer labels or lengths.
      tf.errors.InvalidArgumentError: negative lengths, lengths beyond the tensor dims, batch sizes
        that disagree, label ids outside [0, V) or equal to blank at positions `< label_lengths`,
        or blank outside [0, V).
    """
    labels, logit_lengths, label_lengths = (
        tf.convert_to_tensor(x) for x in (labels, logit_lengths, label_lengths)
    )
    for value, what in (
        (labels, "labels"),
        (logit_lengths, "logit_lengths"),
        (label_lengths, "label_lengths"),
    ):
        if not value.dtype.is_integer:
            raise TypeError(f"{name}: {what} must be integers, got {value.dtype.name}")
    labels, logit_lengths, label_lengths = (
        tf.cast(x, tf.int32) for x in (labels, logit_lengths, label_lengths)
    )
    tf.debugging.assert_rank(labels, 2, message=f"{name}: labels must be [B, U]")
    tf.debugging.assert_rank(logit_lengths, 1, message=f"{name}: logit_lengths must be [B]")
    tf.debugging.assert_rank(label_lengths, 1, message=f"{name}: label_lengths must be [B]")
    batch, frames, vocab = tf.unstack(tf.cast(logits_shape, tf.int32), num=3)
    max_labels = tf.shape(labels)[1]
    shape_checks = [
        tf.debugging.assert_equal(
            tf.shape(labels)[0],
            batch,
            message=f"{name}: labels.shape[0] must equal the batch size of the logits",
        ),
        tf.debugging.assert_equal(
            tf.shape(logit_lengths)[0],
            batch,
            message=f"{name}: logit_lengths must have one entry per utterance",
        ),
        tf.debugging.assert_equal(
            tf.shape(label_lengths)[0],
            batch,
            message=f"{name}: label_lengths must have one entry per utterance",
        ),
        tf.debugging.assert_less(blank, vocab, message=f"{name}: blank must be in [0, V)"),
    ]
    with tf.control_dependencies(shape_checks):
        label_pos = tf.range(max_labels)[None, :] < label_lengths[:, None]
        checks = shape_checks + [
            tf.debugging.assert_non_negative(
                logit_lengths, message=f"{name}: logit_lengths must be >= 0"
            ),
            tf.debugging.assert_less_equal(
                logit_lengths,
                frames,
                message=f"{name}: logit_lengths must be <= the number of frames T of the logits",
            ),
            tf.debugging.assert_non_negative(
                label_lengths, message=f"{name}: label_lengths must be >= 0"
            ),
            tf.debugging.assert_less_equal(
                label_lengths,
                max_labels,
                message=f"{name}: label_lengths must be <= labels.shape[1] (U)",
            ),
            tf.debugging.assert_equal(
                tf.reduce_all(~label_pos | ((labels >= 0) & (labels < vocab))),
                True,
                message=f"{name}: label ids must be in [0, V) at positions < label_lengths",
            ),
            tf.debugging.assert_equal(
                tf.reduce_all(~label_pos | (labels != blank)),
                True,
                message=(
                    f"{name}: labels must not contain the blank id at positions < label_lengths"
                ),
            ),
        ]
    with tf.control_dependencies(checks):
        return tf.identity(labels), tf.identity(logit_lengths), tf.identity(label_lengths)


def ctc_feasible(labels, logit_lengths, label_lengths):
    """`[B]` bool: whether some CTC path of T_b frames emits the U_b labels.

    That needs `T_b >= U_b + r_b`, r_b the number of adjacent equal labels among the first U_b
    (a blank must separate them). Rows where this is False get loss 0 in `ctc_loss`.

    Args:
      labels: `[B, U]` integer label ids, padded beyond `label_lengths`.
      logit_lengths: `[B]` valid frames; label_lengths: `[B]` valid labels.
    """
    labels = tf.cast(labels, tf.int32)
    logit_lengths = tf.cast(logit_lengths, tf.int32)
    label_lengths = tf.cast(label_lengths, tf.int32)
    # Position i >= 1 repeats position i - 1; both must be real labels (i < U_b).
    pos = tf.range(1, tf.shape(labels)[1])[None, :]
    repeat = (labels[:, 1:] == labels[:, :-1]) & (pos < label_lengths[:, None])
    repeats = tf.reduce_sum(tf.cast(repeat, tf.int32), axis=1)
    return logit_lengths >= label_lengths + repeats


def ctc_loss(logits, labels, logit_lengths, label_lengths, blank=0):
    """CTC loss `−log P_CTC(labels|x)` per utterance; 0 on infeasible utterances.

    Args:
      logits: `[B, T, V]` unnormalised per-frame scores, any float dtype (computed in float32).
      labels: `[B, U]` integer label ids, padded beyond `label_lengths` (padding may be anything).
      logit_lengths: `[B]` valid frames T_b, 0 <= T_b <= T.
      label_lengths: `[B]` valid labels U_b, 0 <= U_b <= U.
      blank: the blank id, a Python int in [0, V).

    Returns:
      `[B]` float32 loss. Its gradient w.r.t. `logits` has the dtype of `logits` and is exactly
      zero at frames t >= T_b and on infeasible utterances (`ctc_feasible` False), whose loss is 0.

    Raises:
      TypeError: non-float logits or non-integer labels or lengths.
      ValueError: blank is not a non-negative Python int.
      tf.errors.InvalidArgumentError: on invalid lengths or labels (see `check_ctc_inputs`).
    """
    name = "ctc_loss"
    logits = tf.convert_to_tensor(logits)
    if not logits.dtype.is_floating:
        raise TypeError(f"{name}: logits must be floating point, got {logits.dtype.name}")
    tf.debugging.assert_rank(logits, 3, message=f"{name}: logits must be [B, T, V]")
    if not isinstance(blank, int) or blank < 0:
        raise ValueError(f"{name}: blank must be a non-negative Python int, got {blank!r}")
    labels, logit_lengths, label_lengths = (
        tf.convert_to_tensor(x) for x in (labels, logit_lengths, label_lengths)
    )
    batch, _, vocab = logits.shape
    # check_static_dims compares [B, T, U+1, V]; CTC has no U+1 axis to compare.
    check_static_dims([batch, None, None, vocab], labels, logit_lengths, label_lengths, name)
    labels, logit_lengths, label_lengths = check_ctc_inputs(
        tf.shape(logits), labels, logit_lengths, label_lengths, blank, name
    )
    frames, vocab = tf.shape(logits)[1], tf.shape(logits)[2]
    # Under XLA the asserts are gone: flag invalid rows (NaN below) and make their inputs safe.
    label_pos = tf.range(tf.shape(labels)[1])[None, :] < label_lengths[:, None]
    ok_labels = (labels >= 0) & (labels < vocab) & (labels != blank)
    ok = (
        (logit_lengths >= 0)
        & (logit_lengths <= frames)
        & (label_lengths >= 0)
        & (label_lengths <= tf.shape(labels)[1])
        & tf.reduce_all(~label_pos | ok_labels, axis=1)
    )
    logit_lengths = tf.clip_by_value(logit_lengths, 0, frames)
    label_lengths = tf.clip_by_value(label_lengths, 0, tf.shape(labels)[1])
    used = ok & ctc_feasible(labels, logit_lengths, label_lengths)
    # Unused rows are scored on the empty label sequence: finite value and gradient, which the
    # tf.where below multiplies by exactly 0 (0 · NaN would still be NaN).
    safe_lengths = tf.where(used, label_lengths, 0)
    safe_labels = tf.where(
        tf.range(tf.shape(labels)[1])[None, :] < safe_lengths[:, None], labels, blank
    )
    # ctc_loss_dense masks padded frames by multiplication, so NaN there would leak: zero them.
    in_time = tf.range(frames)[None, :, None] < logit_lengths[:, None, None]
    nll = tf.nn.ctc_loss(
        labels=safe_labels,
        logits=tf.where(in_time, tf.cast(logits, tf.float32), 0.0),
        label_length=safe_lengths,
        logit_length=logit_lengths,
        logits_time_major=False,
        blank_index=blank,
    )
    nll = tf.where(used, nll, 0.0)
    return tf.where(ok, nll, float("nan"))
