"""Front ends that lower the frame rate: frame stacking, and 1-D or 2-D convolution.

Both keep an exact length rule, ``T' = ceil(T / factor)``, so that the loss and the decoders can
compute output lengths without running the model (see `subsampled_lengths`). Both are causal at the
output frame rate: output frame ``i`` reads input frames ``< (i + 1) * factor`` only, so a
streaming student can run them chunk by chunk (chunks a multiple of ``factor`` frames).
"""

import keras
import tensorflow as tf


def subsampled_lengths(lengths, factor):
    """Output lengths of a front end with time reduction ``factor``: ``ceil(lengths / factor)``.

    Args:
      lengths: int tensor of any shape, input frame counts.
      factor: int, total time reduction.

    Returns:
      Int tensor of the same shape and dtype.
    """
    return (lengths + factor - 1) // factor


def sequence_mask(lengths, max_len, dtype):
    """``[B, T]`` mask of valid frames, as ``dtype``."""
    return tf.sequence_mask(lengths, max_len, dtype=dtype)


def zero_padded_frames(x, lengths):
    """Zeroes frames of ``x [B, T, ...]`` at and beyond ``lengths [B]``."""
    mask = sequence_mask(lengths, tf.shape(x)[1], x.dtype)
    # expand_dims, not a reshape to a computed shape: keeps the static trailing dims of ``x``
    # (TFLite's Conv2D needs a static channel count).
    for _ in range(x.shape.rank - 2):
        mask = tf.expand_dims(mask, -1)
    return x * mask


def pad_time_to_multiple(x, factor):
    """Right-pads axis 1 of ``x`` with zeros to a multiple of ``factor``."""
    pad = (-tf.shape(x)[1]) % factor
    paddings = [[0, 0], [0, pad]] + [[0, 0]] * (x.shape.rank - 2)
    return tf.pad(x, paddings)


def stack_frames(x, factor):
    """Concatenates groups of ``factor`` frames: ``[B, T, D] -> [B, ceil(T/factor), factor*D]``."""
    x = pad_time_to_multiple(x, factor)
    return tf.reshape(x, [tf.shape(x)[0], -1, factor * x.shape[-1]])


def split_factor(factor):
    """Splits a reduction into conv stage strides of 2 (first) and 3, e.g. 6 -> (2, 3)."""
    strides, rest = [], int(factor)
    for prime in (2, 3):
        while rest % prime == 0:
            strides.append(prime)
            rest //= prime
    if rest != 1 or not strides:
        raise ValueError(f"subsampling factor must be 2^a * 3^b > 1, got {factor}")
    return tuple(strides)


FRONTENDS = ("conv", "conv1d", "stack")


def make_subsampler(kind, factor, units, filters=64, name="subsampling"):
    """The front end named ``kind``: "conv" (`ConvSubsampler`), "conv1d" (`Conv1DSubsampler`)
    or "stack" (`StackingSubsampler`, which has no ``filters``), ``[B, T, F] -> [B, T', units]``.
    """
    if kind == "conv":
        return ConvSubsampler(factor, filters, units, name=name)
    if kind == "conv1d":
        return Conv1DSubsampler(factor, filters, units, name=name)
    if kind == "stack":
        return StackingSubsampler(factor, units, name=name)
    raise ValueError(f"unknown front end {kind!r}; use one of {', '.join(FRONTENDS)}")


