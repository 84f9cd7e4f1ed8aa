"""Memory-lean full-sum RNN-T loss from encoder and prediction outputs and a joint callable.

`rnnt_loss_from_joint` gives the same value and the same gradients (w.r.t. the encoder output,
the prediction output and every trainable variable the joint reads) as
`rnnt_loss(joint_fn(encoder_out, prediction_out), ...)` differentiated by autodiff, without ever
holding the whole `[B, T, U+1, V]` logits tensor:

- forward: the joint runs on chunks of frames `[B, Tc, U+1, V]`; for each chunk one XLA kernel
  reduces the logits to `logsumexp`, blank and next-label logits (`[B, Tc, U+1]` each). alpha then
  runs on the small `[B, T, U+1]` tensors, exactly as in the plain path;
- backward: beta and the per-node coefficients `γ_∅`, `γ_y` are computed once; then each chunk's
  logits are recomputed under a `GradientTape`, the analytic `d logits` of that chunk is written by
  the same fused kernel as the plain path, and pushed through the joint with
  `tape.gradient(logits, [enc_chunk, prediction_out, *variables], output_gradients=d_logits)`.

Peak memory is about two chunks of logits (the chunk and its gradient) plus the joint's own
intermediates for one chunk, instead of the logits, their gradient and the joint's intermediates
for all frames. The price is one more joint evaluation (the recomputation).

Contract for `joint_fn(encoder_chunk [B, Tc, D_enc], prediction_out [B, U+1, D_pred])
-> logits [B, Tc, U+1, V]`: frame-wise (frame t of the output depends only on frame t of the
encoder chunk) and deterministic (no dropout: the backward pass recomputes it). It may be a Keras
layer or any callable that reads trainable variables; `tf.custom_gradient` finds them.

Eager mode: the forward chunks run with gradient recording paused (TF's internal
`stop_recording`, the mechanism `tf.recompute_grad` uses); without it, an outer tape would keep
every chunk's intermediates alive. Inside `tf.function` the gradient never traverses the forward
loop, so nothing is kept either way.
"""

import contextlib

import tensorflow as tf

from tfkd.losses.rnnt import (
    captured,
    check_fastemit_lambda,
    check_rnnt_inputs,
    check_static_dims,
    dense_grad,
    dense_stats,
    emission_masks,
    lattice_coefficients,
    lattice_forward,
    next_labels,
    sanitize_lengths,
    vocab_factors,
)

try:  # TF-internal; only used to keep eager-mode memory low (see module docstring).
    from tensorflow.python.eager.record import stop_recording
except ImportError:  # pragma: no cover - layout of a future TF
    stop_recording = contextlib.nullcontext

# Default size of one chunk of float32 logits; the chunk's gradient doubles it.
DEFAULT_CHUNK_BYTES = 32 * 2**20


# ----------------------------------------------------------------------------------------------
# XLA kernels (the dense ones run per chunk; the lattice ones on [B, T, U+1]).


@tf.function(jit_compile=True, reduce_retracing=True, autograph=False)
def _chunk_stats_kernel(logits, next_ids, blank_ok, blank, factors):
    return dense_stats(logits, next_ids, blank, factors, blank_ok)


@tf.function(jit_compile=True, reduce_retracing=True, autograph=False)
def _chunk_grad_kernel(logits, lse, coef_blank, coef_label, next_ids, blank_ok, blank):
    return dense_grad(logits, lse, coef_blank, coef_label, next_ids, blank_ok, blank)


@tf.function(jit_compile=True, reduce_retracing=True, autograph=False)
def _lattice_forward_kernel(stats, logit_lengths, label_lengths, ok):
    return lattice_forward(*stats, logit_lengths, label_lengths, ok)


@tf.function(jit_compile=True, reduce_retracing=True, autograph=False)
def _lattice_backward_kernel(lattice, log_prob, logit_lengths, label_lengths, ok, dy, scale):
    return lattice_coefficients(lattice, log_prob, logit_lengths, label_lengths, ok, dy, scale)


# ----------------------------------------------------------------------------------------------
# Chunk loops (also used by `tfkd.losses.rnnt_shared` on prefix rows).


def static_or_tensor(x):
    """A Python int when `x` is statically known, else `x`."""
    value = tf.get_static_value(x)
    return int(value) if value is not None else x


