"""Full-sum RNN-T log-likelihoods of an N-best list on shared prefix rows (METHODS.md §1, §4).

Node u of hypothesis n of an RNN-T lattice reads the joint row `z[t, u, :]`, which depends only on
the encoder frame t and on the label prefix `y_1..y_u` (the prediction network is causal in u). The
hypotheses of a beam's N-best list mostly share long prefixes, so their N separate lattices
`[B·N, T, U+1, V]` hold the same rows many times. Here every distinct (utterance, prefix) gets one
row `[T, V]` of `row_logits [R, T, V]`, and the N lattices read their nodes from those rows. The
result and its gradient are exactly those of `rnnt_log_prob` on the N separate lattices.

Shapes: `nbest_labels [B, N, U]` padded, `nbest_lengths [B, N]` (U_{b,n}), `logit_lengths [B]`
(T_b, shared by the hypotheses of an utterance), `row_logits [R, T, V]` with R from
`tfkd.losses.prefix_rows.nbest_prefix_rows` (padded up to a bucket size, so that the kernels see
few distinct shapes).

- `nbest_prefix_rows` finds the rows: node (b, n, u) of a real hypothesis (u <= U_{b,n}) belongs to
  the row of the lowest-indexed hypothesis m with the same prefix `y_1..y_u`; that node of m owns
  the row. Padded label positions and padding hypotheses (beyond `nbest_count`) get no row.
- forward (one XLA kernel): per row, `logsumexp` over V, the blank logit and the logits of the
  next labels, one per *slot*: slot n of row r holds the next label of hypothesis n at row r (a
  hypothesis passes through a row at most once, at its one node of that length). That is
  `[R, T]`, `[R, T]` and `[R, T, N]`. These are gathered to the `[B·N, T, U+1]` lattice tensors
  and alpha runs exactly as in `tfkd.losses.rnnt`;
- backward (one XLA kernel): beta and the occupancies on `[B·N, T, U+1]`, summed per row with
  segment sums (`c_∅ [R, T]`, `c_y [R, T, N]` per slot), then one fused dense pass writes
  `dz = [k=∅]·c_∅ + Σ_n [k=slot_n]·c_y,n − softmax(z)·(c_∅ + Σ_n c_y,n)`, which is exactly 0 at
  padding rows and at frames t >= T_b. No one-hot or full-size scatter exists.

Padding hypotheses (no rows) score `LOG_ZERO` (-1e30, the pipeline's `NBEST_PAD_SCORE`) with zero
gradient; the distillation losses ignore them. Input checks are those of `tfkd.losses.rnnt` (run
outside the kernels, compiled away inside a caller's XLA function), plus a check that the rows
were made from these labels.
"""

import tensorflow as tf

from tfkd.losses.joint_chunks import (
    chunked_full_sum,
    chunking,
    frames_slice,
    probe_vocab,
    static_or_tensor,
)
from tfkd.losses.prefix_rows import PrefixRows
from tfkd.losses.rnnt import (
    LOG_ZERO,
    captured,
    check_rnnt_inputs,
    emission_masks,
    lattice_coefficients,
    lattice_forward,
    logsumexp_last,
    sanitize_lengths,
    vocab_factors,
)

# ----------------------------------------------------------------------------------------------
# Input checks (host graph, outside the kernels).


