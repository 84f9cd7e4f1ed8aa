"""Distillation losses (METHODS.md §2–§5): hard, soft (lattice KL), full-sum, discriminative.

Pure TensorFlow, no gin, no models. Every function returns per-utterance values `[B]`; the caller
(a trainer) owns the weights of the terms and the reduction over the batch. Teacher inputs are
wrapped in `stop_gradient`, so gradients only ever reach the student side.

Shapes: `B` utterances, `T` frames, `U` labels (lattices are `[B, T, U+1, V]`), `N` hypotheses per
utterance (scores are `[B, N]`).
"""

import tensorflow as tf

from tfkd.losses.rnnt import check_rnnt_inputs, next_labels, rnnt_loss

# Finite stand-in for log 0 in the collapsed "rest" class. Finite (not -inf) so that a class of
# probability 0 contributes 0 · (finite) = 0 to the KL and its gradient, never 0 · inf = NaN.
_LOG_ZERO = -1e30


def hard_distillation_loss(student_logits, teacher_hyp, logit_lengths, hyp_lengths, blank=0):
    """RNN-T loss of the student on the teacher's 1-best `ŷ` (METHODS §2): `−log P_S(ŷ|x)`.

    Args:
      student_logits: `[B, T, U+1, V]` student joint outputs over the lattice of `ŷ`.
      teacher_hyp: `[B, U]` int teacher 1-best label ids, padded beyond `hyp_lengths`.
      logit_lengths: `[B]` valid student frames.
      hyp_lengths: `[B]` labels in each 1-best.
      blank: blank id.

    Returns:
      `[B]` float32 loss.
    """
    return rnnt_loss(
        student_logits, tf.stop_gradient(teacher_hyp), logit_lengths, hyp_lengths, blank=blank
    )


# ----------------------------------------------------------------------------------------------
# §3 Soft distillation.


def _check_same_lattice(
    teacher_logits, student_logits, logit_lengths, teacher_logit_lengths, name, teacher_classes=None
):
    """Static and run-time checks that both lattices have the same frames, nodes and vocabulary.

    With `teacher_classes` (collapsed teacher targets `[B, T, U+1, C]`), the teacher's last axis
    must be C instead of the student's V.
    """
    t_shape, s_shape = teacher_logits.shape, student_logits.shape
    what_teacher = "collapsed teacher log-probs" if teacher_classes else "logits"
    if t_shape.rank not in (None, 4) or s_shape.rank not in (None, 4):
        raise ValueError(
            f"{name}: {what_teacher} and student logits must be [B, T, U+1, *], got {t_shape} "
            f"and {s_shape}"
        )
    frames_msg = (
        f"{name}: teacher and student frame counts differ; the collapsed lattice KL compares "
        "node (t, u) of both lattices and needs the same T (same frame rate). Full-sum "
        "distillation (fullsum_distillation_loss) has no such limit."
    )
    t_frames, s_frames = t_shape[1], s_shape[1]
    if t_frames is not None and s_frames is not None and t_frames != s_frames:
        raise ValueError(f"{frames_msg} (T_teacher={t_frames}, T_student={s_frames})")
    if t_shape[2] is not None and s_shape[2] is not None and t_shape[2] != s_shape[2]:
        raise ValueError(
            f"{name}: teacher and student label nodes U+1 differ: {t_shape[2]} vs {s_shape[2]}"
        )
    if teacher_classes is not None:
        if t_shape[3] is not None and t_shape[3] != teacher_classes:
            raise ValueError(
                f"{name}: collapsed teacher log-probs must have {teacher_classes} classes "
                f"(next label, blank, rest) on the last axis, got {t_shape[3]}"
            )
    elif t_shape[3] is not None and s_shape[3] is not None and t_shape[3] != s_shape[3]:
        raise ValueError(
            f"{name}: teacher and student vocabulary sizes V differ: {t_shape[3]} vs {s_shape[3]}"
        )
    t_dyn, s_dyn = tf.shape(teacher_logits), tf.shape(student_logits)
    checks = [
        tf.debugging.assert_equal(t_dyn[1], s_dyn[1], message=frames_msg),
        tf.debugging.assert_equal(t_dyn[0], s_dyn[0], message=f"{name}: batch sizes differ"),
        tf.debugging.assert_equal(t_dyn[2], s_dyn[2], message=f"{name}: label nodes U+1 differ"),
    ]
    if teacher_classes is None:
        checks.append(
            tf.debugging.assert_equal(
                t_dyn[3], s_dyn[3], message=f"{name}: vocabulary sizes differ"
            )
        )
    else:
        checks.append(
            tf.debugging.assert_equal(
                t_dyn[3],
                teacher_classes,
                message=f"{name}: collapsed teacher log-probs need {teacher_classes} classes",
            )
        )
    if teacher_logit_lengths is not None:
        checks.append(
            tf.debugging.assert_equal(
                tf.cast(teacher_logit_lengths, tf.int32),
                tf.cast(logit_lengths, tf.int32),
                message=frames_msg + " (teacher_logit_lengths != logit_lengths)",
            )
        )
    return checks


