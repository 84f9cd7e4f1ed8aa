"""Full-sum RNN-T loss and log-likelihood with an analytic, XLA-fused gradient (METHODS.md §1).

Shapes: `logits [B, T, U+1, V]` (any float dtype, computed in float32), `labels [B, U]` int32
padded, `logit_lengths [B]` (valid frames T_b), `label_lengths [B]` (valid labels U_b).

How the big `[B, T, U+1, V]` tensor is touched (and nothing else of that size exists):
- forward: one XLA kernel (`_forward_kernel`) gathers two columns, the blank logit and the logit
  of the next label `y_{u+1}`, and reads the logits once for `logsumexp` over V, shifted by the
  larger of those two instead of the row max, so no separate max pass is needed (see
  `logsumexp_last`, which also falls back to the max only on overflow); everything after that
  (alpha over the anti-diagonals) runs on `[B, T, U+1]` tensors in the same kernel;
- backward: one XLA kernel (`_backward_kernel`: beta, occupancies, then the dense pass) reads the
  logits once more and writes the gradient once:
  `dz = dy * ([k=∅]·γ_∅ + [k=y_{u+1}]·(1+λ)·γ_y − softmax(z)·(γ_∅ + (1+λ)·γ_y))`.
  The indicator terms are `k == iota` comparisons inside that fused expression, so no one-hot,
  scatter or log-softmax copy is ever materialised; the gradient is the only new full-size tensor.

alpha and beta run over the T+U anti-diagonals `n = t + u` of the lattice, vectorised across the
batch: the `[B, T, U+1]` emission tensors are skewed (pad + reshape, no gather) into
`[T+U, B, U+1]` so that diagonal n is the contiguous slice `x[n]`, with `x[n][b, u] = x(n-u, u)`.

Log-zero is the finite `LOG_ZERO = -1e30`, combined with `max + log1p(exp(-|a-b|))`, so neither the
recursions nor the gradient ever see `inf - inf`. Nodes outside an utterance (t >= T_b or u > U_b)
get log-zero emissions and a masked gradient, which is exactly 0 there even if the padded logits
hold garbage.

Input checks (`InvalidArgumentError` with a message naming the problem) run in the public
functions, outside the XLA kernels, because XLA cannot execute `Assert`: the public functions are
plain Python (eager or traced into the caller's graph), the kernels are
`tf.function(jit_compile=True)`s called from a `tf.custom_gradient`. Inside a caller's own
`tf.function(jit_compile=True)` the asserts are compiled away; then an invalid utterance yields a
NaN loss (and a zero gradient) instead of a plausible number, and `check_rnnt_inputs` can be run
eagerly or in a non-compiled function on the same tensors beforehand.
"""

import functools

import tensorflow as tf

LOG_ZERO = -1e30
_REDUCE_WINDOW = 32  # XLA:CPU tree-reduction window (see logsumexp_last)


# ----------------------------------------------------------------------------------------------
# Input checks (run on the host graph, never inside the XLA kernels).


