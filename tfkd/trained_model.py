"""Restore a trained model from its model directory: the one reader of a run's gin configuration.

`load_trained_model(model_dir)` is what bin/evaluate, bin/pseudo_label, bin/export,
bin/convert_tflite and tools/tflite_eval.py share. It parses the run's gin configuration (by
default `MODEL_DIR/operative_config.gin`, written by `bin/train`), builds the model with the bound
`train.model_fn`, takes the front end bound to the trainer the run actually used
(`train.trainer_fn`, e.g. `FullSumDistillationTrainer.frontend`), finds the SentencePiece model
and the record patterns the configuration names, and restores the checkpoint.

The export graphs (`tfkd.export`) take the restored objects and never read gin.

Records. An operative config keeps only what the run used (gin writes a macro only where a
called configurable used it): with no periodic evaluation it names no dev records, and a
distilled student's training records are its pseudo-labels. `TrainedModel.record_pattern(split)`
therefore tries, in order: a `<SPLIT>_RECORDS` macro (upper case, '-' as '_'); the evaluator's
dataset for its split (`dev`) and the training dataset for `train`; then
`<dir>/<split>-*.tfrecord` next to any of those patterns, keeping the first that matches files.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping, Sequence

import gin
import tensorflow as tf

from tfkd import checkpoints, config, features
from tfkd.data.tokenizer import Tokenizer
from tfkd.training import loop

TRAIN_COMMAND = "bin/train --gin_file=CONFIG.gin --model_dir={model_dir}"
_RECORDS_MACRO = re.compile(r"^([A-Z][A-Z0-9_]*)_RECORDS\s*=", re.MULTILINE)


@dataclasses.dataclass(frozen=True)
class TrainedModel:
    """A restored model and what its evaluation, pseudo-labelling and exports need.

    Attributes:
      model: the built transducer with the checkpoint's weights.
      frontend: the built `LogMel` of the run's trainer (its `frontend` binding, else the
        trainer's default `LogMel()`).
      trainer: the gin selector of `train.trainer_fn`, e.g. `"FullSumDistillationTrainer"`.
      spm_model: SentencePiece model path (the argument, else the `SPM_MODEL` macro, else the
        evaluator's `spm_model`), or None when nothing names one.
      tokenizer: `Tokenizer` of `spm_model`, or None when there is none or the file is missing.
      gin_config: the parsed gin configuration text (written next to exports).
      checkpoint: the restored checkpoint path.
      step: the training step stored in the checkpoint.
      global_batch_size: `train.global_batch_size` of the run, or None.
      record_patterns: {split: file pattern} the configuration names (see the module docstring).
    """

    model: object
    frontend: features.LogMel
    trainer: str
    spm_model: str | None
    tokenizer: Tokenizer | None
    gin_config: str
    checkpoint: str
    step: int
    global_batch_size: int | None
    record_patterns: Mapping[str, str]

    def record_pattern(self, split: str) -> str:
        """The records of `split`: a pattern the configuration names, else one next to them.

        Raises:
          FileNotFoundError: the configuration names no pattern for `split` and no
            `<dir>/<split>-*.tfrecord` next to its record patterns matches a file.
        """
        if split in self.record_patterns:
            return self.record_patterns[split]
        dirs = dict.fromkeys(os.path.dirname(p) for p in self.record_patterns.values())
        tried = [os.path.join(d, f"{split}-*.tfrecord") for d in dirs]
        for pattern in tried:
            if tf.io.gfile.glob(pattern):
                return pattern
        where = f"; none of {tried} matches a file" if tried else ""
        raise FileNotFoundError(
            f"the run's gin configuration names no records for split {split!r}{where}. "
            "Pass the records' file pattern explicitly."
        )


def load_trained_model(
    model_dir: str,
    gin_files: Sequence[str] = (),
    gin_bindings: Sequence[str] = (),
    checkpoint: str | None = None,
    spm_model: str | None = None,
) -> TrainedModel:
    """Host: parses a run's gin configuration, builds its model and restores a checkpoint.

    Replaces the global gin configuration while it runs and leaves it cleared.

    Args:
      model_dir: the training directory (`ckpt-N` checkpoints, `operative_config.gin`).
      gin_files: gin files of the run; default `MODEL_DIR/operative_config.gin`.
      gin_bindings: extra bindings, applied after the files.
      checkpoint: a checkpoint path; default the latest in `model_dir`.
      spm_model: SentencePiece model; default the one the configuration names.

    Returns:
      `TrainedModel`.

    Raises:
      FileNotFoundError: a gin file, the checkpoint or the given `spm_model` does not exist; the
        message names the command that makes a missing run.
      ValueError: the configuration binds no `train.model_fn` (or a gin error).
    """
    train_command = TRAIN_COMMAND.format(model_dir=model_dir)
    files = list(gin_files) or [os.path.join(model_dir, loop.OPERATIVE_CONFIG)]
    for f in files:
        if not (tf.io.gfile.exists(f) or tf.io.gfile.exists(os.path.join(config.REPO_DIR, f))):
            raise FileNotFoundError(
                f"gin config {f} not found: train the model first ({train_command} writes "
                f"{loop.OPERATIVE_CONFIG} there), or pass the run's gin files"
            )
    path = checkpoint or tf.train.latest_checkpoint(model_dir)
    if not path or not tf.io.gfile.exists(path + ".index"):
        what = f"checkpoint {path}" if path else f"no checkpoint in {model_dir}"
        raise FileNotFoundError(f"{what}: train the model first with\n  {train_command}")
    if spm_model and not tf.io.gfile.exists(spm_model):
        raise FileNotFoundError(f"SentencePiece model {spm_model} not found")

    gin.clear_config()
    try:
        text = config.parse_gin(files, gin_bindings)
        train = _bindings("train")
        model_fn = _resolve(train.get("model_fn"))
        if model_fn is None:
            raise ValueError(f"the gin configuration ({', '.join(files)}) binds no train.model_fn")
        trainer = _selector(train.get("trainer_fn")) or "SupervisedTrainer"
        frontend = _resolve(_bindings(trainer).get("frontend"))
        evaluator = _evaluator_bindings(train.get("eval_fn"))
        spm_model = spm_model or _string(_macro("SPM_MODEL")) or _string(evaluator.get("spm_model"))
        patterns = _record_patterns(text, train, evaluator)
        batch_size = _resolve(train.get("global_batch_size"))
        model = model_fn()
    finally:
        gin.clear_config()

    frontend = frontend if frontend is not None else features.LogMel()
    frontend(tf.zeros([1, frontend.frame_length * 2]))  # built: exporters track built layers
    model.build_by_calling(num_features=frontend.num_mel_bins)
    path, step = checkpoints.load_checkpoint(model, model_dir, path)
    tokenizer = Tokenizer(spm_model) if spm_model and tf.io.gfile.exists(spm_model) else None
    return TrainedModel(
        model=model,
        frontend=frontend,
        trainer=trainer,
        spm_model=spm_model,
        tokenizer=tokenizer,
        gin_config=text,
        checkpoint=path,
        step=step,
        global_batch_size=batch_size,
        record_patterns=patterns,
    )


def _bindings(selector):
    """The bindings of a (scoped) configurable, references unresolved; {} for None."""
    if not selector:
        return {}
    return gin.get_bindings(selector, resolve_references=False)


def _evaluator_bindings(reference):
    """The bindings of the run's evaluator; of an `EvalSuite`, those of its first (dev) one."""
    bindings = _bindings(_selector(reference))
    members = bindings.get("evaluators")
    if isinstance(members, list | tuple) and members:
        return _bindings(_selector(members[0]))
    return bindings


def _selector(reference):
    """`@scope/name` or `@scope/name()` -> "scope/name"; None for anything else."""
    if isinstance(reference, gin.config.ConfigurableReference):
        return reference.scoped_selector
    return None


def _resolve(value):
    """A bound value with gin references resolved: `@fn` -> the function, `@fn()`/%MACRO -> its
    value (so `@LogMel()` builds the layer with the LogMel bindings)."""
    if isinstance(value, gin.config.ConfigurableReference):
        fn = value.scoped_configurable_fn
        return fn() if value.evaluate else fn
    return value


def _macro(name):
    """The value bound to macro `name` (possibly another reference), or None."""
    try:
        return gin.query_parameter(f"%{name}")
    except ValueError:
        return None


def _string(value):
    """A bound value resolved to a non-empty string, else None (e.g. `%gin.REQUIRED`)."""
    value = _resolve(value)
    return value if isinstance(value, str) and value else None


def _record_patterns(text, train, evaluator):
    """{split: pattern} from `<SPLIT>_RECORDS` macros, then the evaluator and training datasets."""
    patterns = {}
    for name in _RECORDS_MACRO.findall(text):
        value = _string(_macro(f"{name}_RECORDS"))
        if value:
            patterns.setdefault(name.lower().replace("_", "-"), value)
    eval_data = _bindings(_selector(evaluator.get("dataset_fn")))
    for split, bindings in (
        (_resolve(evaluator.get("split")) or "dev", eval_data),
        ("train", _bindings(_selector(train.get("train_dataset_fn")))),
    ):
        value = _string(bindings.get("file_pattern"))
        if value:
            patterns.setdefault(split, value)
    return patterns
