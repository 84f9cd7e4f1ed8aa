"""Full-sum scoring of given hypotheses, with one encoder pass per utterance."""

import tensorflow as tf

from tfkd.decoding import stepping


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