def check_rnnt_inputs(
    logits_shape, labels, logit_lengths, label_lengths, blank=0, name="rnnt", names=None
):
    """Asserts that lengths and labels fit the lattice; returns the checked, int32 inputs.

    Args:
      logits_shape: int32 `[4]`, the shape `[B, T, U+1, V]` of the (possibly never materialised)
        logits.
      labels: `[B, U]` integer label ids, padded beyond `label_lengths`.
      logit_lengths: `[B]` valid frames per utterance.
      label_lengths: `[B]` valid labels per utterance.
      blank: the blank id (Python int).
      name: prefix of the error messages.
      names: optional `{"labels": ..., "logit_lengths": ..., "label_lengths": ...}`: what the
        messages call these arguments (a caller that flattens its own inputs into them).

    Returns:
      `(labels, logit_lengths, label_lengths)` as int32, carrying control dependencies on the
      asserts so that, in graph mode, nothing downstream runs on invalid input.

    Raises:
      tf.errors.InvalidArgumentError: T = 0 (some `logit_lengths < 1`), lengths beyond the tensor
        dims, batch sizes or U that disagree, label ids outside [0, V) or equal to blank at
        positions `< label_lengths`, or blank outside [0, V).
    """
    names = {k: k for k in ("labels", "logit_lengths", "label_lengths")} | dict(names or {})
    y, t_len, u_len = names["labels"], names["logit_lengths"], names["label_lengths"]
    labels = tf.convert_to_tensor(labels)
    logit_lengths = tf.convert_to_tensor(logit_lengths)
    label_lengths = tf.convert_to_tensor(label_lengths)
    for value, what in (
        (labels, y),
        (logit_lengths, t_len),
        (label_lengths, u_len),
    ):
        if not value.dtype.is_integer:
            raise TypeError(f"{name}: {what} must be integers, got {value.dtype.name}")
    labels = tf.cast(labels, tf.int32)
    logit_lengths = tf.cast(logit_lengths, tf.int32)
    label_lengths = tf.cast(label_lengths, tf.int32)
    tf.debugging.assert_rank(labels, 2, message=f"{name}: {y} must be [B, U]")
    tf.debugging.assert_rank(logit_lengths, 1, message=f"{name}: {t_len} must be [B]")
    tf.debugging.assert_rank(label_lengths, 1, message=f"{name}: {u_len} must be [B]")
    batch, frames, nodes_u, vocab = tf.unstack(tf.cast(logits_shape, tf.int32), num=4)
    max_labels = tf.shape(labels)[1]
    shape_checks = [
        tf.debugging.assert_equal(
            tf.shape(labels)[0],
            batch,
            message=f"{name}: {y}.shape[0] must equal the batch size of the logits",
        ),
        tf.debugging.assert_equal(
            max_labels + 1,
            nodes_u,
            message=f"{name}: logits.shape[2] (U+1) must equal {y}.shape[1] + 1",
        ),
        tf.debugging.assert_equal(
            tf.shape(logit_lengths)[0],
            batch,
            message=f"{name}: {t_len} must have one entry per utterance",
        ),
        tf.debugging.assert_equal(
            tf.shape(label_lengths)[0],
            batch,
            message=f"{name}: {u_len} must have one entry per utterance",
        ),
        tf.debugging.assert_less(blank, vocab, message=f"{name}: blank must be in [0, V)"),
    ]
    with tf.control_dependencies(shape_checks):
        label_pos = tf.range(max_labels)[None, :] < label_lengths[:, None]
        checks = shape_checks + [
            tf.debugging.assert_greater_equal(
                logit_lengths,
                1,
                message=f"{name}: {t_len} must be >= 1 (T = 0 is not a valid utterance)",
            ),
            tf.debugging.assert_less_equal(
                logit_lengths,
                frames,
                message=f"{name}: {t_len} must be <= the number of frames T of the logits",
            ),
            tf.debugging.assert_non_negative(
                label_lengths, message=f"{name}: {u_len} must be >= 0"
            ),
            tf.debugging.assert_less_equal(
                label_lengths,
                max_labels,
                message=f"{name}: {u_len} must be <= {y}.shape[1] (U)",
            ),
            tf.debugging.assert_equal(
                tf.reduce_all(~label_pos | ((labels >= 0) & (labels < vocab))),
                True,
                message=f"{name}: label ids must be in [0, V) at positions < {u_len}",
            ),
            tf.debugging.assert_equal(
                tf.reduce_all(~label_pos | (labels != blank)),
                True,
                message=f"{name}: {y} must not contain the blank id at positions < {u_len}",
            ),
        ]
    with tf.control_dependencies(checks):
        return tf.identity(labels), tf.identity(logit_lengths), tf.identity(label_lengths)