def _shift_frames(logits, shift):
    """`[B, T, U+1, C]` with frame t holding input frame t − shift (frames t < shift are zeros).

    C is V for logits, 3 for collapsed log-probs."""
    if shift == 0:
        return logits
    frames = tf.shape(logits)[1]
    padded = tf.pad(logits, [[0, 0], [shift, 0], [0, 0], [0, 0]])
    return padded[:, :frames]


def collapsed_log_probs(logits, next_ids, has_label, blank=0):
    """Log-probabilities of the three collapsed classes {next label, blank, rest} at each node.

    The rest class is `log Σ_{k ∉ {y, ∅}} exp(z_k) − logsumexp(z)`: a logsumexp over the other
    classes, exact even when `P(y) + P(∅) → 1` (where `log(1 − P(y) − P(∅))` would cancel).

    Args:
      logits: `[B, T, U+1, V]` joint outputs (any float dtype, computed in float32).
      next_ids: `[B, U+1]` int32 id of `y_{u+1}` at node u (anything where there is none).
      has_label: `[B, U+1]` bool, True where node u has a next label (u < U_b).
      blank: blank id.

    Returns:
      `(label, blank, rest)`, each `[B, T, U+1]` float32. Where `has_label` is False, `label` is
      `_LOG_ZERO` and `rest` covers every non-blank class.
    """
    z = tf.cast(logits, tf.float32)
    lse = tf.reduce_logsumexp(z, axis=-1)
    k = tf.range(tf.shape(z)[-1])
    is_label = (k == next_ids[:, None, :, None]) & has_label[:, None, :, None]
    is_blank = k == blank
    label_lp = tf.reduce_sum(tf.where(is_label, z, 0.0), axis=-1) - lse
    label_lp = tf.where(has_label[:, None, :], label_lp, _LOG_ZERO)
    blank_lp = z[..., blank] - lse
    rest_lp = tf.reduce_logsumexp(tf.where(is_label | is_blank, _LOG_ZERO, z), axis=-1) - lse
    # With V = 2 and a next label the rest class is empty: keep it at log 0, not log 0 − lse.
    rest_lp = tf.maximum(rest_lp, _LOG_ZERO)
    return label_lp, blank_lp, rest_lp


#: The classes of a collapsed lattice, in the order of its last axis.
COLLAPSED_CLASSES = ("label", "blank", "rest")


def collapsed_lattice(logits, labels, label_lengths, blank=0):
    """`[B, T, U+1, 3]` float32 collapsed log-posteriors {next label, blank, rest} at every node.

    What `soft_distillation_loss` computes from the teacher's logits (before its `shift`), so a
    teacher's lattice can be collapsed once and stored (`bin/pseudo_label --soft_targets`), then
    used by `collapsed_soft_distillation_loss`. At `u = U_b` there is no next label: the label
    class holds `_LOG_ZERO` (-1e30, log 0) and rest covers every non-blank class.

    Args:
      logits: `[B, T, U+1, V]` joint outputs over the lattice of `labels`.
      labels: `[B, U]` int label ids, padded beyond `label_lengths`.
      label_lengths: `[B]` valid labels U_b.
      blank: blank id.
    """
    labels = tf.cast(labels, tf.int32)
    label_lengths = tf.cast(label_lengths, tf.int32)
    nodes_u = tf.shape(logits)[2]
    next_ids = next_labels(labels, label_lengths, blank)
    has_label = tf.range(nodes_u)[None, :] < label_lengths[:, None]
    return tf.stack(collapsed_log_probs(logits, next_ids, has_label, blank), -1)