@keras.saving.register_keras_serializable(package="tfkd")
class StackingSubsampler(keras.layers.Layer):
    """Stacks ``factor`` consecutive frames and projects them to ``units``.

    Stateless when streaming: chunks must hold a multiple of ``factor`` frames.
    """

    def __init__(self, factor=4, units=256, **kwargs):
        super().__init__(**kwargs)
        self.factor = int(factor)
        self.units = int(units)
        self.proj = keras.layers.Dense(self.units, name="proj")

    def build(self, input_shape):
        # Sublayers build on the first real call. Without this, Keras traces `call` symbolically
        # at every nesting level to find them, which costs tens of seconds for a deep encoder.
        del input_shape

    def output_lengths(self, lengths):
        return subsampled_lengths(lengths, self.factor)

    def call(self, x, lengths):
        """``x [B, T, F]``, ``lengths [B]`` -> ``([B, ceil(T/f), units], lengths')``."""
        x = zero_padded_frames(tf.cast(x, self.compute_dtype), lengths)
        return self.proj(stack_frames(x, self.factor)), self.output_lengths(lengths)

    def initial_state(self, batch_size):
        del batch_size
        return {}

    def stream_step(self, chunk, state, valid_frames=None):
        """``chunk [B, C, F]`` (``C % factor == 0``) -> ``([B, C/factor, units], state)``.

        ``valid_frames [B]``: real frames at the start of the chunk (default: all); the rest are
        zeroed as `call` zeroes frames past a sequence's length.
        """
        x = tf.cast(chunk, self.compute_dtype)
        if valid_frames is not None:
            x = zero_padded_frames(x, valid_frames)
        return self.proj(stack_frames(x, self.factor)), state

    def get_config(self):
        return {**super().get_config(), "factor": self.factor, "units": self.units}


class _StridedConvSubsampler(keras.layers.Layer):
    """Stages of strided convolutions over time, then a projection to ``units``.

    Each stage with time stride ``s`` has a time kernel of ``2s-1`` and ReLU. In time, it pads
    ``s-1`` zero frames on the left (the only context it reads from the past) and pads on the
    right to a multiple of ``s``, so the stage maps ``T -> ceil(T/s)`` and the stack maps
    ``T -> ceil(T/factor)``. Frames beyond a sequence's length are zeroed before every stage,
    which makes outputs on valid frames independent of how much padding follows. Streaming keeps
    the last ``s-1`` input frames of each stage as state.

    Subclasses say what a stage convolves: `_new_conv`, `_to_conv_layout` (``[B, T, F]`` to the
    convolutions' layout), `_FEATURE_PADDING` (padding of the axes after time), `_cache_shape`
    and `_flatten` (back to ``[B, T', D]``).
    """

    def __init__(self, factor=4, filters=64, units=256, **kwargs):
        super().__init__(**kwargs)
        self.factor = int(factor)
        self.filters = int(filters)
        self.units = int(units)
        self.strides = split_factor(self.factor)
        # One attribute per sublayer, not a list: Keras 3 tracks lists in a way that
        # tf.train.Checkpoint does not follow, and their weights would never be saved.
        for i, s in enumerate(self.strides):
            setattr(self, f"conv{i}", self._new_conv(s, name=f"conv{i}"))
        self.proj = keras.layers.Dense(self.units, name="proj")
        self._num_features = None

    def build(self, input_shape):
        # Sublayers build on the first real call. Without this, Keras traces `call` symbolically
        # at every nesting level to find them, which costs tens of seconds for a deep encoder.
        del input_shape

    @property
    def convs(self):
        return [getattr(self, f"conv{i}") for i in range(len(self.strides))]

    def output_lengths(self, lengths):
        return subsampled_lengths(lengths, self.factor)

    def call(self, x, lengths):
        """``x [B, T, F]``, ``lengths [B]`` -> ``([B, ceil(T/factor), units], lengths')``."""
        self._num_features = int(x.shape[-1])
        x = self._to_conv_layout(tf.cast(x, self.compute_dtype))
        for conv, s in zip(self.convs, self.strides, strict=True):
            x = zero_padded_frames(x, lengths)
            x = tf.pad(x, [[0, 0], [s - 1, 0], *self._FEATURE_PADDING])
            x = conv(_right_pad_stage(x, s))
            lengths = subsampled_lengths(lengths, s)
        return self.proj(self._flatten(x)), lengths

    def initial_state(self, batch_size):
        """Zero caches (the left padding of the full-utterance path), one per stage."""
        if self._num_features is None:
            raise ValueError("call the layer once before streaming (feature size unknown)")
        return {
            f"cache{i}": tf.zeros([batch_size, s - 1, *self._cache_shape(i)], self.compute_dtype)
            for i, s in enumerate(self.strides)
        }

    def stream_step(self, chunk, state, valid_frames=None):
        """``chunk [B, C, F]`` (``C % factor == 0``) -> ``([B, C/factor, units], new_state)``.

        ``valid_frames [B]``: real frames at the start of the chunk (default: all). As in `call`,
        every stage's input is zeroed past them, so that the padding of a stream's last chunk
        does not reach the last real output frame, whose receptive field extends past the end.
        """
        x = self._to_conv_layout(tf.cast(chunk, self.compute_dtype))
        new_state = {}
        for i, (conv, s) in enumerate(zip(self.convs, self.strides, strict=True)):
            if valid_frames is not None:
                # Chunks start at multiples of the total stride, so stage lengths count alike.
                x = zero_padded_frames(x, valid_frames)
                valid_frames = subsampled_lengths(valid_frames, s)
            x = tf.concat([state[f"cache{i}"], x], axis=1)
            new_state[f"cache{i}"] = x[:, -(s - 1) :]
            x = conv(tf.pad(x, [[0, 0], [0, 0], *self._FEATURE_PADDING]))
        return self.proj(self._flatten(x)), new_state

    def get_config(self):
        return {
            **super().get_config(),
            "factor": self.factor,
            "filters": self.filters,
            "units": self.units,
        }


