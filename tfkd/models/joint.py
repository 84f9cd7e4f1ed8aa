"""RNN-T joint network: project both sides, add, tanh, output layer."""

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="tfkd")
class Joint(keras.layers.Layer):
    """``joint(enc [B, T, De], pred [B, U+1, Dp]) -> logits [B, T, U+1, V]`` (float32).

    The pieces are public so that callers need not build the full 4-D tensor:
    ``combine(project_encoder(enc)[:, :, None], project_prediction(pred)[:, None])`` is the
    full call, and a decoder can project each side once and ``combine`` ``[B, J]`` vectors per
    step. Logits are always float32 (the loss works in float32), also under a mixed policy.

    Args:
      vocab_size: output classes including blank (id 0).
      joint_dim: width of the shared hidden space.
    """

    def __init__(self, vocab_size, joint_dim=256, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size, self.joint_dim = int(vocab_size), int(joint_dim)
        self.encoder_proj = keras.layers.Dense(self.joint_dim, name="encoder_proj")
        # One bias suffices for the sum; the encoder side carries it.
        self.prediction_proj = keras.layers.Dense(
            self.joint_dim, use_bias=False, name="prediction_proj"
        )
        self.output_layer = keras.layers.Dense(self.vocab_size, name="output")

    def build(self, input_shape):
        # Sublayers build on the first real call. Without this, Keras traces `call` symbolically
        # at every nesting level to find them, which costs tens of seconds for a deep encoder.
        del input_shape

    def project_encoder(self, enc):
        """``[..., De] -> [..., J]``."""
        return self.encoder_proj(enc)

    def project_prediction(self, pred):
        """``[..., Dp] -> [..., J]``."""
        return self.prediction_proj(pred)

    def combine(self, enc_proj, pred_proj):
        """Broadcasting ``out(tanh(enc_proj + pred_proj))`` -> float32 ``[..., V]``."""
        dtype = self.compute_dtype
        hidden = tf.tanh(tf.cast(enc_proj, dtype) + tf.cast(pred_proj, dtype))
        return tf.cast(self.output_layer(hidden), tf.float32)

    def call(self, encoder_out, prediction_out):
        """``encoder_out [B, T, De]``, ``prediction_out [B, U+1, Dp]`` -> ``[B, T, U+1, V]``."""
        enc = self.project_encoder(encoder_out)[:, :, None, :]
        pred = self.project_prediction(prediction_out)[:, None, :, :]
        return self.combine(enc, pred)

    def get_config(self):
        return {**super().get_config(), "vocab_size": self.vocab_size, "joint_dim": self.joint_dim}
