"""Full-sum log P(y|x) without XLA, for serving graphs.

`tfkd.losses` computes the full sum in `jit_compile=True` kernels. A SavedModel keeps that
attribute, and `tensorflow_model_server` runs XLA-compiled functions only when started with
`--xla_cpu_compilation_enabled`. Serving signatures therefore use this plain-TF forward
recursion instead (inference only; tests compare it with `tfkd.decoding.score`).

Recursion over frames, one vectorised step per frame: with
`a[u] = alpha[t-1, u] + blank[t-1, u]` and the label emissions of frame t, `label[t, u]`
(node u to u+1), alpha[t, u] = logsumexp_k<=u (a[k] + sum_{j=k}^{u-1} label[t, j]), i.e. a
cumulative log-sum-exp after removing the cumulative label sum.
"""

import tensorflow as tf

LOG_ZERO = -1e30


def full_sum_log_prob(log_probs, labels, logit_lengths, label_lengths, blank=0):
    """`log P(y|x)` summed over all alignments, from normalised joint outputs.

    Args:
      log_probs: float32 [B, T, U+1, V] log-softmax of the joint.
      labels: int32 [B, U] label ids (padding beyond `label_lengths` is ignored).
      logit_lengths: int32 [B] valid frames (>= 1 for a finite result).
      label_lengths: int32 [B] valid labels.
      blank: blank id.

    Returns:
      float32 [B]; about `LOG_ZERO` when no alignment exists (zero frames).
    """
    batch, frames = tf.shape(log_probs)[0], tf.shape(log_probs)[1]
    nodes = tf.shape(log_probs)[2]
    labels = tf.cast(labels, tf.int32)
    # Next label at node u: labels[u] for u < U (the last node's value is never used).
    next_ids = tf.pad(labels, [[0, 0], [0, 1]])[:, None, :, None]
    next_ids = tf.broadcast_to(next_ids, [batch, frames, nodes, 1])
    label_lp = tf.gather(log_probs, next_ids, batch_dims=3)[..., 0]  # [B, T, U+1]
    blank_lp = log_probs[..., blank]  # [B, T, U+1]
    u_index = tf.range(nodes)[None, :]
    label_ok = u_index < label_lengths[:, None]  # a label step from node u exists
    label_lp = tf.where(label_ok[:, None, :], label_lp, LOG_ZERO)

    def within_frame(a, label_t):
        """alpha on one frame from the mass `a` entering it; label_t [B, U+1]."""
        # Cumulative label log-prob from node 0 to node u (exclusive of u's own step).
        c = tf.cumsum(tf.maximum(label_t, LOG_ZERO), axis=1, exclusive=True)
        out = c + tf.math.cumulative_logsumexp(a - c, axis=1)
        return tf.maximum(out, LOG_ZERO)

    start = tf.where(u_index == 0, 0.0, LOG_ZERO) + tf.zeros([batch, 1])
    alpha = within_frame(start, label_lp[:, 0])
    final = tf.fill([batch], LOG_ZERO)

    def body(t, alpha, final):
        # Utterances ending at frame t-1 emit their final blank there.
        done = tf.gather(alpha + blank_lp[:, t - 1], label_lengths, batch_dims=1)
        final = tf.where(logit_lengths == t, done, final)
        enter = alpha + blank_lp[:, t - 1]
        nxt = within_frame(enter, label_lp[:, tf.minimum(t, frames - 1)])
        return t + 1, nxt, final

    _, _, final = tf.while_loop(lambda t, *_: t <= frames, body, (tf.constant(1), alpha, final))
    return final
