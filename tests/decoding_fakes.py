"""A tiny stand-in transducer with the decoder-facing interface of `tfkd.models`.

Test double for decoder tests: plain Keras layers, no subsampling, an LSTM
prediction network that can be run on a whole label sequence or stepped.
"""

import keras
import numpy as np
import tensorflow as tf


class FakePrediction(keras.layers.Layer):
    """Embedding + LSTM cell; `step` and `__call__` agree by construction."""

    def __init__(self, vocab_size, dim, **kwargs):
        super().__init__(**kwargs)
        self.embedding = keras.layers.Embedding(vocab_size, dim)
        self.cell = keras.layers.LSTMCell(dim)
        self.rnn = keras.layers.RNN(self.cell, return_sequences=True)

    def initial_state(self, batch_size):
        return self.cell.get_initial_state(batch_size=batch_size)

    def step(self, label, state):
        """label [B] int32, state -> (out [B, D], new_state)."""
        out, new_state = self.cell(self.embedding(label), state)
        return out, new_state

    def call(self, labels):
        """labels [B, U] -> [B, U+1, D] (blank-prefixed)."""
        prefixed = tf.pad(labels, [[0, 0], [1, 0]])
        return self.rnn(self.embedding(prefixed))


class FakeTransducer(keras.Model):
    """Dense encoder (no time reduction), LSTM prediction network, additive joint."""

    def __init__(self, vocab_size=5, dim=8, num_features=3, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.num_features = num_features
        self.enc_dense = keras.layers.Dense(dim, activation="tanh")
        self.prediction = FakePrediction(vocab_size, dim)
        self.joint_enc = keras.layers.Dense(dim)
        self.joint_pred = keras.layers.Dense(dim, use_bias=False)
        self.joint_out = keras.layers.Dense(vocab_size)

    def encode(self, features, lengths, training=False):
        enc = self.enc_dense(features)
        mask = tf.sequence_mask(lengths, tf.shape(features)[1], dtype=enc.dtype)
        return enc * mask[:, :, None], lengths

    def predict_labels(self, labels, training=False):
        return self.prediction(labels)

    def joint(self, enc, pred):
        """enc [B, T, D], pred [B, U+1, D] -> logits [B, T, U+1, V]."""
        h = self.joint_enc(enc)[:, :, None, :] + self.joint_pred(pred)[:, None, :, :]
        return self.joint_out(tf.tanh(h))

    def call(self, inputs):
        features, lengths, labels = inputs
        enc, enc_lengths = self.encode(features, lengths)
        return self.joint(enc, self.predict_labels(labels)), enc_lengths


def make_fake_model(vocab_size=5, dim=8, num_features=3, seed=0, logit_scale=1.0, blank_bias=0.0):
    """Builds the fake model with fixed weights.

    `logit_scale` sharpens the joint; `blank_bias` is added to the blank logit.
    """
    keras.utils.set_random_seed(seed)
    model = FakeTransducer(vocab_size, dim, num_features)
    model((tf.zeros([1, 2, num_features]), tf.constant([2]), tf.zeros([1, 1], tf.int32)))
    if logit_scale != 1.0:
        kernel = model.joint_out.kernel
        kernel.assign(kernel * logit_scale)
    bias = model.joint_out.bias
    bias.assign(bias + tf.one_hot(0, vocab_size) * blank_bias)
    return model


def random_features(batch, max_frames, num_features=3, seed=0, min_frames=1):
    """Padded random features [B, T, F] (zeros past each length) and lengths [B]."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(min_frames, max_frames + 1, size=batch).astype(np.int32)
    lengths[0] = max_frames
    feats = rng.normal(size=(batch, max_frames, num_features)).astype(np.float32)
    feats *= (np.arange(max_frames)[None, :] < lengths[:, None])[:, :, None]
    return feats, lengths
