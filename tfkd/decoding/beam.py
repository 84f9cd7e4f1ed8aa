"""Batched frame-synchronous transducer beam search with N-best output.

Algorithm (frame-synchronous, one lattice step at a time, prefix merging):
every utterance keeps K hypotheses. On each encoder frame t the search takes up
to `max_symbols_per_frame + 1` sub-steps. In a sub-step every hypothesis that
has not yet left frame t ("open") is expanded by blank (it leaves frame t and
becomes "closed") or, while the frame's label quota is not used up, by each
label (it stays open). Closed hypotheses are carried unchanged. Of all carried
and expanded candidates the K best survive. A closed hypothesis whose label
sequence equals that of another closed one is merged into it: their
probabilities are added (log-add-exp), so a hypothesis sums over the alignments
the beam found for it. When a frame's sub-steps are over, all hypotheses are
closed and reopen on the next frame.

With K = 1 this takes exactly the greedy decoder's steps (same tokens and score).

Score: log of the summed probability of the alignments of that label sequence
that survived in the beam, blanks included. It is a lower bound on the full-sum
log P(y|x) that `tfkd.decoding.score` computes.
"""

import collections

import tensorflow as tf

from tfkd.decoding import stepping
from tfkd.decoding.stepping import BLANK, LOG_ZERO

NBest = collections.namedtuple("NBest", ["token_ids", "lengths", "scores"])
NBest.__doc__ = """N-best lists: token_ids [B, N, U_max] (0-padded), lengths [B, N],
scores [B, N] sorted descending (-inf marks an empty slot when fewer than N
distinct hypotheses exist)."""

# Two polynomial hashes of a label sequence identify it for merging. Moduli below
# 2**31 keep every product inside int64.
_HASH_PRIMES = ((1000003, 2147483647), (999983, 2147483629))


def beam_search(
    model, features, feature_lengths, beam_width=4, nbest=None, max_symbols_per_frame=3
):
    """Beam search over a padded batch; see the module docstring for the algorithm.

    Args:
      model: transducer (see `tfkd.decoding.stepping` for the interface used).
      features: [B, T, F] padded features.
      feature_lengths: [B] valid feature frames.
      beam_width: K, hypotheses kept per utterance.
      nbest: N <= K hypotheses returned per utterance (default K).
      max_symbols_per_frame: labels allowed on one encoder frame (>= 1).

    Returns:
      `NBest(token_ids [B, N, U_max], lengths [B, N], scores [B, N])`.
    """
    enc, enc_lengths = stepping.encode(model, features, feature_lengths)
    return beam_search_encoded(model, enc, enc_lengths, beam_width, nbest, max_symbols_per_frame)


def beam_search_encoded(model, enc, enc_lengths, beam_width=4, nbest=None, max_symbols_per_frame=3):
    """`beam_search` from encoder outputs enc [B, T, D] and enc_lengths [B]."""
    k = int(beam_width)
    n_out = k if nbest is None else int(nbest)
    m = int(max_symbols_per_frame)
    if k < 1 or not 1 <= n_out <= k:
        raise ValueError(f"need 1 <= nbest <= beam_width, got nbest={nbest}, beam={k}")
    if m < 1:
        raise ValueError(f"max_symbols_per_frame must be >= 1, got {m}")
    net = stepping.prediction_network(model)
    enc = stepping.encoder_side(model, enc)  # projected once, not per step
    batch = tf.shape(enc)[0]
    num_frames = tf.shape(enc)[1]
    enc_lengths = tf.minimum(tf.cast(enc_lengths, tf.int32), num_frames)
    max_len = num_frames * m
    rows = batch * k

    pred_out, state = stepping.start(model, net, rows)
    init = _Beam(
        scores=tf.tile(tf.concat([[0.0], tf.fill([k - 1], LOG_ZERO)], axis=0)[None, :], [batch, 1]),
        closed=tf.zeros([batch, k], tf.bool),
        tokens=tf.zeros([batch, k, max_len], tf.int32),
        lengths=tf.zeros([batch, k], tf.int32),
        hashes=tf.zeros([batch, k, len(_HASH_PRIMES)], tf.int64),
    )

    def body(i, beam, pred_out, state):
        t = i // (m + 1)
        sub = i % (m + 1)
        active = t < enc_lengths  # [B]
        # A new frame reopens every hypothesis.
        beam = beam._replace(closed=beam.closed & (sub > 0))
        frame = tf.repeat(enc[:, tf.minimum(t, num_frames - 1)], k, axis=0)
        log_probs = stepping.joint_log_probs(model, frame, pred_out)
        log_probs = tf.reshape(log_probs, [batch, k, -1])
        new_beam, parent, label, emit = _select(beam, log_probs, k, allow_labels=sub < m)

        flat_parent = tf.reshape(parent + tf.range(batch)[:, None] * k, [-1])
        pred_out_g, state_g = stepping.gather_rows((pred_out, state), flat_parent)
        emit_flat = tf.reshape(emit, [-1])

        def advance_prediction():
            new_out, new_state = stepping.prediction_step(
                model, net, tf.reshape(label, [-1]), state_g
            )
            return stepping.select_rows(emit_flat, (new_out, new_state), (pred_out_g, state_g))

        new_pred_out, new_state = tf.cond(
            tf.reduce_any(emit_flat), advance_prediction, lambda: (pred_out_g, state_g)
        )
        # Utterances that are out of frames keep their final beam.
        beam = tf.nest.map_structure(
            lambda new, old: tf.where(
                tf.reshape(active, [-1] + [1] * (len(new.shape) - 1)), new, old
            ),
            new_beam,
            beam,
        )
        row_active = tf.repeat(active, k)
        pred_out, state = stepping.select_rows(
            row_active, (new_pred_out, new_state), (pred_out, state)
        )
        # Skip the frame's remaining sub-steps once nothing is open.
        open_left = tf.reduce_any(active[:, None] & ~beam.closed & _valid(beam.scores))
        next_i = tf.where(open_left, i + 1, (t + 1) * (m + 1))
        return next_i, beam, pred_out, state

    def cond(i, *_):
        return i < tf.reduce_max(tf.concat([enc_lengths, [0]], 0)) * (m + 1)

    _, beam, _, _ = tf.while_loop(cond, body, (tf.constant(0), init, pred_out, state))
    return _nbest(beam, n_out)