def chunking(frames, logits_per_frame, time_chunk):
    """(number of chunks, frames per chunk): balanced, so padding stays below one frame per chunk.

    `logits_per_frame` is the size of one frame of the joint output (`B·(U+1)·V`). Python ints
    when the dims are static (static chunk shapes for XLA), tensors otherwise.
    """
    if time_chunk is not None and int(time_chunk) < 1:
        raise ValueError(f"time_chunk must be >= 1 or None, got {time_chunk}")
    if isinstance(frames, int) and isinstance(logits_per_frame, int):
        if time_chunk is None:
            time_chunk = max(DEFAULT_CHUNK_BYTES // (max(logits_per_frame, 1) * 4), 1)
        time_chunk = min(int(time_chunk), max(frames, 1))
        num_chunks = max(-(-frames // time_chunk), 1)  # T = 0 is rejected by the asserts
        return num_chunks, -(-frames // num_chunks)
    frames, logits_per_frame = (tf.cast(d, tf.int64) for d in (frames, logits_per_frame))
    if time_chunk is None:
        time_chunk = tf.maximum(DEFAULT_CHUNK_BYTES // (tf.maximum(logits_per_frame, 1) * 4), 1)
    time_chunk = tf.minimum(tf.cast(time_chunk, tf.int64), tf.maximum(frames, 1))
    num_chunks = tf.maximum((frames + time_chunk - 1) // time_chunk, 1)
    chunk = (frames + num_chunks - 1) // num_chunks
    return tf.cast(num_chunks, tf.int32), tf.cast(chunk, tf.int32)


def frames_slice(x, start, size):
    """`x[:, start:start+size]` with a static size when `size` is a Python int."""
    rank = x.shape.rank
    return tf.slice(x, [0, start] + [0] * (rank - 2), [-1, size] + [-1] * (rank - 2))


def _merge_chunks(stacked):
    """`[n, B, Tc, ...] -> [B, n*Tc, ...]`."""
    rank = stacked.shape.rank
    merged = tf.transpose(stacked, [1, 0] + list(range(2, rank)))
    shape = tf.shape(merged)
    return tf.reshape(merged, tf.concat([shape[:1], [shape[1] * shape[2]], shape[3:]], 0))


def forward_chunks(enc, pred, joint_fn, chunk_stats, num_stats, num_chunks, chunk):
    """Runs the joint chunk by chunk and keeps only per-chunk statistics.

    For chunk i (frames `[i·Tc, (i+1)·Tc)` of `enc [B, n·Tc, D]`),
    `chunk_stats(joint_fn(enc_chunk, pred), i·Tc)` returns `num_stats` float32 tensors with
    frames on axis 1; each is merged over the chunks to `[X, n·Tc, ...]`.
    """
    arrays = tuple(tf.TensorArray(tf.float32, size=num_chunks) for _ in range(num_stats))

    def body(i, arrays):
        start = i * chunk
        stats = chunk_stats(joint_fn(frames_slice(enc, start, chunk), pred), start)
        return i + 1, tuple(a.write(i, s) for a, s in zip(arrays, stats, strict=True))

    # parallel_iterations=1: in graph mode the loop would otherwise run up to 10 chunks at once,
    # each with its own logits, which defeats the point of chunking.
    _, arrays = tf.while_loop(lambda i, _: i < num_chunks, body, (0, arrays), parallel_iterations=1)
    return tuple(_merge_chunks(a.stack()) for a in arrays)


def backward_chunks(enc, pred, joint_fn, variables, chunk_grad, num_chunks, chunk):
    """Recomputes each chunk's logits under a tape and pushes the analytic d(logits) through.

    `chunk_grad(logits, start)` gives the chunk's d(logits). Returns `(d_enc [B, n·Tc, D],
    d_pred, d_variables)`.
    """
    d_enc = tf.TensorArray(enc.dtype, size=num_chunks)
    d_pred = tf.zeros_like(pred)
    d_vars = [tf.zeros(v.shape, v.dtype) for v in variables]

    def body(i, d_enc, d_pred, d_vars):
        start = i * chunk
        enc_chunk = frames_slice(enc, start, chunk)
        with tf.GradientTape() as tape:
            tape.watch([enc_chunk, pred])
            tape.watch(variables)
            logits = joint_fn(enc_chunk, pred)
        grads = tape.gradient(
            logits,
            [enc_chunk, pred, *variables],
            output_gradients=chunk_grad(logits, start),
            unconnected_gradients=tf.UnconnectedGradients.ZERO,
        )
        grads = [tf.convert_to_tensor(g) for g in grads]
        d_vars = [a + g for a, g in zip(d_vars, grads[2:], strict=True)]
        return i + 1, d_enc.write(i, grads[0]), d_pred + grads[1], d_vars

    _, d_enc, d_pred, d_vars = tf.while_loop(
        lambda i, *_: i < num_chunks, body, (0, d_enc, d_pred, d_vars), parallel_iterations=1
    )
    return _merge_chunks(d_enc.stack()), d_pred, d_vars


# ----------------------------------------------------------------------------------------------
# Public functions.


def _full_sum_from_joint(
    encoder_out, prediction_out, joint_fn, labels, logit_lengths, label_lengths, blank,
    time_chunk, fastemit_lambda, name,
):  # fmt: skip
    encoder_out = tf.convert_to_tensor(encoder_out)
    prediction_out = tf.convert_to_tensor(prediction_out)
    labels, logit_lengths, label_lengths = (
        tf.convert_to_tensor(x) for x in (labels, logit_lengths, label_lengths)
    )
    if not isinstance(blank, int) or blank < 0:
        raise ValueError(f"{name}: blank must be a non-negative Python int, got {blank!r}")
    tf.debugging.assert_rank(encoder_out, 3, message=f"{name}: encoder_out must be [B, T, D]")
    tf.debugging.assert_rank(
        prediction_out, 3, message=f"{name}: prediction_out must be [B, U+1, D]"
    )
    # A one-frame probe builds a Keras joint outside any loop and tells V (static if possible).
    with stop_recording():
        probe = joint_fn(tf.stop_gradient(encoder_out[:, :1]), tf.stop_gradient(prediction_out))
    vocab = probe.shape[-1] if probe.shape[-1] is not None else tf.shape(probe)[-1]
    static_shape = [encoder_out.shape[0], encoder_out.shape[1], prediction_out.shape[1], vocab]
    static_shape = [d if isinstance(d, int) else None for d in static_shape]
    check_static_dims(static_shape, labels, logit_lengths, label_lengths, name)
    if encoder_out.shape[0] is not None and prediction_out.shape[0] is not None:
        if encoder_out.shape[0] != prediction_out.shape[0]:
            raise tf.errors.InvalidArgumentError(
                None, None, f"{name}: encoder_out and prediction_out batch sizes differ"
            )
    batch, frames = tf.shape(encoder_out)[0], tf.shape(encoder_out)[1]
    nodes_u = tf.shape(prediction_out)[1]
    with tf.control_dependencies(
        [
            tf.debugging.assert_equal(
                tf.shape(prediction_out)[0],
                batch,
                message=f"{name}: encoder_out and prediction_out batch sizes differ",
            )
        ]
    ):
        logits_shape = tf.stack([batch, frames, nodes_u, tf.cast(vocab, tf.int32)])
    labels, logit_lengths, label_lengths = check_rnnt_inputs(
        logits_shape, labels, logit_lengths, label_lengths, blank, name
    )
    per_frame = [static_or_tensor(batch), static_or_tensor(nodes_u), vocab]
    if all(isinstance(d, int) for d in per_frame):
        logits_per_frame = per_frame[0] * per_frame[1] * per_frame[2]
    else:
        logits_per_frame = tf.reduce_prod([tf.cast(d, tf.int64) for d in per_frame])
    num_chunks, chunk = chunking(static_or_tensor(frames), logits_per_frame, time_chunk)
    factors = vocab_factors(vocab if isinstance(vocab, int) else None)
    label_scale = 1.0 + tf.cast(fastemit_lambda, tf.float32)
    padded = num_chunks * chunk
    labels, logit_lengths, label_lengths, ok = sanitize_lengths(
        labels, logit_lengths, label_lengths, frames, tf.cast(vocab, tf.int32), blank
    )
    next_ids = next_labels(labels, label_lengths, blank)
    blank_ok, _ = emission_masks(padded, nodes_u, logit_lengths, label_lengths)

    @tf.custom_gradient
    def full_sum(enc, pred):
        enc_padded = tf.pad(tf.stop_gradient(enc), [[0, 0], [0, padded - frames], [0, 0]])
        pred_const = tf.stop_gradient(pred)
        with stop_recording():
            stats = forward_chunks(
                enc_padded,
                pred_const,
                joint_fn,
                lambda logits, start: _chunk_stats_kernel(
                    logits, next_ids, frames_slice(blank_ok, start, chunk), blank, factors
                ),
                3,
                num_chunks,
                chunk,
            )
            stats = tuple(s[:, :frames] for s in stats)
            log_prob, lattice = _lattice_forward_kernel(stats, logit_lengths, label_lengths, ok)

        def grad(dy, variables=None):
            variables = list(variables or [])
            lattice_in = captured(lattice, log_prob, logit_lengths, label_lengths, ok)
            coef_blank, coef_label = _lattice_backward_kernel(
                *lattice_in, dy, *captured(label_scale)
            )
            lse, blank_ok_, enc_, pred_, next_ids_, n_chunks, size = captured(
                stats[0], blank_ok, enc_padded, pred_const, next_ids, num_chunks, chunk
            )
            pad = [[0, 0], [0, padded - frames], [0, 0]]
            coefs = tuple(tf.pad(x, pad) for x in (lse, coef_blank, coef_label))

            def chunk_grad(logits, start):
                return _chunk_grad_kernel(
                    logits,
                    *(frames_slice(x, start, size) for x in coefs),
                    next_ids_,
                    frames_slice(blank_ok_, start, size),
                    blank,
                )

            d_enc, d_pred, d_vars = backward_chunks(
                enc_, pred_, joint_fn, variables, chunk_grad, n_chunks, size
            )
            if not variables:
                return d_enc[:, :frames], d_pred
            return (d_enc[:, :frames], d_pred), d_vars

        return label_scale * log_prob, grad

    return full_sum(encoder_out, prediction_out)


def rnnt_log_prob_from_joint(
    encoder_out, prediction_out, joint_fn, labels, logit_lengths, label_lengths, blank=0,
    time_chunk=None,
):  # fmt: skip
    """`log P(y|x)` `[B]` as `rnnt_log_prob(joint_fn(encoder_out, prediction_out), ...)`, chunked.

    Args:
      encoder_out: `[B, T, D_enc]` encoder output, any float dtype.
      prediction_out: `[B, U+1, D_pred]` prediction-network output.
      joint_fn: `(enc_chunk [B, Tc, D_enc], prediction_out) -> logits [B, Tc, U+1, V]`,
        frame-wise and deterministic (see module docstring).
      labels, logit_lengths, label_lengths, blank: as in `rnnt_log_prob`.
      time_chunk: frames per chunk (rounded down so that chunks are equal), or None for chunks
        of about `DEFAULT_CHUNK_BYTES` of float32 logits.

    Returns:
      `[B]` float32; gradients flow to `encoder_out`, `prediction_out` and the joint's variables.

    Raises:
      tf.errors.InvalidArgumentError: on invalid lengths or labels (see `check_rnnt_inputs`).
    """
    return _full_sum_from_joint(
        encoder_out, prediction_out, joint_fn, labels, logit_lengths, label_lengths, blank,
        time_chunk, 0.0, "rnnt_log_prob_from_joint",
    )  # fmt: skip


def rnnt_loss_from_joint(
    encoder_out, prediction_out, joint_fn, labels, logit_lengths, label_lengths, blank=0,
    time_chunk=None, fastemit_lambda=0.0,
):  # fmt: skip
    """RNN-T loss `−log P(y|x)` `[B]` as `rnnt_loss(joint_fn(encoder_out, prediction_out), ...)`.

    Same arguments as `rnnt_log_prob_from_joint`, plus `fastemit_lambda` as in `rnnt_loss` (the
    value returned is then `(1+λ)·(−log P(y|x))`).

    Raises:
      ValueError: a Python `fastemit_lambda` < 0 (before the joint runs).
      tf.errors.InvalidArgumentError: on invalid lengths or labels, or a tensor
        `fastemit_lambda` < 0 (outside XLA).
    """
    fastemit_lambda = check_fastemit_lambda(fastemit_lambda, "rnnt_loss_from_joint")
    return -_full_sum_from_joint(
        encoder_out, prediction_out, joint_fn, labels, logit_lengths, label_lengths, blank,
        time_chunk, fastemit_lambda, "rnnt_loss_from_joint",
    )  # fmt: skip
