"""`Transducer`: encoder + prediction network + joint, batch-first on padded inputs."""

import keras
import tensorflow as tf

from tfkd.models.encoder import Encoder


@keras.saving.register_keras_serializable(package="tfkd")
class Transducer(keras.Model):
    """An RNN-T model.

    ``call({"features": [B, T, F], "feature_lengths": [B], "labels": [B, U]})`` returns
    ``{"logits": [B, T', U+1, V] float32, "logit_lengths": [B] int32}`` with
    ``T' = ceil(T / reduction_factor)``.

    The parts are reachable for the memory-lean loss and the decoders: `encode`,
    `predict_labels` and the `joint` layer (callable with ``(enc, pred)``, and exposing
    ``project_encoder`` / ``project_prediction`` / ``combine``). For a causal encoder the streaming
    pieces are ``encoder.initial_state(batch)``, ``encoder.stream_step(chunk, state,
    valid_frames=None)`` (``valid_frames [B]``: real frames of a padded last chunk),
    ``prediction.initial_state(batch)`` and ``prediction.step(label, state)``.

    Args:
      encoder: an `Encoder` (`tfkd.models.encoder`: ``call(features, lengths, training) ->
        (enc, lengths)``, ``reduction_factor``, ``output_lengths``, ``causal`` and the streaming
        pieces), e.g. `ConformerEncoder` or `LstmEncoder`.
      prediction: `LstmPrediction` or `StatelessPrediction`.
      joint: `Joint`.
    """

    def __init__(self, encoder: Encoder, prediction, joint, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.prediction = prediction
        self.joint = joint

    def build(self, input_shape):
        # Sublayers build on the first real call. Without this, Keras traces `call` symbolically
        # at every nesting level to find them, which costs tens of seconds for a deep encoder.
        del input_shape

    @property
    def reduction_factor(self):
        """Input frames per encoder frame."""
        return self.encoder.reduction_factor

    @property
    def vocab_size(self):
        return self.joint.vocab_size

    @property
    def causal(self):
        return self.encoder.causal

    def output_lengths(self, feature_lengths):
        """Encoder (logit) frames for ``feature_lengths``, without running the model."""
        return self.encoder.output_lengths(tf.cast(feature_lengths, tf.int32))

    def encode(self, features, lengths, training=False):
        """``features [B, T, F]``, ``lengths [B]`` -> ``(enc [B, T', D], lengths [B] int32)``."""
        return self.encoder(features, tf.cast(lengths, tf.int32), training=training)

    def predict_labels(self, labels, training=False):
        """``labels [B, U]`` -> ``[B, U+1, D]``."""
        return self.prediction(labels, training=training)

    def call(self, inputs, training=False):
        enc, enc_lengths = self.encode(
            inputs["features"], inputs["feature_lengths"], training=training
        )
        pred = self.predict_labels(inputs["labels"], training=training)
        return {"logits": self.joint(enc, pred), "logit_lengths": enc_lengths}

    def build_by_calling(self, num_features=80, frames=None, label_length=2):
        """Creates all variables by one call on zeros (the safe way to build a subclassed model).

        Args:
          num_features: feature width the model will see.
          frames: dummy input frames (default: two encoder frames' worth).
          label_length: dummy label length.
        """
        frames = frames or 2 * self.reduction_factor
        self(
            {
                "features": tf.zeros([1, frames, num_features]),
                "feature_lengths": tf.constant([frames], tf.int32),
                "labels": tf.zeros([1, label_length], tf.int32),
            }
        )
        return self

    def build_from_config(self, config):
        # Keras loading (`load_model`) calls this before restoring weights; the sublayers only
        # create their variables when called, so build by calling, or the weights would be
        # silently skipped.
        shapes = (config or {}).get("input_shape") or {}
        if "features" in shapes:
            self.build_by_calling(num_features=shapes["features"][-1])

    def get_config(self):
        return {
            **super().get_config(),
            "encoder": keras.saving.serialize_keras_object(self.encoder),
            "prediction": keras.saving.serialize_keras_object(self.prediction),
            "joint": keras.saving.serialize_keras_object(self.joint),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("encoder", "prediction", "joint"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)