def check_static_dims(logits_shape, labels, logit_lengths, label_lengths, name):
    """Raises at trace time on mismatches already visible in the static shapes.

    Graph building would otherwise fail first with a less clear shape error; the error type is the
    one of the runtime asserts in `check_rnnt_inputs`. `logits_shape` is a `TensorShape` (or list)
    `[B, T, U+1, V]` with None for unknown dims.
    """
    dims = list(logits_shape)
    nodes_u = None if labels.shape.rank != 2 or labels.shape[1] is None else labels.shape[1] + 1
    pairs = [
        (
            labels.shape[0] if labels.shape.rank else None,
            dims[0],
            "labels.shape[0] must equal the batch size of the logits",
        ),
        (nodes_u, dims[2], "logits.shape[2] (U+1) must equal labels.shape[1] + 1"),
        (
            logit_lengths.shape[0] if logit_lengths.shape.rank else None,
            dims[0],
            "logit_lengths must have one entry per utterance",
        ),
        (
            label_lengths.shape[0] if label_lengths.shape.rank else None,
            dims[0],
            "label_lengths must have one entry per utterance",
        ),
    ]
    for got, want, message in pairs:
        if got is not None and want is not None and got != want:
            raise tf.errors.InvalidArgumentError(None, None, f"{name}: {message}")


def captured(*tensors):
    """`tf.identity` of each forward tensor a custom gradient uses (nested structures allowed).

    When the gradient is built inside a `tf.cond` branch (cond_v2), a tensor of the forward
    branch passed straight into a `jit_compile` function is not captured ("Could not find
    external tensor capture"); an identity op in the gradient graph is.
    """
    return tf.nest.map_structure(
        lambda x: tf.identity(x) if isinstance(x, tf.Tensor) else x, tensors
    )


# ----------------------------------------------------------------------------------------------
# Lattice helpers on the small [B, T, U+1] tensors. All run inside the XLA kernels.


def _logaddexp(a, b):
    m = tf.maximum(a, b)
    return m + tf.math.log1p(tf.exp(-tf.abs(a - b)))


def skew(x, fill=LOG_ZERO):
    """`[B, T, U+1] -> [T+U, B, U+1]` with `out[n, b, u] = x[b, n-u, u]` (fill where off-lattice).

    Row u of the transposed `[B, U+1, T]` tensor is shifted right by u: pad each row to length
    T+U+1, flatten, and re-read the flat buffer with row stride T+U. No gather is needed.
    """
    batch, frames, nodes_u = tf.unstack(tf.shape(x))
    diags = frames + nodes_u - 1
    xt = tf.pad(tf.transpose(x, [0, 2, 1]), [[0, 0], [0, 0], [0, nodes_u]], constant_values=fill)
    flat = tf.reshape(xt, [batch, -1])[:, : nodes_u * diags]
    return tf.transpose(tf.reshape(flat, [batch, nodes_u, diags]), [2, 0, 1])


def unskew(y, frames):
    """Inverse of `skew`: `[T+U, B, U+1] -> [B, T, U+1]` with `out[b, t, u] = y[t+u, b, u]`."""
    diags, batch, nodes_u = tf.unstack(tf.shape(y))
    flat = tf.reshape(tf.transpose(y, [1, 2, 0]), [batch, -1])
    flat = tf.pad(flat, [[0, 0], [0, nodes_u]])
    return tf.transpose(tf.reshape(flat, [batch, nodes_u, diags + 1])[:, :, :frames], [0, 2, 1])