def _check_rows(logits_shape, rows, labels, logit_lengths, lengths, name):
    """Shape asserts between the rows, the labels and the row logits, and that every node of a
    real hypothesis points at a row of its own utterance, length and prefix."""
    batch, num, max_labels = tf.unstack(tf.shape(labels))
    num_rows_total = logits_shape[0]
    message = f"{name}: rows do not match nbest_labels / nbest_lengths (make them with "
    message += "nbest_prefix_rows from the same N-best, and row_logits with one row per row)"
    shape_checks = [
        tf.debugging.assert_equal(
            tf.shape(lengths),
            tf.stack([batch, num]),
            message=f"{name}: nbest_lengths must be [B, N] like nbest_labels[:, :, 0]",
        ),
        tf.debugging.assert_equal(
            tf.shape(logit_lengths),
            batch[None],
            message=f"{name}: logit_lengths must have one entry per utterance",
        ),
        tf.debugging.assert_equal(
            tf.shape(rows.node_rows), tf.stack([batch, num, max_labels + 1]), message=message
        ),
        tf.debugging.assert_equal(tf.shape(rows.has_rows), tf.stack([batch, num]), message=message),
    ]
    for row_field in (rows.row_utt, rows.row_hyp, rows.row_pos):
        shape_checks.append(
            tf.debugging.assert_equal(
                tf.shape(row_field),
                num_rows_total[None],
                message=f"{name}: row_logits must have one row per prefix row (R)",
            )
        )
    with tf.control_dependencies(shape_checks):
        ulen = tf.clip_by_value(lengths, 0, max_labels)
        u = tf.range(max_labels + 1)[None, None, :]
        exists = rows.has_rows[:, :, None] & (u <= ulen[:, :, None])
        node = tf.where(exists, rows.node_rows, 0)
        in_range = (node >= 0) & (node < tf.minimum(rows.num_rows, num_rows_total))
        # One extra (zero) entry keeps the gathers legal when R = 0 or a row is out of range.
        node = tf.where(in_range, node, num_rows_total)
        row_utt, row_hyp, row_pos = (
            tf.gather(tf.pad(x, [[0, 1]]), node) for x in (rows.row_utt, rows.row_hyp, rows.row_pos)
        )
        owner = tf.clip_by_value(row_hyp, 0, num - 1)
        utt = tf.broadcast_to(tf.range(batch)[:, None, None], tf.shape(node))
        hyp = tf.broadcast_to(tf.range(num)[None, :, None], tf.shape(node))
        owner_ok = tf.gather_nd(rows.has_rows, tf.stack([utt, owner], -1)) & (
            u <= tf.gather_nd(ulen, tf.stack([utt, owner], -1))
        )
        # Same prefix, by induction over u: the owner has the same label u and the same parent row.
        prev = tf.broadcast_to(tf.maximum(u - 1, 0), tf.shape(node))
        at_owner = tf.stack([utt, owner, prev], -1)
        at_self = tf.stack([utt, hyp, prev], -1)
        padded = tf.pad(labels, [[0, 0], [0, 0], [0, 1]])  # legal index u - 1 even when U = 0
        same_label = tf.equal(tf.gather_nd(padded, at_owner), tf.gather_nd(padded, at_self))
        same_parent = tf.equal(
            tf.gather_nd(rows.node_rows, at_owner), tf.gather_nd(rows.node_rows, at_self)
        )
        node_ok = (
            in_range
            & tf.equal(row_utt, utt)
            & tf.equal(row_pos, u)
            & owner_ok
            & ((u == 0) | (same_label & same_parent))
        )
        check = tf.debugging.assert_equal(tf.reduce_all(~exists | node_ok), True, message=message)
    return shape_checks + [check]