_Beam = collections.namedtuple("_Beam", ["scores", "closed", "tokens", "lengths", "hashes"])


def _valid(scores):
    return scores > LOG_ZERO / 2


def _log_add(a, b):
    """log(exp(a) + exp(b)) in the finite-log-zero form (no inf - inf)."""
    hi = tf.maximum(a, b)
    return hi + tf.math.log1p(tf.exp(-tf.abs(a - b)))


def _select(beam, log_probs, k, allow_labels):
    """One sub-step: expand open hypotheses, merge closed duplicates, keep the K best.

    Args:
      beam: current `_Beam` ([B, K] fields).
      log_probs: [B, K, V] joint log-posteriors of each hypothesis on this frame.
      k: beam width.
      allow_labels: scalar bool, whether label expansions are allowed.

    Returns:
      (new beam, parent [B, K], label [B, K], emitted [B, K] bool).
    """
    scores, closed = beam.scores, beam.closed
    valid = _valid(scores)
    carried = tf.where(closed, scores, LOG_ZERO)
    blank = tf.where(~closed & valid, scores + log_probs[:, :, BLANK], LOG_ZERO)
    labels = tf.where(
        (~closed & valid & allow_labels)[:, :, None],
        scores[:, :, None] + log_probs[:, :, BLANK + 1 :],
        LOG_ZERO,
    )
    # A hypothesis that just left the frame merges into a carried closed one with
    # the same label sequence. Only that pair can coincide: open hypotheses are
    # distinct, and so are closed ones after earlier merges.
    same = tf.reduce_all(beam.hashes[:, :, None, :] == beam.hashes[:, None, :, :], axis=-1)
    same &= beam.lengths[:, :, None] == beam.lengths[:, None, :]
    merge = same & (closed & valid)[:, :, None] & (~closed & valid)[:, None, :]  # [B, i, j]
    merged_in = tf.reduce_logsumexp(tf.where(merge, blank[:, None, :], LOG_ZERO), axis=2)
    carried = tf.where(tf.reduce_any(merge, axis=2), _log_add(carried, merged_in), carried)
    blank = tf.where(tf.reduce_any(merge, axis=1), LOG_ZERO, blank)

    num_labels = tf.shape(log_probs)[2] - 1
    candidates = tf.concat([carried, blank, tf.reshape(labels, [tf.shape(scores)[0], -1])], axis=1)
    top_scores, top = tf.math.top_k(candidates, k=k, sorted=True)
    emit = top >= 2 * k
    label_index = tf.maximum(top - 2 * k, 0)
    parent = tf.where(emit, label_index // num_labels, top % k)
    label = tf.where(emit, label_index % num_labels + BLANK + 1, BLANK)

    tokens = tf.gather(beam.tokens, parent, batch_dims=1)
    lengths = tf.gather(beam.lengths, parent, batch_dims=1)
    hashes = tf.gather(beam.hashes, parent, batch_dims=1)
    write = emit[:, :, None] & (tf.range(tf.shape(tokens)[2])[None, None, :] == lengths[:, :, None])
    tokens = tf.where(write, label[:, :, None], tokens)
    label64 = tf.cast(label, tf.int64)[:, :, None]
    primes = tf.constant([p for p, _ in _HASH_PRIMES], tf.int64)
    moduli = tf.constant([q for _, q in _HASH_PRIMES], tf.int64)
    hashes = tf.where(emit[:, :, None], tf.math.floormod(hashes * primes + label64, moduli), hashes)
    new_beam = _Beam(
        scores=top_scores,
        closed=~emit,
        tokens=tokens,
        lengths=lengths + tf.cast(emit, tf.int32),
        hashes=hashes,
    )
    return new_beam, parent, label, emit


def _nbest(beam, n):
    """The N best of the final beams (already sorted), trimmed and with empty slots marked."""
    scores = beam.scores[:, :n]
    valid = _valid(scores)
    lengths = tf.where(valid, beam.lengths[:, :n], 0)
    max_len = tf.reduce_max(tf.concat([tf.reshape(lengths, [-1]), [0]], 0))
    tokens = beam.tokens[:, :n, :max_len]
    tokens = tf.where(valid[:, :, None], tokens, 0)
    scores = tf.where(valid, scores, float("-inf"))
    return NBest(token_ids=tokens, lengths=lengths, scores=scores)