def _kl_terms(teacher_lps, student_lps):
    """Σ_c P_T(c) (log P_T(c) − log P_S(c)) over stacked class log-probs `[..., C]`."""
    teacher_p = tf.exp(teacher_lps)
    return tf.reduce_sum(teacher_p * (teacher_lps - student_lps), axis=-1)


def soft_distillation_loss(
    teacher_logits,
    student_logits,
    labels,
    logit_lengths,
    label_lengths,
    shift=0,
    blank=0,
    full_vocabulary=False,
    teacher_logit_lengths=None,
):
    """Collapsed lattice KL between teacher and student (METHODS §3), summed over valid nodes.

    `L_soft = Σ_{t,u} Σ_{c ∈ {y, ∅, r}} P_T(c|t−shift, u) (log P_T(c|t−shift, u) − log P_S(c|t, u))`
    over nodes `shift ≤ t < T_b`, `0 ≤ u ≤ U_b`. At `u = U_b` there is no next label, so the
    classes are blank and rest (every non-blank label). With `full_vocabulary` the KL runs over
    all V classes instead of the three collapsed ones.

    Args:
      teacher_logits: `[B, T, U+1, V]` teacher joint outputs (no gradient flows into them).
      student_logits: `[B, T, U+1, V]` student joint outputs on the same label sequence.
      labels: `[B, U]` int label ids, padded beyond `label_lengths`.
      logit_lengths: `[B]` valid student frames T_b.
      label_lengths: `[B]` valid labels U_b.
      shift: frames (Python int >= 0) by which a non-causal teacher runs ahead of the student:
        student frame t is compared with teacher frame t − shift; nodes with t < shift are masked.
      blank: blank id.
      full_vocabulary: KL over all V classes instead of {next label, blank, rest}.
      teacher_logit_lengths: optional `[B]` valid teacher frames; must equal `logit_lengths`.

    Returns:
      `[B]` float32 loss.

    Raises:
      ValueError: static frame counts (or U+1, V) of teacher and student differ, or bad `shift`.
      tf.errors.InvalidArgumentError: the same at run time, or invalid lengths/labels.
    """
    name = "soft_distillation_loss"
    _check_shift(shift, name)
    teacher_logits = tf.stop_gradient(tf.convert_to_tensor(teacher_logits))
    student_logits = tf.convert_to_tensor(student_logits)
    checks = _check_same_lattice(
        teacher_logits, student_logits, logit_lengths, teacher_logit_lengths, name
    )
    teacher_logits, student_logits, labels, logit_lengths, label_lengths = _checked(
        checks, teacher_logits, student_logits, labels, logit_lengths, label_lengths, blank, name
    )
    if full_vocabulary:
        kl = _kl_terms(
            tf.nn.log_softmax(tf.cast(_shift_frames(teacher_logits, shift), tf.float32)),
            tf.nn.log_softmax(tf.cast(student_logits, tf.float32)),
        )
        return _sum_valid_nodes(kl, logit_lengths, label_lengths, shift)
    # Collapse first, then shift: the shift pads and copies [B, T, U+1, 3], not the teacher's
    # [B, T, U+1, V] (every node collapses on its own; the nodes the shift fills are masked).
    teacher_lps = collapsed_lattice(teacher_logits, labels, label_lengths, blank)
    return _collapsed_kl_sum(
        teacher_lps, student_logits, labels, logit_lengths, label_lengths, shift, blank
    )