def _prepare(logits_shape, rows, nbest_labels, logit_lengths, nbest_lengths, blank, name):
    """Converts and checks the inputs; `logits_shape` is `[R, T, V]` (int32 tensor)."""
    if not isinstance(blank, int) or blank < 0:
        raise ValueError(f"{name}: blank must be a non-negative Python int, got {blank!r}")
    if not isinstance(rows, PrefixRows):
        raise TypeError(f"{name}: rows must be the PrefixRows of nbest_prefix_rows")
    labels, logit_lengths, lengths = (
        tf.convert_to_tensor(x) for x in (nbest_labels, logit_lengths, nbest_lengths)
    )
    for value, what in (
        (labels, "nbest_labels"),
        (logit_lengths, "logit_lengths"),
        (lengths, "nbest_lengths"),
    ):
        if not value.dtype.is_integer:
            raise TypeError(f"{name}: {what} must be integers, got {value.dtype.name}")
    rows = PrefixRows(*(tf.convert_to_tensor(x) for x in rows))
    rows = rows._replace(
        **{k: tf.cast(v, tf.int32) for k, v in rows._asdict().items() if k != "has_rows"},
        has_rows=tf.cast(rows.has_rows, tf.bool),
    )
    labels, logit_lengths, lengths = (
        tf.cast(x, tf.int32) for x in (labels, logit_lengths, lengths)
    )
    static = [
        (labels.shape.rank, 3, "nbest_labels must be [B, N, U]"),
        (lengths.shape.rank, 2, "nbest_lengths must be [B, N]"),
        (logit_lengths.shape.rank, 1, "logit_lengths must be [B]"),
    ]
    for got, want, message in static:
        if got is not None and got != want:
            raise tf.errors.InvalidArgumentError(None, None, f"{name}: {message}")
    checks = _check_rows(logits_shape, rows, labels, logit_lengths, lengths, name)
    with tf.control_dependencies(checks):
        batch, num, max_labels = tf.unstack(tf.shape(labels))
        lattice_shape = tf.stack([batch * num, logits_shape[1], max_labels + 1, logits_shape[2]])
    # The checks of rnnt.py on the B·N lattices (padding hypotheses have no labels to check).
    flat_labels, _, flat_lengths = check_rnnt_inputs(
        lattice_shape,
        tf.reshape(labels, [-1, max_labels]),
        tf.repeat(logit_lengths, num),
        tf.reshape(tf.where(rows.has_rows, lengths, 0), [-1]),
        blank,
        name,
        names={"labels": "nbest_labels", "label_lengths": "nbest_lengths"},
    )
    with tf.control_dependencies([flat_labels, flat_lengths]):
        logit_lengths = tf.identity(logit_lengths)
    return rows, labels, logit_lengths, lengths


# ----------------------------------------------------------------------------------------------
# Kernel pieces (inside XLA).


def _setup(rows, labels, logit_lengths, lengths, frames, vocab, blank):
    """Sanitised lattice inputs `(flat_frames [B·N], flat_lengths [B·N], ok [B·N], node_rows
    [B·N, U+1] clipped into range, node_hyp [B·N, U+1], has_rows [B·N])`, the slot labels
    `[R, N]` and the valid row frames `[R, T]`."""
    batch, num, max_labels = tf.unstack(tf.shape(labels))
    num_rows_total = tf.shape(rows.row_utt)[0]
    has_rows = tf.reshape(rows.has_rows, [-1])
    flat_labels, flat_frames, flat_lengths, ok = sanitize_lengths(
        tf.reshape(labels, [-1, max_labels]),
        tf.repeat(logit_lengths, num),
        tf.where(has_rows, tf.reshape(lengths, [-1]), 0),
        frames,
        vocab,
        blank,
    )
    node_rows = tf.reshape(rows.node_rows, [batch * num, max_labels + 1])
    node_rows = tf.clip_by_value(node_rows, 0, num_rows_total - 1)
    node_hyp = tf.broadcast_to((tf.range(batch * num) % num)[:, None], tf.shape(node_rows))
    # Slot n of row r: the next label of hypothesis n at row r, else -1. Each (row, slot) gets
    # at most one real label; +1 keeps it above the 0 of every other node.
    has_next = tf.range(max_labels + 1)[None, :] < flat_lengths[:, None]
    next_ids = tf.pad(flat_labels, [[0, 0], [0, 1]])
    found = tf.math.unsorted_segment_max(
        tf.reshape(tf.where(has_next, next_ids + 1, 0), [-1]),
        tf.reshape(node_rows * num + node_hyp, [-1]),
        num_rows_total * num,
    )
    slots = tf.reshape(tf.maximum(found, 0), [num_rows_total, num]) - 1
    real = tf.range(num_rows_total) < rows.num_rows
    row_frames = tf.gather(logit_lengths, tf.clip_by_value(rows.row_utt, 0, batch - 1))
    valid = real[:, None] & (tf.range(frames)[None, :] < row_frames[:, None])
    lattice_in = (flat_frames, flat_lengths, ok, node_rows, node_hyp, has_rows)
    return lattice_in, slots, valid


