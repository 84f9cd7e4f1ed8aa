"""Conformer encoder (Gulati et al., 2020) with rotary positions and a streaming causal mode.

Positions: rotary embeddings (RoPE) on queries and keys. The attention score then depends only on
the distance between frames, as with Transformer-XL relative positions, but without the extra
projections and the "relative shift" gather over ``[T, 2T-1]``. That matters here because:
- streaming is a plain key/value cache: cached keys keep the rotation of their absolute position,
  so a chunk attends to the cache exactly as the full utterance attends to the same frames;
- it needs only mul/add/matmul, which TFLite runs as builtins.

Causal mode: attention sees no frame after the query's chunk (``chunk_size`` frames at the encoder
rate; 1 means no look-ahead, larger values give a limited right context of up to
``chunk_size - 1`` frames), and the depthwise convolution is padded on the left only. With a finite
``left_context`` the streaming state has a fixed size. Normalisation is LayerNorm everywhere (the
paper's BatchNorm in the conv module would mix padded frames into the statistics and break
padding invariance).
"""

import math

import keras
import tensorflow as tf

from tfkd.models.subsampling import make_subsampler, sequence_mask, zero_padded_frames

# Large finite negative: a fully masked row then softmaxes to a uniform row, never NaN.
_MASKED = -1e9


