"""Stacked LSTM encoder: unidirectional (streaming students) or bidirectional (teachers)."""

import keras
import tensorflow as tf

from tfkd.models.subsampling import (
    make_subsampler,
    sequence_mask,
    stack_frames,
    subsampled_lengths,
    zero_padded_frames,
)


@keras.saving.register_keras_serializable(package="tfkd")
class LstmEncoder(keras.layers.Layer):
    """Front end, then stacked LSTMs with optional frame stacking between layers.

    Satisfies `tfkd.models.encoder.Encoder`; streams when unidirectional.

    Args:
      num_layers: LSTM layers.
      units: cells per direction.
      bidirectional: concatenate a backward LSTM (not streamable).
      frontend: "stack", "conv", "conv1d" (`tfkd.models.subsampling.make_subsampler`) or None
        (no front end; ``frontend_factor`` must be 1).
      frontend_factor: time reduction of the front end.
      frontend_units: output width of the front end.
      layer_reductions: per-layer time reduction applied after that layer by stacking frames
        (e.g. ``(1, 2, 1)``); None means no reduction between layers.
      dropout: dropout between layers.

    The total reduction is ``frontend_factor * prod(layer_reductions)`` and every stage maps
    ``T -> ceil(T / factor)``, so ``T' = ceil(T / reduction_factor)``.
    """

    def __init__(
        self,
        num_layers=2,
        units=256,
        bidirectional=False,
        frontend="stack",
        frontend_factor=4,
        frontend_units=256,
        layer_reductions=None,
        dropout=0.1,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_layers, self.units = int(num_layers), int(units)
        self.bidirectional = bool(bidirectional)
        self.frontend_kind, self.frontend_factor = frontend, int(frontend_factor)
        self.frontend_units = int(frontend_units)
        self.layer_reductions = tuple(int(r) for r in (layer_reductions or (1,) * self.num_layers))
        if len(self.layer_reductions) != self.num_layers:
            raise ValueError("layer_reductions needs one entry per layer")
        self.dropout_rate = float(dropout)
        if frontend is None:
            if self.frontend_factor != 1:
                raise ValueError(f"frontend=None needs frontend_factor 1, got {frontend_factor}")
            self.frontend = None
        else:
            self.frontend = make_subsampler(
                frontend, self.frontend_factor, self.frontend_units, name="frontend"
            )
        # One attribute per sublayer, not a list: Keras 3 tracks lists in a way that
        # tf.train.Checkpoint does not follow, and their weights would never be saved.
        for i in range(self.num_layers):
            if self.bidirectional:
                layer = keras.layers.Bidirectional(
                    keras.layers.LSTM(self.units, return_sequences=True), name=f"blstm{i}"
                )
            else:
                layer = keras.layers.LSTM(
                    self.units, return_sequences=True, return_state=True, name=f"lstm{i}"
                )
            setattr(self, f"lstm{i}", layer)
        self.dropout = keras.layers.Dropout(self.dropout_rate)

    def build(self, input_shape):
        # Sublayers build on the first real call. Without this, Keras traces `call` symbolically
        # at every nesting level to find them, which costs tens of seconds for a deep encoder.
        del input_shape

    @property
    def lstms(self):
        return [getattr(self, f"lstm{i}") for i in range(self.num_layers)]

    @property
    def causal(self):
        return not self.bidirectional

    @property
    def reduction_factor(self):
        factor = self.frontend_factor
        for r in self.layer_reductions:
            factor *= r
        return factor

    @property
    def output_dim(self):
        return self.units * (2 if self.bidirectional else 1)

    @property
    def chunk_multiple(self):
        """Streaming chunks must hold a multiple of this many input frames."""
        return self.reduction_factor

    def output_lengths(self, lengths):
        return subsampled_lengths(lengths, self.reduction_factor)

    def call(self, features, lengths, training=False):
        """``features [B, T, F]``, ``lengths [B]`` -> ``(enc [B, T', D], lengths [B])``.

        Encoder frames at and beyond a sequence's length are zero.
        """
        if self.frontend is None:
            x = tf.cast(features, self.compute_dtype)
        else:
            x, lengths = self.frontend(features, lengths)
        for lstm, reduction in zip(self.lstms, self.layer_reductions, strict=True):
            x = self.dropout(x, training=training)
            # The mask keeps the backward direction starting at each sequence's true end.
            mask = tf.cast(sequence_mask(lengths, tf.shape(x)[1], tf.int32), tf.bool)
            x = lstm(x, mask=mask, training=training)
            if not self.bidirectional:
                x = x[0]
            if reduction > 1:
                x = stack_frames(zero_padded_frames(x, lengths), reduction)
                lengths = subsampled_lengths(lengths, reduction)
        return zero_padded_frames(x, lengths), lengths

    def initial_state(self, batch_size):
        """Streaming state: front-end state and ``h``/``c`` ``[B, units]`` per layer."""
        if self.bidirectional:
            raise ValueError("a bidirectional encoder cannot stream")
        zeros = tf.zeros([batch_size, self.units], self.compute_dtype)
        state = {f"lstm{i}": {"h": zeros, "c": zeros} for i in range(self.num_layers)}
        state["frontend"] = {} if self.frontend is None else self.frontend.initial_state(batch_size)
        return state

    def stream_step(self, chunk, state, valid_frames=None):
        """``chunk [B, C, F]`` (``C`` a multiple of `chunk_multiple`) -> ``(enc, new_state)``.

        Concatenated over chunks this equals `call` on the whole stream (inference mode).
        ``valid_frames [B]``: real frames at the start of the chunk (default: all); frames past
        them are zeroed before every reduction, as `call` zeroes frames past a length.
        """
        new_state = {}
        if self.frontend is None:
            x, new_state["frontend"] = tf.cast(chunk, self.compute_dtype), {}
        else:
            x, new_state["frontend"] = self.frontend.stream_step(
                chunk, state["frontend"], valid_frames
            )
            if valid_frames is not None:
                valid_frames = self.frontend.output_lengths(valid_frames)
        for i, (lstm, reduction) in enumerate(zip(self.lstms, self.layer_reductions, strict=True)):
            s = state[f"lstm{i}"]
            x, h, c = lstm(x, initial_state=[s["h"], s["c"]])
            new_state[f"lstm{i}"] = {"h": h, "c": c}
            if reduction > 1:
                if valid_frames is not None:
                    x = zero_padded_frames(x, valid_frames)
                    valid_frames = subsampled_lengths(valid_frames, reduction)
                x = stack_frames(x, reduction)
        return x, new_state

    def get_config(self):
        return {
            **super().get_config(),
            "num_layers": self.num_layers,
            "units": self.units,
            "bidirectional": self.bidirectional,
            "frontend": self.frontend_kind,
            "frontend_factor": self.frontend_factor,
            "frontend_units": self.frontend_units,
            "layer_reductions": self.layer_reductions,
            "dropout": self.dropout_rate,
        }