def alpha_diagonals(blank_sk, label_sk):
    """Forward variables over the anti-diagonals.

    Args:
      blank_sk: `[N, B, U+1]` skewed log P(∅|t,u), log-zero off the lattice (N = T+U).
      label_sk: `[N, B, U+1]` skewed log P(y_{u+1}|t,u), log-zero off the lattice and at u >= U_b.

    Returns:
      `[N+1, B, U+1]`: entry n holds alpha(n-u, u). Entry T_b+U_b at u = U_b is log P(y|x), the
      "virtual" node reached by the final blank (its other inflow is log-zero by masking).
    """
    diags, batch, nodes_u = tf.unstack(tf.shape(blank_sk))
    is_first = tf.range(nodes_u)[None, :] == 0
    alpha0 = tf.where(is_first, 0.0, LOG_ZERO) + tf.zeros([batch, 1])
    edge = tf.fill([batch, 1], LOG_ZERO)
    out = tf.TensorArray(tf.float32, size=diags + 1, element_shape=alpha0.shape).write(0, alpha0)

    def body(n, alpha, out):
        stay = alpha + blank_sk[n]
        move = tf.concat([edge, (alpha + label_sk[n])[:, :-1]], axis=1)
        alpha = tf.maximum(_logaddexp(stay, move), LOG_ZERO)
        return n + 1, alpha, out.write(n + 1, alpha)

    _, _, out = tf.while_loop(lambda n, *_: n < diags, body, (0, alpha0, out))
    return out.stack()


def beta_diagonals(blank_sk, label_sk, logit_lengths, label_lengths):
    """Backward variables over the anti-diagonals: `[N+1, B, U+1]`, entry n holds beta(n-u, u).

    beta(T_b, U_b) = 0 is the virtual end node, so beta(T_b-1, U_b) = log P(∅|T_b-1, U_b); every
    other node with t >= T_b or u > U_b stays log-zero because its emissions are log-zero.
    """
    diags, batch, nodes_u = tf.unstack(tf.shape(blank_sk))
    end_diag = logit_lengths + label_lengths
    is_end_u = tf.range(nodes_u)[None, :] == label_lengths[:, None]
    edge = tf.fill([batch, 1], LOG_ZERO)

    def with_end(n, beta):
        return tf.where((end_diag == n)[:, None] & is_end_u, 0.0, beta)

    beta_last = with_end(diags, tf.fill([batch, nodes_u], LOG_ZERO))
    out = tf.TensorArray(tf.float32, size=diags + 1, element_shape=beta_last.shape)
    out = out.write(diags, beta_last)

    def body(n, beta, out):
        stay = beta + blank_sk[n]
        move = tf.concat([beta[:, 1:], edge], axis=1) + label_sk[n]
        beta = with_end(n, tf.maximum(_logaddexp(stay, move), LOG_ZERO))
        return n - 1, beta, out.write(n, beta)

    _, _, out = tf.while_loop(lambda n, *_: n >= 0, body, (diags - 1, beta_last, out))
    return out.stack()


def emission_masks(frames, nodes_u, logit_lengths, label_lengths):
    """Valid lattice nodes `[B, T, U+1]`: blank leaves (t, u) when t < T_b, u <= U_b; a label
    leaves it only when also u < U_b."""
    t = tf.range(frames)[None, :, None]
    u = tf.range(nodes_u)[None, None, :]
    in_time = t < logit_lengths[:, None, None]
    blank_ok = in_time & (u <= label_lengths[:, None, None])
    label_ok = in_time & (u < label_lengths[:, None, None])
    return blank_ok, label_ok


def next_labels(labels, label_lengths, blank):
    """`[B, U+1]` id of y_{u+1} at node u: the label, or blank where there is none (masked)."""
    u = tf.range(tf.shape(labels)[1])[None, :]
    labels = tf.where(u < label_lengths[:, None], labels, blank)
    return tf.pad(labels, [[0, 0], [0, 1]], constant_values=blank)


def lattice_log_probs(lse, blank_logit, label_logit, logit_lengths, label_lengths):
    """Masked log P(∅|t,u) and log P(y_{u+1}|t,u), each `[B, T, U+1]`."""
    frames, nodes_u = tf.shape(lse)[1], tf.shape(lse)[2]
    blank_ok, label_ok = emission_masks(frames, nodes_u, logit_lengths, label_lengths)
    blank_lp = tf.where(blank_ok, blank_logit - lse, LOG_ZERO)
    label_lp = tf.where(label_ok, label_logit - lse, LOG_ZERO)
    return blank_lp, label_lp