def apply_rotary(x, positions):
    """Rotates feature pairs of ``x [B, H, T, Dh]`` by angles ``positions [T] * freq``.

    The angles are computed in float32 (positions can be large when streaming) and the rotation is
    applied in ``x.dtype``. Uses the split-half pairing ``(x[:Dh/2], x[Dh/2:])``.
    """
    half = x.shape[-1] // 2
    inv_freq = 1.0 / (10000.0 ** (tf.range(half, dtype=tf.float32) / half))
    angles = tf.cast(positions, tf.float32)[:, None] * inv_freq[None, :]
    cos = tf.cast(tf.cos(angles), x.dtype)
    sin = tf.cast(tf.sin(angles), x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return tf.concat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def attention_mask(q_pos, k_pos, key_valid, causal, chunk_size=1, left_context=None):
    """Boolean attention mask ``[B, 1, Tq, Tk]``, True where a query may attend to a key.

    A mask rather than an additive bias: Keras autocasts float call arguments to the compute
    dtype, and a large negative bias overflows to -inf in float16.

    Args:
      q_pos: int32 ``[Tq]`` query frame indices.
      k_pos: int32 ``[Tk]`` key frame indices.
      key_valid: bool ``[B, Tk]``, False for padded keys (or empty cache slots).
      causal: bool; if True a query sees keys up to the last frame of its chunk.
      chunk_size: frames per attention chunk in causal mode (1 = strictly causal).
      left_context: if not None, a query at ``i`` sees keys ``>= i - left_context`` only.
    """
    q = q_pos[:, None]
    k = k_pos[None, :]
    allowed = tf.ones_like(q + k, tf.bool)
    if causal:
        chunk_end = (q // chunk_size + 1) * chunk_size - 1
        allowed = k <= chunk_end
    if left_context is not None:
        allowed = tf.logical_and(allowed, k >= q - left_context)
    return tf.logical_and(allowed[None, None], key_valid[:, None, None, :])


@keras.saving.register_keras_serializable(package="tfkd")
class RotaryAttention(keras.layers.Layer):
    """Multi-head self-attention with rotary positions; explicit key/value cache for streaming."""

    def __init__(self, dim, num_heads, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        if dim % num_heads or (dim // num_heads) % 2:
            raise ValueError(f"dim {dim} must split into {num_heads} heads of even size")
        self.dim, self.num_heads, self.dropout_rate = int(dim), int(num_heads), float(dropout)
        self.head_dim = self.dim // self.num_heads
        self.qkv = keras.layers.Dense(3 * self.dim, name="qkv")
        self.out = keras.layers.Dense(self.dim, name="out")
        self.dropout = keras.layers.Dropout(self.dropout_rate)

    def build(self, input_shape):
        # Sublayers build on the first real call. Without this, Keras traces `call` symbolically
        # at every nesting level to find them, which costs tens of seconds for a deep encoder.
        del input_shape

    def _heads(self, x):
        """``[B, T, D] -> [B, H, T, Dh]``."""
        x = tf.reshape(x, [tf.shape(x)[0], tf.shape(x)[1], self.num_heads, self.head_dim])
        return tf.transpose(x, [0, 2, 1, 3])

    def project(self, x, positions):
        """Rotated queries and keys and the values, each ``[B, H, T, Dh]``."""
        q, k, v = tf.split(self.qkv(x), 3, axis=-1)
        q = apply_rotary(self._heads(q), positions)
        k = apply_rotary(self._heads(k), positions)
        return q, k, self._heads(v)

    def attend(self, q, k, v, attn_mask, training=False):
        """Scaled dot-product attention; softmax in float32. Returns ``[B, Tq, D]``."""
        scores = tf.matmul(q, k, transpose_b=True) * (1.0 / math.sqrt(self.head_dim))
        scores = tf.where(attn_mask, tf.cast(scores, tf.float32), _MASKED)
        probs = tf.nn.softmax(scores, axis=-1)
        probs = self.dropout(tf.cast(probs, v.dtype), training=training)
        ctx = tf.transpose(tf.matmul(probs, v), [0, 2, 1, 3])
        ctx = tf.reshape(ctx, [tf.shape(ctx)[0], tf.shape(ctx)[1], self.dim])
        return self.out(ctx)

    def call(self, x, attn_mask, positions, training=False):
        """``x [B, T, D]``, ``attn_mask [B, 1, T, T]`` bool, ``positions [T]`` -> ``[B, T, D]``."""
        q, k, v = self.project(x, positions)
        return self.attend(q, k, v, attn_mask, training=training)

    def get_config(self):
        return {
            **super().get_config(),
            "dim": self.dim,
            "num_heads": self.num_heads,
            "dropout": self.dropout_rate,
        }


@keras.saving.register_keras_serializable(package="tfkd")
class FeedForward(keras.layers.Layer):
    """Pre-norm feed-forward module: LayerNorm, Dense + swish, Dense, dropout."""

    def __init__(self, dim, expansion=4, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.expansion, self.dropout_rate = int(dim), int(expansion), float(dropout)
        self.norm = keras.layers.LayerNormalization(epsilon=1e-5, name="norm")
        self.inner = keras.layers.Dense(self.expansion * self.dim, activation="swish", name="in")
        self.outer = keras.layers.Dense(self.dim, name="out")
        self.dropout = keras.layers.Dropout(self.dropout_rate)

    def build(self, input_shape):
        # Sublayers build on the first real call. Without this, Keras traces `call` symbolically
        # at every nesting level to find them, which costs tens of seconds for a deep encoder.
        del input_shape

    def call(self, x, training=False):
        h = self.dropout(self.inner(self.norm(x)), training=training)
        return self.dropout(self.outer(h), training=training)

    def get_config(self):
        return {
            **super().get_config(),
            "dim": self.dim,
            "expansion": self.expansion,
            "dropout": self.dropout_rate,
        }


@keras.saving.register_keras_serializable(package="tfkd")
class ConvModule(keras.layers.Layer):
    """Conformer convolution module: LN, pointwise + GLU, depthwise conv, LN, swish, pointwise.

    Causal: the depthwise conv reads ``kernel_size - 1`` past frames and no future ones, which is
    also its streaming state. Non-causal: centred kernel (odd ``kernel_size``).
    """

    def __init__(self, dim, kernel_size=15, causal=False, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        if not causal and kernel_size % 2 == 0:
            raise ValueError("a non-causal conv module needs an odd kernel_size")
        self.dim, self.kernel_size = int(dim), int(kernel_size)
        self.causal, self.dropout_rate = bool(causal), float(dropout)
        self.norm = keras.layers.LayerNormalization(epsilon=1e-5, name="norm")
        self.pointwise_in = keras.layers.Dense(2 * self.dim, name="pointwise_in")
        self.depthwise = keras.layers.DepthwiseConv1D(
            self.kernel_size, padding="valid", name="depthwise"
        )
        self.conv_norm = keras.layers.LayerNormalization(epsilon=1e-5, name="conv_norm")
        self.pointwise_out = keras.layers.Dense(self.dim, name="pointwise_out")
        self.dropout = keras.layers.Dropout(self.dropout_rate)

    def build(self, input_shape):
        # Sublayers build on the first real call. Without this, Keras traces `call` symbolically
        # at every nesting level to find them, which costs tens of seconds for a deep encoder.
        del input_shape

    def _gated(self, x):
        a, b = tf.split(self.pointwise_in(self.norm(x)), 2, axis=-1)
        return a * tf.sigmoid(b)

    def _finish(self, h, training):
        h = tf.nn.silu(self.conv_norm(self.depthwise(h)))
        return self.dropout(self.pointwise_out(h), training=training)

    def call(self, x, lengths, training=False):
        """``x [B, T, D]``, ``lengths [B]`` -> ``[B, T, D]``."""
        # Zero padded frames so that a sequence sees zeros past its end, alone or in a batch.
        h = zero_padded_frames(self._gated(x), lengths)
        left = self.kernel_size - 1 if self.causal else (self.kernel_size - 1) // 2
        right = self.kernel_size - 1 - left
        h = tf.pad(h, [[0, 0], [left, right], [0, 0]])
        return self._finish(h, training)

    def stream_step(self, x, cache):
        """``x [B, C, D]``, ``cache [B, K-1, D]`` -> ``(out [B, C, D], new_cache)``."""
        h = tf.concat([cache, self._gated(x)], axis=1)
        return self._finish(h, False), h[:, tf.shape(h)[1] - (self.kernel_size - 1) :]

    def get_config(self):
        return {
            **super().get_config(),
            "dim": self.dim,
            "kernel_size": self.kernel_size,
            "causal": self.causal,
            "dropout": self.dropout_rate,
        }


@keras.saving.register_keras_serializable(package="tfkd")
class ConformerBlock(keras.layers.Layer):
    """Macaron block: x + FFN/2, + MHSA, + conv, + FFN/2, then LayerNorm."""

    def __init__(
        self, dim, num_heads, ff_expansion=4, kernel_size=15, causal=False, dropout=0.0, **kwargs
    ):
        super().__init__(**kwargs)
        self.dim, self.num_heads, self.ff_expansion = int(dim), int(num_heads), int(ff_expansion)
        self.kernel_size, self.causal, self.dropout_rate = int(kernel_size), causal, dropout
        self.ff1 = FeedForward(dim, ff_expansion, dropout, name="ff1")
        self.attn_norm = keras.layers.LayerNormalization(epsilon=1e-5, name="attn_norm")
        self.attn = RotaryAttention(dim, num_heads, dropout, name="attn")
        self.attn_dropout = keras.layers.Dropout(dropout)
        self.conv = ConvModule(dim, kernel_size, causal, dropout, name="conv")
        self.ff2 = FeedForward(dim, ff_expansion, dropout, name="ff2")
        self.out_norm = keras.layers.LayerNormalization(epsilon=1e-5, name="out_norm")

    def build(self, input_shape):
        # Sublayers build on the first real call. Without this, Keras traces `call` symbolically
        # at every nesting level to find them, which costs tens of seconds for a deep encoder.
        del input_shape

    def call(self, x, lengths, attn_mask, positions, training=False):
        """``x [B, T, D]``, ``lengths [B]``, ``attn_mask [B, 1, T, T]`` bool, ``positions [T]``."""
        x = x + 0.5 * self.ff1(x, training=training)
        a = self.attn(self.attn_norm(x), attn_mask, positions, training=training)
        x = x + self.attn_dropout(a, training=training)
        x = x + self.conv(x, lengths, training=training)
        x = x + 0.5 * self.ff2(x, training=training)
        return self.out_norm(x)

    def stream_step(self, x, state, positions, attn_mask):
        """One chunk with explicit caches; see `ConformerEncoder.stream_step`.

        Args:
          x: ``[B, C, D]`` chunk.
          state: ``keys``/``values`` ``[B, H, L, Dh]`` (rotated at their own positions) and
            ``conv`` ``[B, K-1, D]``.
          positions: int32 ``[C]`` absolute frame indices of the chunk.
          attn_mask: bool ``[B, 1, C, L + C]`` attention mask over cache + chunk.
        """
        x = x + 0.5 * self.ff1(x)
        q, k, v = self.attn.project(self.attn_norm(x), positions)
        keys = tf.concat([state["keys"], k], axis=2)
        values = tf.concat([state["values"], v], axis=2)
        x = x + self.attn.attend(q, keys, values, attn_mask)
        conv_out, conv_cache = self.conv.stream_step(x, state["conv"])
        x = x + conv_out
        x = x + 0.5 * self.ff2(x)
        cached = state["keys"].shape[2]
        new_state = {
            "keys": keys[:, :, -cached:] if cached else keys[:, :, :0],
            "values": values[:, :, -cached:] if cached else values[:, :, :0],
            "conv": conv_cache,
        }
        return self.out_norm(x), new_state

    def get_config(self):
        return {
            **super().get_config(),
            "dim": self.dim,
            "num_heads": self.num_heads,
            "ff_expansion": self.ff_expansion,
            "kernel_size": self.kernel_size,
            "causal": self.causal,
            "dropout": self.dropout_rate,
        }


@keras.saving.register_keras_serializable(package="tfkd")
class ConformerEncoder(keras.layers.Layer):
    """Subsampling front end + Conformer blocks. ``call(features, lengths) -> (enc, enc_lengths)``.

    Satisfies `tfkd.models.encoder.Encoder`; streams when causal with a finite ``left_context``.

    Args:
      num_layers: Conformer blocks.
      dim: model width (also the output width).
      num_heads: attention heads (``dim / num_heads`` must be even for the rotation).
      ff_expansion: inner width of the feed-forward modules, as a multiple of ``dim``.
      kernel_size: depthwise conv kernel (odd when non-causal).
      subsampling_factor: time reduction of the front end (e.g. 4, 6, 8).
      subsampling_filters: channels of the front-end convolutions ("conv" and "conv1d").
      frontend: "conv" (`ConvSubsampler`, 2-D convolutions over time and frequency), "conv1d"
        (`Conv1DSubsampler`, over time, mel bins as channels: at 80 bins and 8x, 256 filters
        cost less than half of "conv" with 64) or "stack" (`StackingSubsampler`:
        ``subsampling_factor`` frames concatenated and projected).
      causal: no look-ahead beyond the attention chunk, left-padded convolutions.
      chunk_size: causal attention chunk in encoder frames (right context ``chunk_size - 1``).
      left_context: encoder frames of past context in attention (None = all; required finite
        for streaming, as it sets the cache size).
      dropout: rate for all dropout layers.
    """

    def __init__(
        self,
        num_layers=4,
        dim=144,
        num_heads=4,
        ff_expansion=4,
        kernel_size=15,
        subsampling_factor=4,
        subsampling_filters=64,
        causal=False,
        chunk_size=1,
        left_context=None,
        dropout=0.1,
        frontend="conv",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_layers, self.dim, self.num_heads = int(num_layers), int(dim), int(num_heads)
        self.ff_expansion, self.kernel_size = int(ff_expansion), int(kernel_size)
        self.subsampling_factor, self.subsampling_filters = (
            int(subsampling_factor),
            int(subsampling_filters),
        )
        self.causal, self.chunk_size = bool(causal), int(chunk_size)
        self.left_context = None if left_context is None else int(left_context)
        self.dropout_rate = float(dropout)
        self.frontend_kind = frontend
        self.frontend = make_subsampler(
            frontend, self.subsampling_factor, self.dim, self.subsampling_filters, "subsampling"
        )
        self.input_dropout = keras.layers.Dropout(self.dropout_rate)
        # One attribute per sublayer, not a list: Keras 3 tracks lists in a way that
        # tf.train.Checkpoint does not follow, and their weights would never be saved.
        for i in range(self.num_layers):
            block = ConformerBlock(
                self.dim,
                self.num_heads,
                self.ff_expansion,
                self.kernel_size,
                self.causal,
                self.dropout_rate,
                name=f"block{i}",
            )
            setattr(self, f"block{i}", block)

    def build(self, input_shape):
        # Sublayers build on the first real call. Without this, Keras traces `call` symbolically
        # at every nesting level to find them, which costs tens of seconds for a deep encoder.
        del input_shape

    @property
    def blocks(self):
        return [getattr(self, f"block{i}") for i in range(self.num_layers)]

    @property
    def reduction_factor(self):
        return self.subsampling_factor

    @property
    def output_dim(self):
        return self.dim

    @property
    def chunk_multiple(self):
        """Streaming chunks must hold a multiple of this many input frames."""
        return self.subsampling_factor * (self.chunk_size if self.causal else 1)

    def output_lengths(self, lengths):
        return self.frontend.output_lengths(lengths)

    def call(self, features, lengths, training=False):
        """``features [B, T, F]``, ``lengths [B]`` -> ``(enc [B, T', dim], lengths [B])``.

        Encoder frames at and beyond a sequence's length are zero.
        """
        x, lengths = self.frontend(features, lengths)
        x = self.input_dropout(x, training=training)
        frames = tf.shape(x)[1]
        positions = tf.range(frames)
        attn_mask = attention_mask(
            positions,
            positions,
            tf.cast(sequence_mask(lengths, frames, tf.int32), tf.bool),
            self.causal,
            self.chunk_size,
            self.left_context,
        )
        for block in self.blocks:
            x = block(x, lengths, attn_mask, positions, training=training)
        return zero_padded_frames(x, lengths), lengths

    def initial_state(self, batch_size):
        """Streaming state (a nested dict of tensors; flatten with `tf.nest` for export).

        ``frontend``: the front end's caches; ``block{i}``: ``keys``/``values``
        ``[B, H, left_context, Dh]`` and ``conv`` ``[B, K-1, dim]``; ``offset``: int32 scalar,
        encoder frames consumed so far (shared by the batch: all streams advance together).
        """
        if not self.causal or self.left_context is None:
            raise ValueError("streaming needs causal=True and a finite left_context")
        head_dim = self.dim // self.num_heads
        kv = [batch_size, self.num_heads, self.left_context, head_dim]
        state = {
            "frontend": self.frontend.initial_state(batch_size),
            "offset": tf.zeros([], tf.int32),
        }
        for i in range(self.num_layers):
            state[f"block{i}"] = {
                "keys": tf.zeros(kv, self.compute_dtype),
                "values": tf.zeros(kv, self.compute_dtype),
                "conv": tf.zeros([batch_size, self.kernel_size - 1, self.dim], self.compute_dtype),
            }
        return state

    def stream_step(self, chunk, state, valid_frames=None):
        """Encodes the next chunk of a causal stream.

        Args:
          chunk: ``[B, C, F]`` features, ``C`` a multiple of `chunk_multiple`.
          state: from `initial_state` or the previous step.
          valid_frames: optional int ``[B]``, real frames at the start of the chunk (the last
            chunk of a stream is padded); default: all ``C``.

        Returns:
          ``(enc [B, C / subsampling_factor, dim], new_state)``; concatenated over chunks this
          equals `call` on the whole stream (inference mode).
        """
        x, frontend_state = self.frontend.stream_step(chunk, state["frontend"], valid_frames)
        offset = state["offset"]
        q_pos = offset + tf.range(tf.shape(x)[1])
        k_pos = tf.concat([offset - self.left_context + tf.range(self.left_context), q_pos], 0)
        # Cache slots before the start of the stream are empty.
        key_valid = tf.broadcast_to(k_pos >= 0, [tf.shape(x)[0], tf.shape(k_pos)[0]])
        if valid_frames is not None:
            # Frames of a padded last chunk past the stream's end are not keys: with
            # chunk_size > 1 the last real frame would attend to them (`call` masks them too).
            end = offset + self.frontend.output_lengths(valid_frames)
            key_valid = tf.logical_and(key_valid, k_pos[tf.newaxis, :] < end[:, tf.newaxis])
        attn_mask = attention_mask(
            q_pos, k_pos, key_valid, self.causal, self.chunk_size, self.left_context
        )
        new_state = {"frontend": frontend_state, "offset": offset + tf.shape(x)[1]}
        for i, block in enumerate(self.blocks):
            x, new_state[f"block{i}"] = block.stream_step(x, state[f"block{i}"], q_pos, attn_mask)
        return x, new_state

    def get_config(self):
        return {
            **super().get_config(),
            "num_layers": self.num_layers,
            "dim": self.dim,
            "num_heads": self.num_heads,
            "ff_expansion": self.ff_expansion,
            "kernel_size": self.kernel_size,
            "subsampling_factor": self.subsampling_factor,
            "subsampling_filters": self.subsampling_filters,
            "causal": self.causal,
            "chunk_size": self.chunk_size,
            "left_context": self.left_context,
            "dropout": self.dropout_rate,
            "frontend": self.frontend_kind,
        }
