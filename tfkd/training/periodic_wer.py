"""Periodic evaluation during training: dev WER and dev loss terms, for `train(eval_fn=...)`.

`EvalSuite` runs several evaluators as one `eval_fn`, e.g. dev WER beside the WER on a fixed
subset of the training data (`gin/eval/train_subset.gin`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

import tensorflow as tf

from tfkd import split_wer
from tfkd.data import tokenizer as tokenizer_lib

#: How the built-in corpus's pseudo-labelled dev records are made (named when they are missing).
PSEUDO_LABEL_DEV_COMMAND = (
    "bin/pseudo_label --teacher_dir=runs/teacher "
    "--input_pattern='data/records/dev-*.tfrecord' --output_dir=data/pseudo-dev"
)

log = logging.getLogger("tfkd.eval")


class WerEvaluator:
    """Host: decodes a held-out split with the trainer's model and reports WER and loss terms.

    The decode function is traced once (on the first call) and reused at every evaluation.

    Distillation (offline teacher): the trainer's terms need the teacher's N-best, which plain dev
    records lack. With `nbest_file_pattern`, the split is read from its pseudo-labelled copy
    (`bin/pseudo_label --input_pattern=<dev records>`: the same audio and transcripts plus the
    N-best) through `dataset_fn(file_pattern=nbest_file_pattern, with_nbest=True)`, and both WER
    and the loss terms come from it. When no file matches, the plain `dataset_fn()` gives the WER
    alone, and one warning (at the first evaluation) names `command`.

    Args:
        dataset_fn: `fn(**overrides) -> tf.data.Dataset` of pipeline batches, finite (one pass),
            e.g. gin's `@dev_data/make_dataset`; called with no arguments for the plain split.
        spm_model: SentencePiece model path, to turn ids into text for WER.
        split: name prefix of the reported values (`dev/wer`, `dev/rnnt`, ...).
        decoder: `"greedy"` or `"beam"`.
        beam_width: for `"beam"`.
        max_batches: evaluate only the first batches (`None`: the whole split).
        with_loss: also report the trainer's loss terms on the split (with `nbest_file_pattern`:
            when its records exist).
        nbest_file_pattern: pseudo-labelled records of the split (`None`: read only `dataset_fn()`).
        command: how to make those records, named when they are missing.
    """

    def __init__(
        self,
        dataset_fn: Callable[..., tf.data.Dataset],
        spm_model: str,
        *,
        split: str = "dev",
        decoder: str = "greedy",
        beam_width: int = 4,
        max_batches: int | None = None,
        with_loss: bool = True,
        nbest_file_pattern: str | None = None,
        command: str = PSEUDO_LABEL_DEV_COMMAND,
    ):
        self.dataset_fn = dataset_fn
        self.tokenizer = tokenizer_lib.Tokenizer(spm_model)
        self.split = split
        self.decoder = decoder
        self.beam_width = beam_width
        self.max_batches = max_batches
        self.with_loss = with_loss
        self.nbest_file_pattern = nbest_file_pattern
        self.command = command
        self._decode = None
        self._warned = False

    def dataset(self) -> tuple[tf.data.Dataset, bool]:
        """Host: `(dataset, with_loss)`: the split to evaluate and whether to report loss terms."""
        pattern = self.nbest_file_pattern
        if not pattern:
            return self.dataset_fn(), self.with_loss
        if tf.io.gfile.glob(pattern):
            return self.dataset_fn(file_pattern=pattern, with_nbest=True), self.with_loss
        if not self._warned:
            log.warning(
                "no pseudo-labelled %s records match %r: reporting %s/wer only, without the %s "
                "distillation loss terms; make them with: %s",
                self.split,
                pattern,
                self.split,
                self.split,
                self.command,
            )
            self._warned = True
        return self.dataset_fn(), False

    def __call__(self, trainer) -> dict[str, float]:
        if self._decode is None:
            self._decode = split_wer.make_decode_fn(
                trainer.model, trainer.frontend, self.decoder, self.beam_width
            )
        dataset, with_loss = self.dataset()
        result = split_wer.evaluate_split(
            trainer.model,
            dataset,
            self.tokenizer,
            decoder=self._decode,
            frontend=trainer.frontend,
            max_batches=self.max_batches,
        )
        out = {f"{self.split}/wer": float(result["wer"])}
        if with_loss:
            dist = trainer.strategy.experimental_distribute_dataset(dataset)
            for name, value in trainer.evaluate(dist, self.max_batches).items():
                out[f"{self.split}/{name}"] = value
        return out


class EvalSuite:
    """Host: several evaluators as one `eval_fn`; their results merged into one dict.

    Args:
        evaluators: `fn(trainer) -> {name: value}` each, called in order at every evaluation.

    Raises:
        ValueError: no evaluator; two evaluators with the same `split`, or (when called) two
            reporting the same name. The message names the duplicate.
    """

    def __init__(self, evaluators: Sequence[Callable[..., Mapping[str, float]]]):
        self.evaluators = list(evaluators)
        if not self.evaluators:
            raise ValueError("EvalSuite needs at least one evaluator")
        # Caught at start-up, not at the first evaluation: WerEvaluator names values by split.
        splits = [e.split for e in self.evaluators if hasattr(e, "split")]
        for split in splits:
            if splits.count(split) > 1:
                raise ValueError(
                    f"two evaluators of the EvalSuite have split {split!r}; give each its own"
                )

    def __call__(self, trainer) -> dict[str, float]:
        out: dict[str, float] = {}
        for evaluator in self.evaluators:
            for name, value in evaluator(trainer).items():
                if name in out:
                    raise ValueError(f"two evaluators of the EvalSuite report {name!r}")
                out[name] = value
        return out