def _row_stats(row_logits, slots, blank, factors, valid):
    """One read of `[R, T, V]`: logsumexp, blank logit `[R, T]` and slot logits `[R, T, N]`."""
    blank_logit = tf.cast(row_logits[..., blank], tf.float32)
    ids = tf.where(slots >= 0, slots, blank)[:, None, :]
    ids = tf.broadcast_to(ids, tf.concat([tf.shape(row_logits)[:2], tf.shape(slots)[1:]], 0))
    slot_logit = tf.cast(tf.gather(row_logits, ids, axis=2, batch_dims=2), tf.float32)
    shift = tf.maximum(blank_logit, tf.reduce_max(slot_logit, axis=-1))
    lse = logsumexp_last(tf.cast(row_logits, tf.float32), factors, shift, valid)
    return lse, blank_logit, slot_logit


def _rows_forward(stats, lattice_in):
    """Row statistics gathered to the `[B·N, T, U+1]` lattices, then alpha: `(log_prob [B·N]
    with LOG_ZERO for padding hypotheses, (lattice, raw log_prob))`."""
    lse, blank_logit, slot_logit = stats
    flat_frames, flat_lengths, ok, node_rows, node_hyp, has_rows = lattice_in

    def to_lattice(x):  # [R, T] -> [B·N, T, U+1]
        return tf.transpose(tf.gather(x, node_rows), [0, 2, 1])

    # Node (bn, u) reads slot n of its row: [R, N, T] gathered at (row, n).
    label_logit = tf.gather_nd(
        tf.transpose(slot_logit, [0, 2, 1]), tf.stack([node_rows, node_hyp], -1)
    )
    raw_log_prob, lattice = lattice_forward(
        to_lattice(lse),
        to_lattice(blank_logit),
        tf.transpose(label_logit, [0, 2, 1]),
        flat_frames,
        flat_lengths,
        ok,
    )
    return tf.where(has_rows, raw_log_prob, LOG_ZERO), (lattice, raw_log_prob)


def _rows_coefficients(residuals, lattice_in, dy, num_rows_total, num):
    """beta and the occupancies on the lattices, summed per row: `c_∅ [R, T]`, `c_y [R, T, N]`."""
    lattice, raw_log_prob = residuals
    flat_frames, flat_lengths, ok, node_rows, node_hyp, has_rows = lattice_in
    real = ok & has_rows
    coef_blank, coef_label = lattice_coefficients(
        lattice, raw_log_prob, flat_frames, flat_lengths, real, tf.reshape(dy, [-1]), 1.0
    )
    frames, nodes_u = tf.shape(coef_blank)[1], tf.shape(coef_blank)[2]
    # tf.where, not a product: a padding hypothesis may read garbage (even NaN) rows.
    blank_ok, label_ok = emission_masks(frames, nodes_u, flat_frames, flat_lengths)
    coef_blank = tf.where(blank_ok & real[:, None, None], coef_blank, 0.0)
    coef_label = tf.where(label_ok & real[:, None, None], coef_label, 0.0)

    def per_node(x):  # [B·N, T, U+1] -> [B·N·(U+1), T]
        return tf.reshape(tf.transpose(x, [0, 2, 1]), [-1, frames])

    segments = tf.reshape(node_rows, [-1])
    row_blank = tf.math.unsorted_segment_sum(per_node(coef_blank), segments, num_rows_total)
    row_slots = tf.math.unsorted_segment_sum(
        per_node(coef_label), segments * num + tf.reshape(node_hyp, [-1]), num_rows_total * num
    )
    row_slots = tf.transpose(tf.reshape(row_slots, [num_rows_total, num, frames]), [0, 2, 1])
    return row_blank, row_slots


