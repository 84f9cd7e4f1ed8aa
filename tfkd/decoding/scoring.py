"""Full-sum scoring of given hypotheses, with one encoder pass per utterance."""

import tensorflow as tf

from tfkd.decoding import beam, stepping


def score(model, features, feature_lengths, hypotheses, hypothesis_lengths, training=False):
    """Full-sum log P(y|x) of N hypotheses per utterance.

    The encoder runs once on the batch; its output is gathered (not re-encoded)
    for the N hypotheses of each utterance, and the prediction network and the
    joint run per hypothesis. Differentiable, so a student can train on it.

    Args:
      model: transducer (see `tfkd.decoding.stepping`).
      features: [B, T, F] padded features.
      feature_lengths: [B] valid feature frames.
      hypotheses: [B, N, U_max] int label ids (any valid id as padding).
      hypothesis_lengths: [B, N] labels per hypothesis.
      training: passed to the encoder and the prediction network.

    Returns:
      [B, N] float32 log P(y_n | x), summed over all alignments.
    """
    enc, enc_lengths = model.encode(features, feature_lengths, training=training)
    return score_encoded(model, enc, enc_lengths, hypotheses, hypothesis_lengths, training=training)


def score_encoded(model, enc, enc_lengths, hypotheses, hypothesis_lengths, training=False):
    """`score` from encoder outputs enc [B, T, D] and enc_lengths [B]."""
    # Imported here so that importing the decoders does not pull in the loss module.
    from tfkd import losses

    hypotheses = tf.cast(hypotheses, tf.int32)
    batch = tf.shape(hypotheses)[0]
    n = tf.shape(hypotheses)[1]
    utt = tf.repeat(tf.range(batch), n)  # [B*N]: the utterance of each hypothesis
    labels = tf.reshape(hypotheses, [batch * n, -1])
    label_lengths = tf.reshape(tf.cast(hypothesis_lengths, tf.int32), [-1])
    logit_lengths = tf.gather(tf.cast(enc_lengths, tf.int32), utt)
    # Project the encoder side once per utterance, then share it across its hypotheses.
    enc_side = tf.gather(stepping.encoder_side(model, enc), utt)
    pred_side = stepping.prediction_side(model, model.predict_labels(labels, training=training))

    def joint_fn(e, p):
        return stepping.joint_logits(model, e, p)

    log_probs = losses.rnnt_log_prob_from_joint(
        enc_side,
        pred_side,
        joint_fn,
        labels,
        logit_lengths,
        label_lengths,
        blank=stepping.BLANK,
    )
    return tf.reshape(log_probs, [batch, n])


def nbest_full_sum(
    model, features, feature_lengths, beam_width=4, nbest=None, max_symbols_per_frame=3
):
    """Beam search, then full-sum scores of its N-best, all on one encoder pass.

    This is what full-sum distillation needs from a teacher (METHODS.md §4): the N-best
    label sequences with `log P(y_n | x)` summed over all alignments, not the beam score.

    Args:
      model, features, feature_lengths: as in `tfkd.decoding.beam_search`.
      beam_width, nbest, max_symbols_per_frame: as in `tfkd.decoding.beam_search`.

    Returns:
      `NBest` whose `scores` are full-sum log-likelihoods, re-sorted descending; slots
      without a hypothesis keep score -inf, length 0 and stay last.
    """
    enc, enc_lengths = stepping.encode(model, features, feature_lengths)
    found = beam.beam_search_encoded(
        model, enc, enc_lengths, beam_width, nbest, max_symbols_per_frame
    )
    full = score_encoded(model, enc, enc_lengths, found.token_ids, found.lengths)
    full = tf.where(tf.math.is_finite(found.scores), full, float("-inf"))
    order = tf.argsort(full, axis=1, direction="DESCENDING", stable=True)
    return beam.NBest(
        token_ids=tf.gather(found.token_ids, order, batch_dims=1),
        lengths=tf.gather(found.lengths, order, batch_dims=1),
        scores=tf.gather(full, order, batch_dims=1),
    )