def sanitize_lengths(labels, logit_lengths, label_lengths, frames, vocab, blank):
    """Clips lengths into the tensor dims and flags invalid utterances `[B]` (XLA can't assert)."""
    max_labels = tf.shape(labels)[1]
    label_pos = tf.range(max_labels)[None, :] < label_lengths[:, None]
    ok_labels = (labels >= 0) & (labels < vocab) & (labels != blank)
    ok = (
        (logit_lengths >= 1)
        & (logit_lengths <= frames)
        & (label_lengths >= 0)
        & (label_lengths <= max_labels)
        & tf.reduce_all(~label_pos | ok_labels, axis=1)
    )
    logit_lengths = tf.clip_by_value(logit_lengths, 1, frames)
    label_lengths = tf.clip_by_value(label_lengths, 0, max_labels)
    labels = tf.where(ok_labels, labels, blank)
    return labels, logit_lengths, label_lengths, ok


def final_log_prob(alpha_sk, logit_lengths, label_lengths, ok):
    """log P(y|x) `[B]` read at the virtual end node; NaN for utterances flagged invalid."""
    batch = tf.shape(logit_lengths)[0]
    idx = tf.stack([logit_lengths + label_lengths, tf.range(batch), label_lengths], axis=1)
    log_prob = tf.gather_nd(alpha_sk, idx)
    return tf.where(ok, log_prob, float("nan"))


def occupancies(alpha_sk, beta_sk, blank_sk, label_sk, log_prob, frames):
    """γ_∅ and γ_y `[B, T, U+1]`: probability that the path leaves (t, u) by blank / by label."""
    log_prob = tf.where(tf.math.is_finite(log_prob), log_prob, 0.0)[None, :, None]
    alpha = alpha_sk[:-1]
    beta_next = beta_sk[1:]
    beta_up = tf.pad(beta_next[:, :, 1:], [[0, 0], [0, 0], [0, 1]], constant_values=LOG_ZERO)
    gamma_blank = tf.exp(alpha + blank_sk + beta_next - log_prob)
    gamma_label = tf.exp(alpha + label_sk + beta_up - log_prob)
    return unskew(gamma_blank, frames), unskew(gamma_label, frames)


# ----------------------------------------------------------------------------------------------
# The two XLA kernels of the plain path.


