"""Periodic evaluation during training: dev WER and dev loss terms, for `train(eval_fn=...)`."""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

from tfkd import evaluation
from tfkd.data import tokenizer as tokenizer_lib


class WerEvaluator:
    """Host: decodes a held-out split with the trainer's model and reports WER and loss terms.

    The decode function is traced once (on the first call) and reused at every evaluation.

    Args:
        dataset_fn: `fn() -> tf.data.Dataset` of pipeline batches, finite (one pass).
        spm_model: SentencePiece model path, to turn ids into text for WER.
        split: name prefix of the reported values (`dev/wer`, `dev/rnnt`, ...).
        decoder: `"greedy"` or `"beam"`.
        beam_width: for `"beam"`.
        max_batches: evaluate only the first batches (`None`: the whole split).
        with_loss: also report the trainer's loss terms on the split.
    """

    def __init__(
        self,
        dataset_fn: Callable[[], tf.data.Dataset],
        spm_model: str,
        *,
        split: str = "dev",
        decoder: str = "greedy",
        beam_width: int = 4,
        max_batches: int | None = None,
        with_loss: bool = True,
    ):
        self.dataset_fn = dataset_fn
        self.tokenizer = tokenizer_lib.Tokenizer(spm_model)
        self.split = split
        self.decoder = decoder
        self.beam_width = beam_width
        self.max_batches = max_batches
        self.with_loss = with_loss
        self._decode = None

    def __call__(self, trainer) -> dict[str, float]:
        if self._decode is None:
            self._decode = evaluation.make_decode_fn(
                trainer.model, trainer.frontend, self.decoder, self.beam_width
            )
        dataset = self.dataset_fn()
        result = evaluation.evaluate_split(
            trainer.model,
            dataset,
            self.tokenizer,
            decoder=self._decode,
            frontend=trainer.frontend,
            max_batches=self.max_batches,
        )
        out = {f"{self.split}/wer": float(result["wer"])}
        if self.with_loss:
            dist = trainer.strategy.experimental_distribute_dataset(dataset)
            for name, value in trainer.evaluate(dist, self.max_batches).items():
                out[f"{self.split}/{name}"] = value
        return out
