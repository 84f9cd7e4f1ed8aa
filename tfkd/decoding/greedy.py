"""Batched greedy transducer decoding."""

import tensorflow as tf

from tfkd.decoding import stepping
from tfkd.decoding.stepping import BLANK, LOG_ZERO


def greedy_decode(model, features, feature_lengths, max_symbols_per_frame=3):
    """Greedy RNN-T decoding of a padded batch.

    The encoder runs once; a `tf.while_loop` then takes one lattice step per
    iteration for every utterance: the joint on one frame x one label state, the
    arg-max token, and a prediction-network step for the rows that emitted a label.
    After `max_symbols_per_frame` labels on one frame only blank is allowed, so the
    result is always a complete alignment.

    Args:
      model: transducer (see `tfkd.decoding.stepping` for the interface used).
      features: [B, T, F] padded features.
      feature_lengths: [B] valid feature frames.
      max_symbols_per_frame: labels allowed on one encoder frame (>= 1).

    Returns:
      token_ids: [B, U_max] int32, padded with 0 (U_max = 0 when nothing was emitted, e.g.
        when no utterance has a frame).
      lengths: [B] int32.
      scores: [B] float32, log-probability of the chosen alignment (blanks included).
    """
    enc, enc_lengths = stepping.encode(model, features, feature_lengths)
    return greedy_decode_encoded(model, enc, enc_lengths, max_symbols_per_frame)


def greedy_decode_encoded(model, enc, enc_lengths, max_symbols_per_frame=3):
    """`greedy_decode` from encoder outputs enc [B, T, D] and enc_lengths [B]."""
    if max_symbols_per_frame < 1:
        raise ValueError(f"max_symbols_per_frame must be >= 1, got {max_symbols_per_frame}")
    net = stepping.prediction_network(model)
    enc = stepping.encoder_side(model, enc)  # projected once, not per step
    batch = tf.shape(enc)[0]
    num_frames = tf.shape(enc)[1]
    enc_lengths = tf.minimum(tf.cast(enc_lengths, tf.int32), num_frames)
    pred_out, state = stepping.start(model, net, batch)

    def body(t, n, scores, pred_out, state, emitted_ta):
        active = t < enc_lengths
        frame = tf.gather(enc, tf.minimum(t, num_frames - 1), batch_dims=1)
        log_probs = stepping.joint_log_probs(model, frame, pred_out)
        # Once a frame has its quota of labels, only blank may follow.
        vocab = tf.shape(log_probs)[1]
        label_cols = tf.range(vocab) != BLANK
        forbid = label_cols[None, :] & (n >= max_symbols_per_frame)[:, None]
        choice = tf.argmax(tf.where(forbid, LOG_ZERO, log_probs), axis=-1, output_type=tf.int32)
        step_log_prob = tf.gather(log_probs, choice, batch_dims=1)
        emit = active & (choice != BLANK)
        scores += tf.where(active, step_log_prob, 0.0)

        def advance_prediction():
            new_out, new_state = stepping.prediction_step(model, net, choice, state)
            return stepping.select_rows(emit, (new_out, new_state), (pred_out, state))

        # Most steps are blanks for every row; skip the prediction network then.
        pred_out, state = tf.cond(
            tf.reduce_any(emit), advance_prediction, lambda: (pred_out, state)
        )
        t = tf.where(active & ~emit, t + 1, t)
        n = tf.where(emit, n + 1, tf.where(active, 0, n))
        emitted_ta = emitted_ta.write(emitted_ta.size(), tf.where(emit, choice, -1))
        return t, n, scores, pred_out, state, emitted_ta

    def cond(t, *_):
        return tf.reduce_any(t < enc_lengths)

    zeros = tf.zeros([batch], tf.int32)
    # One row of "no token" up front: with no frame in the batch the loop never runs, and
    # stacking an empty TensorArray of unknown batch size fails in graph mode.
    emitted_ta = tf.TensorArray(tf.int32, size=0, dynamic_size=True, element_shape=[None])
    emitted_ta = emitted_ta.write(0, tf.fill([batch], -1))
    loop_vars = (zeros, zeros, tf.zeros([batch], tf.float32), pred_out, state, emitted_ta)
    _, _, scores, _, _, emitted_ta = tf.while_loop(
        cond,
        body,
        loop_vars,
        maximum_iterations=num_frames * (max_symbols_per_frame + 1),
    )
    token_ids, lengths = _compact(emitted_ta.stack(), batch)
    return token_ids, lengths, scores


def _compact(emitted, batch):
    """emitted [I, B] (token or -1) -> (token_ids [B, U_max] 0-padded, lengths [B])."""
    emitted = tf.reshape(emitted, [-1, batch])
    emitted = tf.transpose(emitted)  # [B, I]
    mask = emitted >= 0
    lengths = tf.reduce_sum(tf.cast(mask, tf.int32), axis=1)
    positions = tf.cumsum(tf.cast(mask, tf.int32), axis=1) - 1
    where = tf.where(mask)
    rows = tf.cast(where[:, 0], tf.int32)
    cols = tf.gather_nd(positions, where)
    max_len = tf.reduce_max(tf.concat([lengths, [0]], axis=0))
    token_ids = tf.scatter_nd(
        tf.stack([rows, cols], axis=1),
        tf.gather_nd(emitted, where),
        tf.stack([batch, max_len]),
    )
    return token_ids, lengths