@functools.cache
def _small_factors(n, limit=_REDUCE_WINDOW):
    """Factors of n, each <= limit, fewest first and the largest one last; None if impossible."""
    if n <= limit:
        return [n]
    best = None
    for d in range(limit, 1, -1):
        if n % d == 0:
            rest = _small_factors(n // d, limit)
            if rest is not None and (best is None or len(rest) + 1 < len(best)):
                best = [*rest, d]
    return best


def vocab_factors(vocab):
    """Static split of V used by `logsumexp_last`, or None (V unknown or not splittable)."""
    if vocab is None:
        return None
    factors = _small_factors(int(vocab))
    return tuple(factors) if factors is not None and len(factors) > 1 else None


def logsumexp_last(z, factors, shift=None, valid=None):
    """`logsumexp` over the last axis of a float32 tensor, fused with its `exp` by XLA on CPU.

    XLA:CPU rewrites a reduction over a dimension longer than 32 into reduce-window + reduce
    (TreeReductionRewriter), which stops `exp` from fusing into the reduction and materialises a
    full-size `exp(z - max)` tensor. Reducing over V split into dims of at most 32 (`factors`, a
    free reshape) keeps the reduction whole. `factors=None` uses the plain form (V unknown at
    trace time, or with a prime factor above 32).

    The textbook form reads z twice (max, then the sum). With `shift`, a per-row value that is an
    element of the row (e.g. the blank logit), one read suffices: `shift + log Σ exp(z - shift)`.
    The sum is >= 1, so it cannot underflow, and its relative precision does not depend on the
    shift. It overflows only if some logit exceeds the shift by ~88; if that happens at any
    `valid` row, a `tf.cond` recomputes everything with the max (a second pass, only then).
    """
    if factors is not None:
        axes = list(range(-len(factors), 0))
        z = tf.reshape(z, tf.concat([tf.shape(z)[:-1], factors], 0))
    else:
        axes = [-1]
    rows = tf.shape(z)[: -len(axes)]

    def shifted(m):
        m = tf.reshape(m, tf.concat([rows, [1] * len(axes)], 0))
        lse = m + tf.math.log(tf.reduce_sum(tf.exp(z - m), axis=axes, keepdims=True))
        return tf.reshape(lse, rows)

    def exact():
        return shifted(tf.reduce_max(z, axis=axes))

    if shift is None:
        return exact()
    fast = shifted(shift)
    overflow = ~tf.math.is_finite(fast)
    if valid is not None:
        overflow &= valid
    return tf.cond(tf.reduce_any(overflow), exact, lambda: fast)


def dense_stats(logits, next_ids, blank, factors, valid=None):
    """One read of the logits: logsumexp over V, blank logit and next-label logit, `[B, T, U+1]`.

    `valid` `[B, T, U+1]` marks the nodes whose logsumexp matters (see `logsumexp_last`).
    """
    blank_logit = tf.cast(logits[..., blank], tf.float32)
    ids = tf.broadcast_to(next_ids[:, None, :, None], tf.concat([tf.shape(logits)[:3], [1]], 0))
    label_logit = tf.cast(tf.gather(logits, ids, axis=3, batch_dims=3)[..., 0], tf.float32)
    shift = tf.maximum(blank_logit, label_logit)
    lse = logsumexp_last(tf.cast(logits, tf.float32), factors, shift, valid)
    return lse, blank_logit, label_logit


def dense_grad(logits, lse, coef_blank, coef_label, next_ids, blank_ok, blank):
    """One read of the logits and one write of the gradient, fused by XLA:
    `[k=∅]·c_∅ + [k=y_{u+1}]·c_y − softmax(z)·(c_∅ + c_y)`, exactly 0 at invalid nodes."""
    z = tf.cast(logits, tf.float32)
    k = tf.range(tf.shape(logits)[-1])
    soft = tf.exp(z - lse[..., None])
    grad = (
        tf.where(k == blank, coef_blank[..., None], 0.0)
        + tf.where(k == next_ids[:, None, :, None], coef_label[..., None], 0.0)
        - soft * (coef_blank + coef_label)[..., None]
    )
    return tf.cast(tf.where(blank_ok[..., None], grad, 0.0), logits.dtype)


def lattice_forward(lse, blank_logit, label_logit, logit_lengths, label_lengths, ok):
    """Masked lattice log-probs, skewed, and alpha: `(log_prob [B], lattice)`.

    `lattice = (blank_sk, label_sk, alpha_sk)` is everything `lattice_coefficients` needs.
    """
    blank_lp, label_lp = lattice_log_probs(
        lse, blank_logit, label_logit, logit_lengths, label_lengths
    )
    blank_sk, label_sk = skew(blank_lp), skew(label_lp)
    alpha_sk = alpha_diagonals(blank_sk, label_sk)
    log_prob = final_log_prob(alpha_sk, logit_lengths, label_lengths, ok)
    return log_prob, (blank_sk, label_sk, alpha_sk)


def lattice_coefficients(lattice, log_prob, logit_lengths, label_lengths, ok, dy, label_scale):
    """beta, then the per-node gradient coefficients `(dy·γ_∅, dy·(1+λ)·γ_y)`, `[B, T, U+1]`."""
    blank_sk, label_sk, alpha_sk = lattice
    frames = tf.shape(alpha_sk)[0] - tf.shape(alpha_sk)[2]
    beta_sk = beta_diagonals(blank_sk, label_sk, logit_lengths, label_lengths)
    gamma_blank, gamma_label = occupancies(alpha_sk, beta_sk, blank_sk, label_sk, log_prob, frames)
    dy = tf.where(ok, tf.cast(dy, tf.float32), 0.0)[:, None, None]
    return dy * gamma_blank, (dy * label_scale) * gamma_label


@tf.function(jit_compile=True, reduce_retracing=True, autograph=False)
def _forward_kernel(logits, labels, logit_lengths, label_lengths, blank, factors):
    frames, nodes_u, vocab = tf.shape(logits)[1], tf.shape(logits)[2], tf.shape(logits)[3]
    labels, logit_lengths, label_lengths, ok = sanitize_lengths(
        labels, logit_lengths, label_lengths, frames, vocab, blank
    )
    next_ids = next_labels(labels, label_lengths, blank)
    blank_ok, _ = emission_masks(frames, nodes_u, logit_lengths, label_lengths)
    lse, blank_logit, label_logit = dense_stats(logits, next_ids, blank, factors, blank_ok)
    log_prob, lattice = lattice_forward(
        lse, blank_logit, label_logit, logit_lengths, label_lengths, ok
    )
    return log_prob, (lse, lattice)


@tf.function(jit_compile=True, reduce_retracing=True, autograph=False)
def _backward_kernel(
    logits, labels, logit_lengths, label_lengths, log_prob, residuals, dy, label_scale, blank
):
    lse, lattice = residuals
    frames, nodes_u, vocab = tf.shape(logits)[1], tf.shape(logits)[2], tf.shape(logits)[3]
    labels, logit_lengths, label_lengths, ok = sanitize_lengths(
        labels, logit_lengths, label_lengths, frames, vocab, blank
    )
    coef_blank, coef_label = lattice_coefficients(
        lattice, log_prob, logit_lengths, label_lengths, ok, dy, label_scale
    )
    blank_ok, _ = emission_masks(frames, nodes_u, logit_lengths, label_lengths)
    next_ids = next_labels(labels, label_lengths, blank)
    return dense_grad(logits, lse, coef_blank, coef_label, next_ids, blank_ok, blank)


def _full_sum(logits, labels, logit_lengths, label_lengths, blank, fastemit_lambda):
    """`(1+λ)·log P(y|x)` `[B]` whose gradient is the (FastEmit-scaled) analytic one."""
    label_scale = 1.0 + tf.cast(fastemit_lambda, tf.float32)

    @tf.custom_gradient
    def full_sum(logits):
        # Kernels see a stop_gradient copy (no data copy) so that, in eager mode, an outer tape
        # does not record them and keep their intermediates alive: the gradient is ours.
        z = tf.stop_gradient(logits)
        log_prob, residuals = _forward_kernel(
            z, labels, logit_lengths, label_lengths, blank, vocab_factors(logits.shape[-1])
        )

        def grad(dy):
            inputs = captured(z, labels, logit_lengths, label_lengths, log_prob, residuals)
            return _backward_kernel(*inputs, dy, label_scale, blank)

        return label_scale * log_prob, grad

    return full_sum(logits)


def _prepare(logits, labels, logit_lengths, label_lengths, blank, name):
    logits = tf.convert_to_tensor(logits)
    if not logits.dtype.is_floating:
        raise TypeError(f"{name}: logits must be floating point, got {logits.dtype.name}")
    tf.debugging.assert_rank(logits, 4, message=f"{name}: logits must be [B, T, U+1, V]")
    labels, logit_lengths, label_lengths = (
        tf.convert_to_tensor(x) for x in (labels, logit_lengths, label_lengths)
    )
    if not isinstance(blank, int) or blank < 0:
        raise ValueError(f"{name}: blank must be a non-negative Python int, got {blank!r}")
    check_static_dims(logits.shape, labels, logit_lengths, label_lengths, name)
    labels, logit_lengths, label_lengths = check_rnnt_inputs(
        tf.shape(logits), labels, logit_lengths, label_lengths, blank, name
    )
    return logits, labels, logit_lengths, label_lengths


def rnnt_log_prob(logits, labels, logit_lengths, label_lengths, blank=0):
    """Full-sum log-likelihood `log P(y|x)` of an RNN-T lattice, summed over all alignments.

    Args:
      logits: `[B, T, U+1, V]` unnormalised joint outputs, any float dtype (computed in float32).
      labels: `[B, U]` int32 label ids, padded beyond `label_lengths` (padding may be anything).
      logit_lengths: `[B]` valid frames T_b, 1 <= T_b <= T.
      label_lengths: `[B]` valid labels U_b, 0 <= U_b <= U.
      blank: the blank id.

    Returns:
      `[B]` float32 `log P(y|x)`. Its gradient w.r.t. `logits` is analytic (see module docstring)
      and has the dtype of `logits`; it is exactly zero at frames t >= T_b and nodes u > U_b.

    Raises:
      tf.errors.InvalidArgumentError: on invalid lengths or labels (see `check_rnnt_inputs`).
    """
    name = "rnnt_log_prob"
    logits, labels, logit_lengths, label_lengths = _prepare(
        logits, labels, logit_lengths, label_lengths, blank, name
    )
    return _full_sum(logits, labels, logit_lengths, label_lengths, blank, 0.0)


def rnnt_loss(logits, labels, logit_lengths, label_lengths, blank=0, fastemit_lambda=0.0):
    """RNN-T loss `−log P(y|x)` per utterance, optionally with FastEmit (Yu et al. 2021).

    Args:
      logits, labels, logit_lengths, label_lengths, blank: as in `rnnt_log_prob`.
      fastemit_lambda: FastEmit λ >= 0 (float or scalar tensor). With λ > 0 the gradient of the
        label-emission log-probs log P(y_{u+1}|t,u) is scaled by (1+λ) while the blank part is
        unchanged, and the value returned is `(1+λ)·(−log P(y|x))`, the value of the regularised
        objective `−log P − λ·log Σ_t α(t,u)·P(y_{u+1}|t,u)·β(t,u+1)` (the inner sum equals
        P(y|x) for every u), as in NeMo's implementation.

    Returns:
      `[B]` float32 loss.

    Raises:
      ValueError: a Python `fastemit_lambda` < 0.
      tf.errors.InvalidArgumentError: on invalid lengths or labels (see `check_rnnt_inputs`), or
        a tensor `fastemit_lambda` < 0 (outside XLA).
    """
    name = "rnnt_loss"
    fastemit_lambda = check_fastemit_lambda(fastemit_lambda, name)
    logits, labels, logit_lengths, label_lengths = _prepare(
        logits, labels, logit_lengths, label_lengths, blank, name
    )
    return -_full_sum(logits, labels, logit_lengths, label_lengths, blank, fastemit_lambda)


def check_fastemit_lambda(fastemit_lambda, name="rnnt_loss"):
    """`fastemit_lambda` if it is >= 0; λ < 0 scales the label gradient by 1+λ (λ = -1: loss 0).

    A Python number is checked at once (ValueError); a tensor through an assert (graph mode).
    """
    if isinstance(fastemit_lambda, int | float):
        if not fastemit_lambda >= 0:  # also NaN
            raise ValueError(f"{name}: fastemit_lambda must be >= 0, got {fastemit_lambda!r}")
        return fastemit_lambda
    fastemit_lambda = tf.convert_to_tensor(fastemit_lambda, tf.float32)
    check = tf.debugging.assert_non_negative(
        fastemit_lambda, message=f"{name}: fastemit_lambda must be >= 0"
    )
    with tf.control_dependencies([check]):
        return tf.identity(fastemit_lambda)
