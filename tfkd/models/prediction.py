"""Prediction networks: ``labels [B, U] -> [B, U+1, D]`` over the blank-prefixed label sequence.

Position ``u`` of the output summarises ``(blank, y_1, ..., y_u)``. Label padding beyond a
sequence's length may hold any valid id (0 is usual): outputs are causal in ``u``, so padding only
changes positions the loss ignores.

Both networks stream with ``step(label [B], state) -> (out [B, D], new_state)``: starting from
`initial_state`, ``step(blank)`` gives position 0, then ``step(y_1)`` position 1, and so on.
"""

import keras
import tensorflow as tf

BLANK = 0


def prefix_blank(labels):
    """``[B, U] -> [B, U+1]`` with ``BLANK`` in front."""
    labels = tf.cast(labels, tf.int32)
    return tf.pad(labels, [[0, 0], [1, 0]], constant_values=BLANK)


@keras.saving.register_keras_serializable(package="tfkd")
class LstmPrediction(keras.layers.Layer):
    """Embedding, then stacked LSTMs.

    Args:
      vocab_size: label vocabulary including blank (id 0).
      embed_dim: embedding width.
      units: LSTM cells per layer (also the output width).
      num_layers: LSTM layers.
      dropout: dropout on the embedding and between layers.
    """

    def __init__(self, vocab_size, embed_dim=128, units=256, num_layers=1, dropout=0.1, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size, self.embed_dim = int(vocab_size), int(embed_dim)
        self.units, self.num_layers, self.dropout_rate = int(units), int(num_layers), float(dropout)
        self.embedding = keras.layers.Embedding(self.vocab_size, self.embed_dim, name="embedding")
        # One attribute per sublayer, not a list: Keras 3 tracks lists in a way that
        # tf.train.Checkpoint does not follow, and their weights would never be saved.
        for i in range(self.num_layers):
            lstm = keras.layers.LSTM(self.units, return_sequences=True, name=f"lstm{i}")
            setattr(self, f"lstm{i}", lstm)
        self.dropout = keras.layers.Dropout(self.dropout_rate)

    def build(self, input_shape):
        # Sublayers build on the first real call. Without this, Keras traces `call` symbolically
        # at every nesting level to find them, which costs tens of seconds for a deep encoder.
        del input_shape

    @property
    def lstms(self):
        return [getattr(self, f"lstm{i}") for i in range(self.num_layers)]

    @property
    def output_dim(self):
        return self.units

    def call(self, labels, training=False):
        """``labels [B, U]`` int -> ``[B, U+1, units]``."""
        x = self.embedding(prefix_blank(labels))
        for lstm in self.lstms:
            x = lstm(self.dropout(x, training=training), training=training)
        return x

    def initial_state(self, batch_size):
        zeros = tf.zeros([batch_size, self.units], self.compute_dtype)
        return {f"lstm{i}": {"h": zeros, "c": zeros} for i in range(self.num_layers)}

    def step(self, label, state):
        """``label [B]`` int, state -> ``(out [B, units], new_state)`` (inference mode).

        Runs each layer's LSTM cell once: plain matmuls and activations, so an export sees no
        recurrent loop.
        """
        x = self.embedding(tf.cast(label, tf.int32))
        new_state = {}
        for i, lstm in enumerate(self.lstms):
            s = state[f"lstm{i}"]
            x, (h, c) = lstm.cell(x, [s["h"], s["c"]], training=False)
            new_state[f"lstm{i}"] = {"h": h, "c": c}
        return x, new_state

    def get_config(self):
        return {
            **super().get_config(),
            "vocab_size": self.vocab_size,
            "embed_dim": self.embed_dim,
            "units": self.units,
            "num_layers": self.num_layers,
            "dropout": self.dropout_rate,
        }


@keras.saving.register_keras_serializable(package="tfkd")
class StatelessPrediction(keras.layers.Layer):
    """Embeds the last ``context_size`` labels (blank before the start) and projects them.

    Args:
      vocab_size: label vocabulary including blank (id 0).
      context_size: labels of history (1 = bigram-like).
      embed_dim: embedding width per label.
      units: output width.
      dropout: dropout on the embeddings.
    """

    def __init__(self, vocab_size, context_size=2, embed_dim=128, units=256, dropout=0.1, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size, self.context_size = int(vocab_size), int(context_size)
        self.embed_dim, self.units, self.dropout_rate = int(embed_dim), int(units), float(dropout)
        self.embedding = keras.layers.Embedding(self.vocab_size, self.embed_dim, name="embedding")
        self.proj = keras.layers.Dense(self.units, activation="tanh", name="proj")
        self.dropout = keras.layers.Dropout(self.dropout_rate)

    def build(self, input_shape):
        # Sublayers build on the first real call. Without this, Keras traces `call` symbolically
        # at every nesting level to find them, which costs tens of seconds for a deep encoder.
        del input_shape

    @property
    def output_dim(self):
        return self.units

    def _project(self, context, training):
        """``context [..., k]`` ids -> ``[..., units]``."""
        shape = tf.concat([tf.shape(context)[:-1], [self.context_size * self.embed_dim]], 0)
        x = tf.reshape(self.embedding(context), shape)
        return self.proj(self.dropout(x, training=training))

    def call(self, labels, training=False):
        """``labels [B, U]`` int -> ``[B, U+1, units]``."""
        full = prefix_blank(labels)
        padded = tf.pad(full, [[0, 0], [self.context_size - 1, 0]], constant_values=BLANK)
        length = tf.shape(full)[1]
        # Window j holds the label j - (k-1) steps back from each position.
        context = tf.stack([padded[:, j : j + length] for j in range(self.context_size)], axis=-1)
        return self._project(context, training)

    def initial_state(self, batch_size):
        return {"context": tf.fill([batch_size, self.context_size], BLANK)}

    def step(self, label, state):
        """``label [B]`` int, state -> ``(out [B, units], new_state)``."""
        label = tf.cast(label, tf.int32)[:, None]
        context = tf.concat([state["context"][:, 1:], label], axis=1)
        return self._project(context, False), {"context": context}

    def get_config(self):
        return {
            **super().get_config(),
            "vocab_size": self.vocab_size,
            "context_size": self.context_size,
            "embed_dim": self.embed_dim,
            "units": self.units,
            "dropout": self.dropout_rate,
        }