def _row_grad(row_logits, lse, coef_blank, coef_slots, slots, valid, blank, num_static):
    """One read of `[R, T, V]` and one write of its gradient, fused by XLA:
    `[k=∅]·c_∅ + Σ_n [k=slot_n]·c_y,n − softmax(z)·(c_∅ + Σ_n c_y,n)`, 0 where not `valid`."""
    z = tf.cast(row_logits, tf.float32)
    k = tf.range(tf.shape(row_logits)[-1])
    soft = tf.exp(z - lse[..., None])
    grad = (
        tf.where(k == blank, coef_blank[..., None], 0.0)
        - soft * (coef_blank + tf.reduce_sum(coef_slots, axis=-1))[..., None]
    )
    if num_static is not None:  # N compare-selects inside the fused expression
        for n in range(num_static):
            grad += tf.where(k == slots[:, None, n, None], coef_slots[..., n, None], 0.0)
    else:
        hit = k == slots[:, None, :, None]  # [R, 1, N, V]
        grad += tf.reduce_sum(tf.where(hit, coef_slots[..., None], 0.0), axis=2)
    return tf.cast(tf.where(valid[..., None], grad, 0.0), row_logits.dtype)


# ----------------------------------------------------------------------------------------------
# XLA kernels: two for the plain path; the chunked path runs the pieces separately.


@tf.function(jit_compile=True, reduce_retracing=True, autograph=False)
def _forward_kernel(row_logits, rows, labels, logit_lengths, lengths, blank, factors):
    _, frames, vocab = tf.unstack(tf.shape(row_logits))
    lattice_in, slots, valid = _setup(rows, labels, logit_lengths, lengths, frames, vocab, blank)
    stats = _row_stats(row_logits, slots, blank, factors, valid)
    log_prob, residuals = _rows_forward(stats, lattice_in)
    return tf.reshape(log_prob, tf.shape(lengths)), (stats[0], residuals)


@tf.function(jit_compile=True, reduce_retracing=True, autograph=False)
def _backward_kernel(
    row_logits, rows, labels, logit_lengths, lengths, residuals, dy, blank, num_static
):
    lse, lattice_residuals = residuals
    num_rows_total, frames, vocab = tf.unstack(tf.shape(row_logits))
    lattice_in, slots, valid = _setup(rows, labels, logit_lengths, lengths, frames, vocab, blank)
    row_blank, row_slots = _rows_coefficients(
        lattice_residuals, lattice_in, dy, num_rows_total, tf.shape(labels)[1]
    )
    return _row_grad(row_logits, lse, row_blank, row_slots, slots, valid, blank, num_static)


@tf.function(jit_compile=True, reduce_retracing=True, autograph=False)
def _chunk_stats_kernel(row_logits, slots, valid, blank, factors):
    return _row_stats(row_logits, slots, blank, factors, valid)


@tf.function(jit_compile=True, reduce_retracing=True, autograph=False)
def _lattice_forward_kernel(stats, lattice_in):
    return _rows_forward(stats, lattice_in)


@tf.function(jit_compile=True, reduce_retracing=True, autograph=False)
def _lattice_backward_kernel(residuals, lattice_in, dy, num_rows_total, num):
    return _rows_coefficients(residuals, lattice_in, dy, num_rows_total, num)


@tf.function(jit_compile=True, reduce_retracing=True, autograph=False)
def _chunk_grad_kernel(row_logits, lse, coef_blank, coef_slots, slots, valid, blank, num_static):
    return _row_grad(row_logits, lse, coef_blank, coef_slots, slots, valid, blank, num_static)


# ----------------------------------------------------------------------------------------------
# Public functions.


