"""The encoder contract: what `Transducer`, the decoders, the trainers and the exporter rely on.

`ConformerEncoder` and `LstmEncoder` satisfy `Encoder` (checked by `tests/test_models.py`). A new
encoder is a Keras layer with these members; nothing registers it but the preset (or gin file)
that builds it.

Beyond the protocol's members:

- It is a `keras.layers.Layer` with `get_config` (and registered with
  `keras.saving.register_keras_serializable`): `Transducer.get_config` serialises it.
- Sublayers are attributes, one per layer (not lists): Keras 3 tracks lists in a way
  `tf.train.Checkpoint` does not follow, and their weights would not be saved.
- Streaming (`tfkd.export.streaming`) flattens the state of `initial_state(1)` with `tf.nest`
  and names each tensor by its path of dict keys (`encoder/lstm0/h`, ...): the state is a nest
  of dicts of tensors with static shapes. `stream_step` is traced once for a chunk of a static
  length, so it may use Python control flow over the layers but not over the chunk's frames.
- Optional: `lstms`, the encoder's `keras.layers.LSTM` layers, which the exporter unrolls while
  it traces a chunk (no WHILE op in the on-device graph).
"""

from typing import Protocol, runtime_checkable

import tensorflow as tf


@runtime_checkable
class Encoder(Protocol):
    """An RNN-T encoder: features in, encoder frames out, and (when causal) chunk by chunk.

    Shapes: `B` utterances, `T` input (feature) frames of width `F`, `T'` encoder frames of
    width `D = output_dim`, with `T' = output_lengths(T)` (for the shipped encoders
    `ceil(T / reduction_factor)`).

    Attributes:
      reduction_factor: input frames per encoder frame (int).
      output_dim: `D`, the width of an encoder frame (int).
      causal: True when no encoder frame looks ahead beyond its streaming chunk, so that
        `initial_state` / `stream_step` can work (bool).
      chunk_multiple: a streaming chunk holds a multiple of this many input frames (int; for a
        chunked-attention encoder, `reduction_factor · chunk_size`).
    """

    reduction_factor: int
    output_dim: int
    causal: bool
    chunk_multiple: int

    def __call__(
        self, features: tf.Tensor, lengths: tf.Tensor, training: bool = False
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """Encodes a padded batch (Keras `call`).

        Args:
          features: `[B, T, F]` float features, padded after each utterance's length.
          lengths: `[B]` int32 valid input frames.
          training: dropout on or off.

        Returns:
          `(enc [B, T', D], enc_lengths [B] int32)`; encoder frames at and beyond an
          utterance's length are zero, and padding after `lengths` does not change the frames
          before it.
        """
        ...

    def output_lengths(self, lengths: tf.Tensor) -> tf.Tensor:
        """`[B]` int32 encoder frames for `lengths [B]` input frames, without running the model."""
        ...

    def initial_state(self, batch_size: int) -> dict:
        """The streaming state before the first chunk: a nest of dicts of tensors.

        Raises:
          ValueError: the encoder cannot stream (not causal, or no finite attention context).
        """
        ...

    def stream_step(
        self, chunk: tf.Tensor, state: dict, valid_frames: tf.Tensor | None = None
    ) -> tuple[tf.Tensor, dict]:
        """Encodes the next chunk of a causal stream (inference mode).

        Args:
          chunk: `[B, C, F]` features, `C` a multiple of `chunk_multiple`.
          state: from `initial_state` or the previous step.
          valid_frames: optional `[B]` int, real frames at the start of the chunk (the last
            chunk of a stream is padded); default: all `C`.

        Returns:
          `(enc [B, C / reduction_factor, D], new_state)`; concatenated over the chunks this
          equals `__call__` on the whole stream with `training=False`.
        """
        ...