def collapsed_soft_distillation_loss(
    teacher_log_probs,
    student_logits,
    labels,
    logit_lengths,
    label_lengths,
    shift=0,
    blank=0,
    full_vocabulary=False,
    teacher_logit_lengths=None,
):
    """`soft_distillation_loss` from the teacher's pre-collapsed lattice (offline soft targets).

    The same value and student gradient as `soft_distillation_loss(teacher_logits, ...)` when
    `teacher_log_probs = collapsed_lattice(teacher_logits, labels, label_lengths)`: the same
    nodes, `shift` masking, frame-count checks and errors. Only the 3-class KL is possible: the
    other classes' posteriors are not in the collapsed targets.

    Args:
      teacher_log_probs: `[B, T, U+1, 3]` teacher log P_T({next label, blank, rest} | t, u)
        (`collapsed_lattice`; no gradient flows into them). Padded nodes may hold anything finite.
      student_logits: `[B, T, U+1, V]` student joint outputs on the same label sequence.
      labels, logit_lengths, label_lengths, shift, blank, teacher_logit_lengths: as for
        `soft_distillation_loss`.
      full_vocabulary: must be False; True raises (it needs the teacher's logits).

    Returns:
      `[B]` float32 loss.

    Raises:
      ValueError: `full_vocabulary`, bad `shift`, static frame counts (or U+1) that differ, or a
        last axis other than 3.
      tf.errors.InvalidArgumentError: the same at run time, or invalid lengths/labels.
    """
    name = "collapsed_soft_distillation_loss"
    if full_vocabulary:
        raise ValueError(
            f"{name}: full_vocabulary=True needs the teacher's logits over all V classes (an "
            "online teacher, soft_distillation_loss); collapsed targets hold only the {next "
            "label, blank, rest} log-probs"
        )
    _check_shift(shift, name)
    teacher_lps = tf.stop_gradient(tf.cast(teacher_log_probs, tf.float32))
    student_logits = tf.convert_to_tensor(student_logits)
    checks = _check_same_lattice(
        teacher_lps, student_logits, logit_lengths, teacher_logit_lengths, name, teacher_classes=3
    )
    teacher_lps, student_logits, labels, logit_lengths, label_lengths = _checked(
        checks, teacher_lps, student_logits, labels, logit_lengths, label_lengths, blank, name
    )
    return _collapsed_kl_sum(
        teacher_lps, student_logits, labels, logit_lengths, label_lengths, shift, blank
    )


def _collapsed_kl_sum(
    teacher_lps, student_logits, labels, logit_lengths, label_lengths, shift, blank
):
    """`[B]` collapsed KL of teacher log-probs `[B, T, U+1, 3]` (before `shift`) against the
    student's collapsed lattice, summed over the valid nodes; shared by both soft losses."""
    teacher_lps = _shift_frames(teacher_lps, shift)
    student_lps = collapsed_lattice(student_logits, labels, label_lengths, blank)
    kl = _kl_terms(teacher_lps, student_lps)
    return _sum_valid_nodes(kl, logit_lengths, label_lengths, shift)


def _check_shift(shift, name):
    if not isinstance(shift, int) or shift < 0:
        raise ValueError(f"{name}: shift must be a Python int >= 0, got {shift!r}")


def _checked(checks, teacher, student_logits, labels, logit_lengths, label_lengths, blank, name):
    """Runs the lattice checks before anything else reads the tensors (graph mode too)."""
    with tf.control_dependencies(checks):
        # Identities so that, in graph mode, the frame-count assert fires before any op that
        # would fail on the mismatched shapes with a less helpful message.
        teacher = tf.identity(teacher)
        student_logits = tf.identity(student_logits)
        labels, logit_lengths, label_lengths = check_rnnt_inputs(
            tf.shape(student_logits), labels, logit_lengths, label_lengths, blank, name
        )
    return teacher, student_logits, labels, logit_lengths, label_lengths