def rnnt_nbest_log_prob(row_logits, rows, nbest_labels, logit_lengths, nbest_lengths, blank=0):
    """Full-sum `log P(y_n|x)` `[B, N]` of every hypothesis of an N-best, on shared prefix rows.

    Equals `rnnt_log_prob` of each hypothesis on its own lattice `[T, U+1, V]` whose node
    (t, u) holds `row_logits[rows.node_rows[b, n, u], t]` (see module docstring).

    Args:
      row_logits: `[R, T, V]` joint outputs of the rows of `rows`, any float dtype (computed in
        float32): row r holds `joint(enc[row_utt[r], t], pred(prefix of hypothesis row_hyp[r]
        up to row_pos[r]))`. Padding rows (>= `rows.num_rows`) may hold anything.
      rows: `PrefixRows` from `nbest_prefix_rows(nbest_labels, nbest_lengths, nbest_count)`.
      nbest_labels: `[B, N, U]` int label ids, padded beyond `nbest_lengths`.
      logit_lengths: `[B]` valid frames T_b, 1 <= T_b <= T.
      nbest_lengths: `[B, N]` valid labels U_{b,n}, 0 <= U_{b,n} <= U.
      blank: the blank id.

    Returns:
      `[B, N]` float32; `LOG_ZERO` (-1e30) with zero gradient for padding hypotheses (no rows).
      The gradient w.r.t. `row_logits` is analytic, has its dtype and is exactly zero at padding
      rows and at frames t >= T_b.

    Raises:
      tf.errors.InvalidArgumentError: invalid lengths or labels (as `rnnt_log_prob`), or rows
        that were not made from these labels.
    """
    name = "rnnt_nbest_log_prob"
    row_logits = tf.convert_to_tensor(row_logits)
    if not row_logits.dtype.is_floating:
        raise TypeError(f"{name}: row_logits must be floating point, got {row_logits.dtype.name}")
    if row_logits.shape.rank is not None and row_logits.shape.rank != 3:
        raise tf.errors.InvalidArgumentError(None, None, f"{name}: row_logits must be [R, T, V]")
    if isinstance(rows, PrefixRows):  # static mismatch: graph building would fail first
        have = row_logits.shape[0] if row_logits.shape.rank else None
        want = tf.TensorShape(rows.row_utt.shape)[0]
        if have is not None and want is not None and have != want:
            raise tf.errors.InvalidArgumentError(
                None, None, f"{name}: row_logits must have one row per prefix row (R)"
            )
    rows, labels, logit_lengths, lengths = _prepare(
        tf.shape(row_logits), rows, nbest_labels, logit_lengths, nbest_lengths, blank, name
    )
    num_static = labels.shape[1]
    factors = vocab_factors(row_logits.shape[-1])

    @tf.custom_gradient
    def log_prob_fn(row_logits):
        # The kernels see a stop_gradient copy so that an eager outer tape records nothing.
        z = tf.stop_gradient(row_logits)
        log_prob, residuals = _forward_kernel(
            z, rows, labels, logit_lengths, lengths, blank, factors
        )

        def grad(dy):
            inputs = captured(z, rows, labels, logit_lengths, lengths, residuals)
            return _backward_kernel(*inputs, dy, blank, num_static)

        return log_prob, grad

    return log_prob_fn(row_logits)


