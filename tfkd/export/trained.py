"""Rebuild a trained student from a training directory (for bin/export, bin/convert_tflite, tools).

The export graphs (`saved_model`, `streaming`, `tflite`) take a built model and never read gin.
This module is the one place on the export side that does: it parses the run's gin
configuration (by default `MODEL_DIR/operative_config.gin`, written by `tfkd.training.loop`),
builds the model with the bound `train.model_fn`, takes the trainer's `frontend` binding (else
the default `LogMel`), and restores the latest checkpoint with `tfkd.evaluation.load_checkpoint`.
"""

from __future__ import annotations

import dataclasses
import os

import tensorflow as tf

from tfkd import evaluation, features
from tfkd.data.tokenizer import Tokenizer

OPERATIVE_CONFIG = "operative_config.gin"  # as tfkd.training.loop.OPERATIVE_CONFIG


@dataclasses.dataclass
class TrainedStudent:
    """A restored model with what its exports need."""

    model: object
    frontend: features.LogMel
    tokenizer: Tokenizer | None
    gin_config: str
    checkpoint: str
    step: int
    macros: dict


def _query(gin, name, default=None):
    try:
        return gin.query_parameter(name)
    except ValueError:
        return default


def _resolve(gin, value):
    """A gin `@fn` / `@fn()` reference as read by `query_parameter` -> the function / its result."""
    if isinstance(value, gin.config.ConfigurableReference):
        fn = value.scoped_configurable_fn
        return fn() if value.evaluate else fn
    return value


def _trainer_name(gin):
    ref = _query(gin, "train.trainer_fn")
    if isinstance(ref, gin.config.ConfigurableReference):
        return ref.configurable.name
    return "SupervisedTrainer"


def load_trained_student(model_dir, gin_files=(), gin_bindings=(), checkpoint=None, spm_model=None):
    """Parses the run's gin config, builds the model and restores its checkpoint.

    Args:
      model_dir: the training directory (checkpoints `ckpt-N`, `operative_config.gin`).
      gin_files: gin files; default `MODEL_DIR/operative_config.gin`.
      gin_bindings: extra bindings (applied after the files).
      checkpoint: a checkpoint path; default the latest in `model_dir`.
      spm_model: SentencePiece model; default the gin macro `SPM_MODEL` (None if neither).

    Returns:
      `TrainedStudent`.

    Raises:
      FileNotFoundError: no gin config or no checkpoint.
      ValueError: the configuration binds no `train.model_fn`.
    """
    import gin

    from tfkd import config

    files = list(gin_files) or [os.path.join(model_dir, OPERATIVE_CONFIG)]
    for f in files:
        if not (tf.io.gfile.exists(f) or tf.io.gfile.exists(os.path.join(config.REPO_DIR, f))):
            raise FileNotFoundError(f"gin config {f} not found (train first, or pass --gin_file)")
    gin.clear_config()
    try:
        text = config.parse_gin(files, gin_bindings)
        model_fn = _resolve(gin, _query(gin, "train.model_fn"))
        if model_fn is None:
            raise ValueError("the gin configuration binds no train.model_fn")
        frontend = _resolve(gin, _query(gin, f"{_trainer_name(gin)}.frontend"))
        spm_model = spm_model or _query(gin, "%SPM_MODEL")
        macros = {}
        for name in ("TRAIN_RECORDS", "DEV_RECORDS", "TEST_RECORDS", "VOCAB_SIZE"):
            value = _query(gin, "%" + name)
            if value is not None:
                macros[name] = value
        model = model_fn()
    finally:
        gin.clear_config()
    frontend = frontend or features.LogMel()
    frontend(tf.zeros([1, frontend.frame_length * 2]))  # build (exporters track built layers)
    model.build_by_calling(num_features=frontend.num_mel_bins)
    path, step = evaluation.load_checkpoint(model, model_dir, checkpoint)
    tokenizer = Tokenizer(spm_model) if spm_model else None
    return TrainedStudent(model, frontend, tokenizer, text, path, step, macros)