def _sum_valid_nodes(kl, logit_lengths, label_lengths, shift):
    """`[B]` sum of `kl [B, T, U+1]` over nodes `shift <= t < T_b`, `u <= U_b`."""
    frames, nodes_u = tf.shape(kl)[1], tf.shape(kl)[2]
    t = tf.range(frames)[None, :, None]
    u = tf.range(nodes_u)[None, None, :]
    valid = (t >= shift) & (t < logit_lengths[:, None, None]) & (u <= label_lengths[:, None, None])
    return tf.reduce_sum(tf.where(valid, kl, 0.0), axis=[1, 2])


# ----------------------------------------------------------------------------------------------
# §4–§5 Sequence-level losses on N-best scores.


def hypothesis_mask(scores, num_hyps=None, mask=None):
    """`[B, N]` bool: valid hypotheses from `num_hyps [B]` or an explicit `mask [B, N]`.

    With neither, every hypothesis is valid; with both, a hypothesis must pass both.
    """
    shape = tf.shape(scores)
    valid = tf.ones(shape, tf.bool)
    if num_hyps is not None:
        num_hyps = tf.cast(num_hyps, tf.int32)
        valid &= tf.range(shape[1])[None, :] < num_hyps[:, None]
    if mask is not None:
        valid &= tf.cast(mask, tf.bool)
    return valid


def _masked_log_softmax(x, valid):
    """log softmax over the valid entries of the last axis; 0 at invalid ones (finite always)."""
    x = tf.where(valid, x, _LOG_ZERO)
    out = x - tf.reduce_logsumexp(x, axis=-1, keepdims=True)
    return tf.where(valid, out, 0.0)


def fullsum_distillation_loss(
    teacher_scores,
    student_scores,
    hyp_lengths,
    num_hyps=None,
    distance="squared",
    length_norm=False,
    mask=None,
    renormalize=False,
):
    """Full-sum distillation over the teacher's N-best (METHODS §4).

    `s_T(n) = log P_T(y_n|x)` and `s_S(n) = log P_S(y_n|x)` are full-sum scores (§1).
    - `'squared'`: `mean_n (s_T(n) − s_S(n))²` over the valid hypotheses.
    - `'kl'`: `−Σ_n P_T(y_n|x) · s_S(n)`, the N-best approximation of `KL(P_T ‖ P_S)` up to a
      constant; a sum (as written in §4), since the weights already play the role of the mean.
      `P_T(y_n|x) = exp(s_T(n))` by default; with `renormalize`, the softmax of `s_T` over the
      valid hypotheses instead.
    With `length_norm`, every score is first divided by its number of tokens plus one.
    Invalid (padding) hypotheses are ignored whatever their scores (even ±inf); an utterance with
    no valid hypothesis gets 0.

    Args:
      teacher_scores: `[B, N]` teacher full-sum log-probs (no gradient flows into them).
      student_scores: `[B, N]` student full-sum log-probs.
      hyp_lengths: `[B, N]` int tokens per hypothesis.
      num_hyps: optional `[B]` int valid hypotheses per utterance (the first `num_hyps[b]`).
      distance: `'squared'` or `'kl'`.
      length_norm: divide each score by (tokens + 1).
      mask: optional `[B, N]` bool valid hypotheses (combined with `num_hyps`).
      renormalize: for `'kl'`, weight by the N-best posterior `softmax(s_T)` instead of `exp(s_T)`.

    Returns:
      `[B]` float32 loss.

    Raises:
      ValueError: unknown `distance`.
    """
    if distance not in ("squared", "kl"):
        raise ValueError(
            f"fullsum_distillation_loss: distance must be 'squared' or 'kl', got {distance!r}"
        )
    teacher_scores = tf.stop_gradient(tf.cast(teacher_scores, tf.float32))
    student_scores = tf.cast(student_scores, tf.float32)
    valid = hypothesis_mask(student_scores, num_hyps, mask)
    # Zero the padding before any arithmetic: a -inf there would give NaN gradients through
    # tf.where (0 · inf).
    teacher_scores = tf.where(valid, teacher_scores, 0.0)
    student_scores = tf.where(valid, student_scores, 0.0)
    if length_norm:
        norm = tf.cast(hyp_lengths, tf.float32) + 1.0
        teacher_scores /= norm
        student_scores /= norm
    if distance == "squared":
        per_hyp = tf.where(valid, tf.square(teacher_scores - student_scores), 0.0)
        count = tf.reduce_sum(tf.cast(valid, tf.float32), axis=1)
        return tf.reduce_sum(per_hyp, axis=1) / tf.maximum(count, 1.0)
    if renormalize:
        weights = tf.exp(_masked_log_softmax(teacher_scores, valid))
    else:
        weights = tf.exp(tf.minimum(teacher_scores, 0.0))  # log-probs are <= 0
    return -tf.reduce_sum(tf.where(valid, weights * student_scores, 0.0), axis=1)


