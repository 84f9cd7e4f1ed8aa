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
  the same fused kernel as the plain path, and pushed through the joint.

The chunk loops, the custom gradient and the joint's contract (frame-wise, deterministic) are
those of `tfkd.losses.joint_chunks`, shared with `tfkd.losses.rnnt_nbest`. Peak memory is about
two chunks of logits plus the joint's own intermediates for one chunk, instead of the logits,
their gradient and the joint's intermediates for all frames, for one more joint evaluation.

Here `joint_fn(encoder_chunk [B, Tc, D_enc], prediction_out [B, U+1, D_pred])
-> logits [B, Tc, U+1, V]`.
"""

import tensorflow as tf

from tfkd.losses.joint_chunks import (
    chunked_full_sum,
    chunking,
    frames_slice,
    probe_vocab,
    static_or_tensor,
)
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
    vocab = probe_vocab(encoder_out, prediction_out, joint_fn)
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

    def chunk_stats(logits, start):
        return _chunk_stats_kernel(
            logits, next_ids, frames_slice(blank_ok, start, chunk), blank, factors
        )

    def forward(stats):
        log_prob, lattice = _lattice_forward_kernel(stats, logit_lengths, label_lengths, ok)
        return label_scale * log_prob, (lattice, log_prob)

    def backward(residuals, stats, dy):
        lattice_in = captured(*residuals, logit_lengths, label_lengths, ok)
        coef_blank, coef_label = _lattice_backward_kernel(*lattice_in, dy, *captured(label_scale))
        lse, blank_ok_, next_ids_ = captured(stats[0], blank_ok, next_ids)

        def chunk_grad(logits, coefs, start, size):
            return _chunk_grad_kernel(
                logits, *coefs, next_ids_, frames_slice(blank_ok_, start, size), blank
            )

        return (lse, coef_blank, coef_label), chunk_grad

    return chunked_full_sum(
        encoder_out, prediction_out, joint_fn, frames, num_chunks, chunk, chunk_stats, 3,
        forward, backward,
    )  # fmt: skip


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
