"""SentencePiece tokenizer whose ids are RNN-T label ids (0 = blank).

The model is trained with `pad_id=0` (piece `<blank>`, a control symbol SentencePiece never emits),
`unk_id=1` and no BOS/EOS, so SentencePiece ids are used as label ids unchanged and id 0 is free
for the RNN-T blank. `IdsToText` turns padded id batches back into text with `tf.strings` ops only,
so a SavedModel can return text without a Python callback.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterable, Sequence

import keras
import sentencepiece as spm
import tensorflow as tf

BLANK_ID = 0
UNK_ID = 1
BLANK_PIECE = "<blank>"
# SentencePiece renders an unknown id as this surface string; IdsToText copies that.
UNK_SURFACE = " \u2047 "
WORD_BOUNDARY = "\u2581"  # '▁'


def train_sentencepiece(
    sentences: Iterable[str],
    output_prefix: str,
    vocab_size: int,
    model_type: str = "unigram",
    character_coverage: float = 1.0,
    hard_vocab_limit: bool = False,
) -> str:
    """Trains a SentencePiece model with blank at id 0 and writes `<output_prefix>.model/.vocab`.

    Args:
        sentences: normalised (lower-case) training transcripts.
        output_prefix: path prefix of the written files; parent directories are created.
        vocab_size: requested size including `<blank>` and `<unk>`. With `hard_vocab_limit=False`
            a tiny corpus may give fewer pieces instead of failing.
        model_type: "unigram" or "bpe".
        character_coverage: fraction of characters covered by the model (1.0 for English).
        hard_vocab_limit: fail when `vocab_size` pieces cannot be found.

    Returns:
        The path of the written `.model` file.

    Raises:
        ValueError: for an unknown model type, a vocabulary below 3, or no non-empty sentence.
    """
    if model_type not in ("unigram", "bpe"):
        raise ValueError(f"model_type must be 'unigram' or 'bpe', got {model_type!r}")
    if vocab_size < 3:
        raise ValueError(f"vocab_size must be at least 3 (blank, unk, one piece), got {vocab_size}")
    texts = [" ".join(s.split()) for s in sentences]
    texts = [t for t in texts if t]
    if not texts:
        raise ValueError("no non-empty sentence to train SentencePiece on")
    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=proto,
        vocab_size=vocab_size,
        model_type=model_type,
        character_coverage=character_coverage,
        hard_vocab_limit=hard_vocab_limit,
        pad_id=BLANK_ID,
        pad_piece=BLANK_PIECE,
        unk_id=UNK_ID,
        bos_id=-1,
        eos_id=-1,
        # Keep training single-threaded so the same corpus gives the same model.
        num_threads=1,
        minloglevel=2,
    )
    parent = os.path.dirname(os.path.abspath(output_prefix))
    os.makedirs(parent, exist_ok=True)
    model_path = output_prefix + ".model"
    with open(model_path, "wb") as f:
        f.write(proto.getvalue())
    tok = Tokenizer(model_path)
    with open(output_prefix + ".vocab", "w", encoding="utf-8") as f:
        for i, piece in enumerate(tok.pieces):
            f.write(f"{piece}\t{tok.sp.get_score(i)}\n")
    return model_path


class Tokenizer:
    """Host-side SentencePiece wrapper: text ↔ label ids with blank = 0.

    Args:
        model: path of a `.model` file, or its serialised bytes.

    Raises:
        ValueError: if the model does not have `<blank>` as control id 0 and `<unk>` as id 1.
    """

    def __init__(self, model: str | bytes):
        if isinstance(model, bytes):
            self.sp = spm.SentencePieceProcessor(model_proto=model)
            self.model_path = None
        else:
            self.sp = spm.SentencePieceProcessor(model_file=model)
            self.model_path = model
        if not (self.sp.is_control(BLANK_ID) and self.sp.is_unknown(UNK_ID)):
            raise ValueError(
                f"{model if isinstance(model, str) else 'model'}: id 0 must be a control piece "
                "(blank) and id 1 <unk>; train it with tfkd.data.tokenizer.train_sentencepiece"
            )
        self.pieces = [self.sp.id_to_piece(i) for i in range(self.sp.get_piece_size())]

    @property
    def vocab_size(self) -> int:
        """Number of label ids including blank (the RNN-T output size V)."""
        return len(self.pieces)

    def encode(self, text: str) -> list[int]:
        """Encodes normalised text into label ids in [1, V) (never blank)."""
        return self.sp.encode(" ".join(text.split()), out_type=int)

    def decode(self, ids: Sequence[int]) -> str:
        """Decodes label ids, ignoring blank, and collapses whitespace.

        Raises:
            ValueError: for an id outside [0, V).
        """
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"ids {bad[:5]} outside [0, {self.vocab_size})")
        return " ".join(self.sp.decode([i for i in ids if i != BLANK_ID]).split())

    def ids_to_text_layer(self, **kwargs) -> IdsToText:
        """Returns an in-graph `IdsToText` layer for this vocabulary."""
        return IdsToText(self.pieces, **kwargs)


class IdsToText(keras.layers.Layer):
    """In-graph label ids → text, equal to `Tokenizer.decode` (no Python callback).

    The vocabulary is baked into the graph as a string constant, so the layer works in
    `tf.function`s, SavedModels and TF Serving. Blank (0), padding beyond `lengths` and ids
    outside [1, V) are dropped.

    Args:
        pieces: the V SentencePiece pieces, index = id (`Tokenizer.pieces`).
    """

    def __init__(self, pieces: Sequence[str], **kwargs):
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        self.pieces = list(pieces)
        surfaces = list(self.pieces)
        surfaces[BLANK_ID] = ""
        surfaces[UNK_ID] = UNK_SURFACE
        self._surfaces = surfaces
        # No weights to create: mark built so that exporters (ExportArchive) accept it uncalled.
        self.built = True

    def call(self, ids, lengths=None):
        """Decodes a padded batch.

        Args:
            ids: int [B, U] label ids.
            lengths: optional int [B] valid lengths; positions at or beyond are ignored.

        Returns:
            string [B] texts.
        """
        ids = tf.cast(ids, tf.int32)
        vocab = len(self._surfaces)
        keep = (ids > BLANK_ID) & (ids < vocab)
        if lengths is not None:
            keep &= tf.sequence_mask(lengths, tf.shape(ids)[1])
        # A constant built at trace time: the table lives in the graph, not in a variable.
        table = tf.constant(self._surfaces, dtype=tf.string)
        pieces = tf.gather(table, tf.where(keep, ids, BLANK_ID))
        text = tf.strings.reduce_join(pieces, axis=-1)
        text = tf.strings.regex_replace(text, WORD_BOUNDARY, " ")
        text = tf.strings.regex_replace(text, " +", " ")
        return tf.strings.strip(text)

    def compute_output_shape(self, ids_shape, lengths_shape=None):
        return (ids_shape[0],)

    def get_config(self):
        return {**super().get_config(), "pieces": self.pieces}


def file_sha256(path: str) -> str:
    """Hex SHA-256 of a file's bytes: the fingerprint of a SentencePiece model file."""
    digest = hashlib.sha256()
    with tf.io.gfile.GFile(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def same_vocabulary(a: Tokenizer, b: Tokenizer) -> bool:
    """Whether two models map every id to the same piece (so their token ids mean the same)."""
    return a.pieces == b.pieces