def rnnt_nbest_log_prob_from_joint(
    encoder_out, prediction_rows, joint_fn, rows, nbest_labels, logit_lengths, nbest_lengths,
    blank=0, time_chunk=None,
):  # fmt: skip
    """`rnnt_nbest_log_prob` of `joint_fn(gather(encoder_out, row_utt), prediction_rows)`,
    computed in chunks of frames so that the whole `[R, T, V]` never exists.

    The memory-lean path of `tfkd.losses.joint_chunks` on prefix rows: the forward keeps only
    the row statistics of each chunk; the backward recomputes each chunk's logits under a tape.
    Same values and gradients (w.r.t. `encoder_out`, `prediction_rows` and the joint's
    variables) as the plain path differentiated through the joint, for one more joint pass.

    Args:
      encoder_out: `[B, T, D]` encoder side (e.g. projected), any float dtype.
      prediction_rows: `[R, Dp]` prediction side of each row: the prediction network's output of
        hypothesis `row_hyp[r]` at position `row_pos[r]`.
      joint_fn: `(enc_rows [R, Tc, D], prediction_rows [R, Dp]) -> [R, Tc, V]`, frame-wise and
        deterministic (the contract of `rnnt_log_prob_from_joint`).
      rows, nbest_labels, logit_lengths, nbest_lengths, blank: as in `rnnt_nbest_log_prob`.
      time_chunk: frames per chunk, or None for chunks of about `DEFAULT_CHUNK_BYTES` logits.

    Returns:
      `[B, N]` float32, as `rnnt_nbest_log_prob`.

    Raises:
      tf.errors.InvalidArgumentError: as `rnnt_nbest_log_prob`.
    """
    name = "rnnt_nbest_log_prob_from_joint"
    encoder_out = tf.convert_to_tensor(encoder_out)
    prediction_rows = tf.convert_to_tensor(prediction_rows)
    if not isinstance(rows, PrefixRows):
        raise TypeError(f"{name}: rows must be the PrefixRows of nbest_prefix_rows")
    row_utt = tf.cast(rows.row_utt, tf.int32)

    def row_joint(enc_chunk, pred):
        return joint_fn(tf.gather(enc_chunk, row_utt), pred)

    vocab = probe_vocab(encoder_out, prediction_rows, row_joint)
    num_rows_total, frames = tf.shape(row_utt)[0], tf.shape(encoder_out)[1]
    with tf.control_dependencies(
        [
            tf.debugging.assert_equal(
                tf.shape(prediction_rows)[0],
                num_rows_total,
                message=f"{name}: prediction_rows must have one entry per prefix row (R)",
            )
        ]
    ):
        logits_shape = tf.stack([num_rows_total, frames, tf.cast(vocab, tf.int32)])
    rows, labels, logit_lengths, lengths = _prepare(
        logits_shape, rows, nbest_labels, logit_lengths, nbest_lengths, blank, name
    )
    num_static = labels.shape[1]
    factors = vocab_factors(vocab if isinstance(vocab, int) else None)
    frames_static = static_or_tensor(frames)
    rows_static = static_or_tensor(num_rows_total)
    if isinstance(rows_static, int) and isinstance(vocab, int):
        per_frame = rows_static * vocab
    else:
        per_frame = tf.cast(num_rows_total, tf.int64) * tf.cast(vocab, tf.int64)
    num_chunks, chunk = chunking(frames_static, per_frame, time_chunk)
    padded = num_chunks * chunk
    # Small [B·N, U+1] and [R, T] tensors; plain TF (the frame count is not a static shape).
    lattice_in, slots, valid = _setup(
        rows, labels, logit_lengths, lengths, frames, tf.cast(vocab, tf.int32), blank
    )
    valid = tf.pad(valid, [[0, 0], [0, padded - frames]])

    def chunk_stats(logits, start):
        return _chunk_stats_kernel(logits, slots, frames_slice(valid, start, chunk), blank, factors)

    def forward(stats):
        log_prob, residuals = _lattice_forward_kernel(stats, lattice_in)
        return tf.reshape(log_prob, tf.shape(lengths)), residuals

    def backward(residuals, stats, dy):
        res, lat_in, lse, slots_, valid_ = captured(residuals, lattice_in, stats[0], slots, valid)
        row_blank, row_slots = _lattice_backward_kernel(
            res, lat_in, dy, num_rows_total, tf.shape(slots_)[1]
        )

        def chunk_grad(logits, coefs, start, size):
            return _chunk_grad_kernel(
                logits, *coefs, slots_, frames_slice(valid_, start, size), blank, num_static
            )

        return (lse, row_blank, row_slots), chunk_grad

    return chunked_full_sum(
        encoder_out, prediction_rows, row_joint, frames, num_chunks, chunk, chunk_stats, 3,
        forward, backward,
    )  # fmt: skip
