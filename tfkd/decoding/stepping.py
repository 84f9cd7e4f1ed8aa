"""The single-step view of a transducer that the decoders need.

Decoders touch a model only through these functions, so that one file adapts
them to the model classes in `tfkd.models` (and to test doubles):
- `model.encode(features, lengths, training) -> (enc [B, T, D], enc_lengths [B])`;
- a prediction network with `step(label [B], state) -> (out [B, D], state)` and
  an initial state, found as `model.prediction` (or `model.prediction_network`);
- `model.joint(enc [B, T, D], pred [B, U+1, D]) -> logits [B, T, U+1, V]`; if the
  joint also has `project_encoder`, `project_prediction` and `combine` (as
  `tfkd.models.Joint` does), the encoder side is projected once per utterance
  and each step only combines two projected vectors.
Blank is id 0; the prediction network's first output is the one after blank,
matching `model.predict_labels`, which prefixes the labels with blank.
"""

import tensorflow as tf

BLANK = 0

# A finite log-zero: keeps sums and logaddexp free of inf - inf = NaN.
LOG_ZERO = -1e30


def encode(model, features, feature_lengths):
    """Runs the encoder once. Returns (enc [B, T, D], enc_lengths [B] int32)."""
    enc, enc_lengths = model.encode(features, feature_lengths, training=False)
    return enc, tf.cast(enc_lengths, tf.int32)


def prediction_network(model):
    """The model's steppable prediction network."""
    for name in ("prediction", "prediction_network", "predictor"):
        net = getattr(model, name, None)
        if net is not None and hasattr(net, "step"):
            return net
    raise AttributeError(
        f"{type(model).__name__} has no prediction network with a step() method "
        "(looked for .prediction, .prediction_network, .predictor)"
    )


def initial_state(net, batch_size):
    """The prediction network's zero state for `batch_size` rows (a nest of tensors)."""
    for name in ("initial_state", "get_initial_state"):
        fn = getattr(net, name, None)
        if fn is not None:
            return fn(batch_size)
    raise AttributeError(f"{type(net).__name__} has no initial_state(batch_size)")


def prediction_step(model, net, labels, state):
    """One prediction step. labels [B] -> (`prediction_side` output [B, J], new_state)."""
    out, new_state = net.step(tf.cast(labels, tf.int32), state)
    return prediction_side(model, out), new_state


def start(model, net, batch_size):
    """`prediction_step` on the blank start symbol from the zero state, for `batch_size` rows."""
    state = initial_state(net, batch_size)
    return prediction_step(model, net, tf.fill([batch_size], BLANK), state)


def encoder_side(model, enc):
    """Encoder outputs as the joint consumes them: projected once if the joint allows it."""
    joint = model.joint
    return joint.project_encoder(enc) if hasattr(joint, "project_encoder") else enc


def prediction_side(model, pred):
    """Prediction outputs as the joint consumes them: projected if the joint allows it."""
    joint = model.joint
    return joint.project_prediction(pred) if hasattr(joint, "project_prediction") else pred


def joint_logits(model, enc_side, pred_side):
    """Broadcasting joint on `encoder_side` x `prediction_side` values.

    Args:
      model: the transducer.
      enc_side: [B, T, J] (from `encoder_side`).
      pred_side: [B, U+1, J] (from `prediction_side`).

    Returns:
      [B, T, U+1, V] logits.
    """
    joint = model.joint
    if hasattr(joint, "combine"):
        return joint.combine(enc_side[:, :, None, :], pred_side[:, None, :, :])
    return joint(enc_side, pred_side)


def joint_log_probs(model, enc_frame, pred_out):
    """Log-posteriors of one frame x one label state.

    Args:
      model: the transducer.
      enc_frame: [R, J] from `encoder_side`.
      pred_out: [R, J] from `prediction_side`.

    Returns:
      [R, V] float32 log-softmax over the vocabulary.
    """
    logits = joint_logits(model, enc_frame[:, None, :], pred_out[:, None, :])[:, 0, 0, :]
    return tf.nn.log_softmax(tf.cast(logits, tf.float32), axis=-1)


def select_rows(mask, new, old):
    """Elementwise `where` over a nest of [R, ...] tensors with a row mask [R]."""

    def pick(n, o):
        m = tf.reshape(mask, [-1] + [1] * (len(n.shape) - 1))
        return tf.where(m, n, o)

    return tf.nest.map_structure(pick, new, old)


def gather_rows(nest, indices):
    """Gathers rows [R, ...] of every tensor in a nest."""
    return tf.nest.map_structure(lambda x: tf.gather(x, indices), nest)