def discriminative_fullsum_loss(
    teacher_scores, student_scores, num_hyps=None, temperature=1.0, mask=None
):
    """Sequence-discriminative full-sum distillation (METHODS §5): `KL(q_T ‖ q_S)` over the N-best.

    `q_T = softmax_n(s_T / τ)`, `q_S = softmax_n(s_S / τ)` over the valid hypotheses, and
    `L = Σ_n q_T(n) (log q_T(n) − log q_S(n))`; its gradient on `s_S(n)` is `(q_S − q_T)(n) / τ`.

    N >= 2 is required: a static `N < 2` raises `ValueError`, a dynamic one
    `InvalidArgumentError`. An utterance whose own list has fewer than two valid hypotheses (a
    beam can find fewer distinct ones than N) is not an error: the KL between two distributions on
    a single point is 0, and it contributes exactly 0 loss and 0 gradient.

    Args:
      teacher_scores: `[B, N]` teacher full-sum log-probs (no gradient flows into them).
      student_scores: `[B, N]` student full-sum log-probs.
      num_hyps: optional `[B]` int valid hypotheses per utterance (the first `num_hyps[b]`).
      temperature: τ > 0 (Python number or scalar tensor).
      mask: optional `[B, N]` bool valid hypotheses (combined with `num_hyps`).

    Returns:
      `[B]` float32 loss.

    Raises:
      ValueError: static N < 2 or non-positive static temperature.
      tf.errors.InvalidArgumentError: dynamic N < 2 or non-positive temperature tensor.
    """
    name = "discriminative_fullsum_loss"
    teacher_scores = tf.stop_gradient(tf.cast(teacher_scores, tf.float32))
    student_scores = tf.cast(student_scores, tf.float32)
    num = student_scores.shape[-1] if student_scores.shape.rank == 2 else None
    if num is not None and num < 2:
        raise ValueError(f"{name}: needs an N-best list with N >= 2 hypotheses, got N = {num}")
    if isinstance(temperature, (int, float)) and temperature <= 0:
        raise ValueError(f"{name}: temperature must be > 0, got {temperature}")
    temperature = tf.cast(temperature, tf.float32)
    checks = [
        tf.debugging.assert_rank(student_scores, 2, message=f"{name}: scores must be [B, N]"),
        tf.debugging.assert_greater_equal(
            tf.shape(student_scores)[-1],
            2,
            message=f"{name}: needs an N-best list with N >= 2 hypotheses",
        ),
        tf.debugging.assert_equal(
            tf.shape(teacher_scores),
            tf.shape(student_scores),
            message=f"{name}: teacher and student scores must have the same shape [B, N]",
        ),
        tf.debugging.assert_positive(temperature, message=f"{name}: temperature must be > 0"),
    ]
    with tf.control_dependencies(checks):
        valid = hypothesis_mask(student_scores, num_hyps, mask)
    # Zero the padding first: ±inf there would turn the masked gradient into NaN.
    teacher_scores = tf.where(valid, teacher_scores, 0.0)
    student_scores = tf.where(valid, student_scores, 0.0)
    log_q_teacher = _masked_log_softmax(teacher_scores / temperature, valid)
    log_q_student = _masked_log_softmax(student_scores / temperature, valid)
    kl = tf.exp(log_q_teacher) * (log_q_teacher - log_q_student)
    return tf.reduce_sum(tf.where(valid, kl, 0.0), axis=1)
