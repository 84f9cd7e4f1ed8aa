"""NumPy float64 references for the RNN-T loss (METHODS.md §1).

Used by the loss tests and the distillation tests.

Three independent ways to get `log P(y|x)` for one utterance, and one way to get its gradient:
- `brute_force_log_prob`: enumerates every alignment (only for tiny lattices);
- `alpha_beta`: the textbook forward and backward recursions, node by node;
- `grad_logits`: the analytic gradient of `log P(y|x)` w.r.t. the logits from alpha/beta, with the
  optional FastEmit scaling of the label-emission terms;
- `numeric_grad`: central finite differences of any scalar function of the logits.

Everything works on a single utterance `logits: [T, U+1, V]`, `labels: [U]`; the `batch_*` helpers
apply them to padded batches `[B, T, U+1, V]` with per-utterance lengths.
"""

import itertools

import numpy as np


def log_softmax(logits):
    """Log-softmax over the last axis in float64."""
    z = np.asarray(logits, np.float64)
    m = z.max(axis=-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=-1, keepdims=True))


def alignments(num_frames, num_labels):
    """Yields every alignment as a tuple of moves, 'b' (blank) or 'y' (label), ending in 'b'."""
    slots = num_frames + num_labels - 1  # the last move is always the final blank
    for label_slots in itertools.combinations(range(slots), num_labels):
        moves = ["b"] * slots
        for s in label_slots:
            moves[s] = "y"
        yield tuple(moves) + ("b",)


def brute_force_log_prob(logits, labels, blank=0):
    """log P(y|x) as the log of the sum over all alignments of the product of their step probs."""
    lp = log_softmax(logits)
    num_frames, num_labels = lp.shape[0], len(labels)
    assert lp.shape[1] == num_labels + 1
    scores = []
    for moves in alignments(num_frames, num_labels):
        t = u = 0
        score = 0.0
        for move in moves:
            if move == "b":
                score += lp[t, u, blank]
                t += 1
            else:
                score += lp[t, u, labels[u]]
                u += 1
        assert (t, u) == (num_frames, num_labels)
        scores.append(score)
    scores = np.array(scores)
    m = scores.max()
    return float(m + np.log(np.exp(scores - m).sum()))


def alpha_beta(logits, labels, blank=0):
    """Forward/backward variables of one utterance.

    Returns:
      (alpha [T, U+1], beta [T, U+1], log_prob, lp) where lp is the log-softmax [T, U+1, V] and
      beta(t, u) = log P(rest of the path | at (t, u)), beta(T-1, U) = lp(T-1, U, blank).
    """
    lp = log_softmax(logits)
    num_frames, num_nodes_u = lp.shape[:2]
    num_labels = num_nodes_u - 1
    alpha = np.full((num_frames, num_nodes_u), -np.inf)
    alpha[0, 0] = 0.0
    for t in range(num_frames):
        for u in range(num_nodes_u):
            if t == 0 and u == 0:
                continue
            terms = []
            if t > 0:
                terms.append(alpha[t - 1, u] + lp[t - 1, u, blank])
            if u > 0:
                terms.append(alpha[t, u - 1] + lp[t, u - 1, labels[u - 1]])
            alpha[t, u] = np.logaddexp.reduce(terms)
    beta = np.full((num_frames, num_nodes_u), -np.inf)
    for t in reversed(range(num_frames)):
        for u in reversed(range(num_nodes_u)):
            if t == num_frames - 1 and u == num_labels:
                beta[t, u] = lp[t, u, blank]
                continue
            terms = []
            if t < num_frames - 1:
                terms.append(beta[t + 1, u] + lp[t, u, blank])
            if u < num_labels:
                terms.append(beta[t, u + 1] + lp[t, u, labels[u]])
            beta[t, u] = np.logaddexp.reduce(terms)
    log_prob = alpha[-1, -1] + lp[-1, -1, blank]
    return alpha, beta, float(log_prob), lp