@keras.saving.register_keras_serializable(package="tfkd")
class ConvSubsampler(_StridedConvSubsampler):
    """2-D convolution subsampling (time x frequency), then a projection to ``units``.

    A stage with time stride ``s`` uses a ``(2s-1) x 3`` kernel and frequency stride 2 (one zero
    bin padded on each side, so ``F -> ceil(F/2)``); the time rules are those of
    `_StridedConvSubsampler`.
    """

    def _new_conv(self, s, name):
        return keras.layers.Conv2D(
            self.filters,
            kernel_size=(2 * s - 1, 3),
            strides=(s, 2),
            padding="valid",
            activation="relu",
            name=name,
        )

    _FEATURE_PADDING = ([1, 1], [0, 0])  # one zero bin each side of frequency; not channels

    def _to_conv_layout(self, x):
        return tf.expand_dims(x, -1)  # [B, T, F, 1]

    def _cache_shape(self, stage):
        """(frequency bins, channels) of a stage's input."""
        freq = self._num_features
        for _ in range(stage):
            freq = (freq + 1) // 2
        return (freq, 1 if stage == 0 else self.filters)

    def _flatten(self, x):
        return tf.reshape(x, [tf.shape(x)[0], tf.shape(x)[1], x.shape[2] * x.shape[3]])


@keras.saving.register_keras_serializable(package="tfkd")
class Conv1DSubsampler(_StridedConvSubsampler):
    """1-D convolution subsampling over time (mel bins as channels), then a projection.

    A stage with time stride ``s`` has a kernel of ``2s-1`` frames (the time rules of
    `_StridedConvSubsampler`) and costs ``(2s-1) * C_in * filters`` multiply-adds per output
    frame: at 80 mel bins and 8x, 256 filters cost about 100k per input frame, against about
    240k for `ConvSubsampler` with 64.
    """

    def __init__(self, factor=4, filters=128, units=256, **kwargs):
        super().__init__(factor, filters, units, **kwargs)

    def _new_conv(self, s, name):
        return keras.layers.Conv1D(
            self.filters,
            kernel_size=2 * s - 1,
            strides=s,
            padding="valid",
            activation="relu",
            name=name,
        )

    _FEATURE_PADDING = ([0, 0],)  # channels

    def _to_conv_layout(self, x):
        return x  # [B, T, F]: bins as channels

    def _cache_shape(self, stage):
        """(channels,) of a stage's input."""
        return (self._num_features if stage == 0 else self.filters,)

    def _flatten(self, x):
        return x


def _right_pad_stage(x, s):
    """Right-pads a left-padded stage input of ``s-1+T`` frames so that the valid conv with
    kernel ``2s-1`` and stride ``s`` yields exactly ``ceil(T/s)`` frames."""
    frames = tf.shape(x)[1] - (s - 1)
    pad = (-frames) % s
    padded = tf.pad(x, [[0, 0], [0, pad]] + [[0, 0]] * (x.shape.rank - 2))
    # A pad by a tensor forgets every static dim; TFLite's convolutions need the channels back.
    return tf.reshape(padded, [tf.shape(padded)[0], tf.shape(padded)[1], *x.shape[2:]])