def grad_logits(logits, labels, blank=0, fastemit_lambda=0.0):
    """Gradient of log P(y|x) w.r.t. the logits [T, U+1, V], label terms scaled by (1 + lambda).

    With lambda = 0 this is the exact gradient. With lambda > 0 it is the FastEmit gradient of
    Yu et al. 2021: d/d log P(y_{u+1}|t,u) is multiplied by (1 + lambda), the blank part is not.
    """
    alpha, beta, log_prob, lp = alpha_beta(logits, labels, blank)
    num_frames, num_nodes_u = alpha.shape
    num_labels = num_nodes_u - 1
    beta_next_t = np.full_like(beta, -np.inf)
    beta_next_t[:-1] = beta[1:]
    beta_next_t[-1, -1] = 0.0  # leaving (T-1, U) by blank ends the path
    gamma_blank = np.exp(alpha + lp[..., blank] + beta_next_t - log_prob)
    gamma_label = np.zeros_like(alpha)
    for u in range(num_labels):
        gamma_label[:, u] = np.exp(alpha[:, u] + lp[:, u, labels[u]] + beta[:, u + 1] - log_prob)
    gamma_label *= 1.0 + fastemit_lambda
    grad = -np.exp(lp) * (gamma_blank + gamma_label)[..., None]
    grad[..., blank] += gamma_blank
    for u in range(num_labels):
        grad[:, u, labels[u]] += gamma_label[:, u]
    return grad


def numeric_grad(fn, logits, eps=1e-5):
    """Central finite differences of the scalar fn(logits) in float64."""
    x = np.array(logits, np.float64)
    grad = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"])
    for _ in it:
        idx = it.multi_index
        old = x[idx]
        x[idx] = old + eps
        plus = fn(x)
        x[idx] = old - eps
        minus = fn(x)
        x[idx] = old
        grad[idx] = (plus - minus) / (2 * eps)
    return grad


def batch_log_prob(logits, labels, logit_lengths, label_lengths, blank=0):
    """log P(y_b|x_b) [B] for a padded batch, via alpha_beta on each trimmed utterance."""
    out = []
    for b in range(len(logits)):
        t_b, u_b = int(logit_lengths[b]), int(label_lengths[b])
        out.append(alpha_beta(logits[b, :t_b, : u_b + 1], labels[b, :u_b], blank)[2])
    return np.array(out)


def batch_grad(logits, labels, logit_lengths, label_lengths, blank=0, fastemit_lambda=0.0):
    """d log P / d logits [B, T, U+1, V] for a padded batch; zero at padded nodes."""
    grad = np.zeros(np.shape(logits), np.float64)
    for b in range(len(logits)):
        t_b, u_b = int(logit_lengths[b]), int(label_lengths[b])
        grad[b, :t_b, : u_b + 1] = grad_logits(
            logits[b, :t_b, : u_b + 1], labels[b, :u_b], blank, fastemit_lambda
        )
    return grad


def random_batch(rng, batch, max_frames, max_labels, vocab, blank=0, scale=1.0, pad_label=-1):
    """A random padded batch with variable lengths.

    Labels avoid blank and are padded with pad_label. The first utterance always uses the full
    lengths so that the padded dims are exercised.
    """
    logits = rng.normal(size=(batch, max_frames, max_labels + 1, vocab)) * scale
    logit_lengths = rng.integers(1, max_frames + 1, size=batch)
    label_lengths = rng.integers(0, max_labels + 1, size=batch)
    logit_lengths[0], label_lengths[0] = max_frames, max_labels
    non_blank = np.array([k for k in range(vocab) if k != blank])
    labels = rng.choice(non_blank, size=(batch, max_labels))
    for b in range(batch):
        labels[b, label_lengths[b] :] = pad_label
    return (
        logits.astype(np.float32),
        labels.astype(np.int32),
        logit_lengths.astype(np.int32),
        label_lengths.astype(np.int32),
    )
