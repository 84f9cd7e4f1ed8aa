"""gin: the explicit list of configurable roots and symbols, and strict parsing.

Only what a run configuration names is registered: the `train` root, trainers, model presets,
the dataset builder, the front end, the LR schedule, one optimizer, the periodic evaluators and
the study's `StudyPlan` (the root of `tools/run_study.py`).
Library modules never import gin; registration wraps them here, so calling the plain functions
from Python (tests) ignores any global bindings.

`import gin.tf` is deliberately absent: it references `tf.estimator`, which TF 2.17 removed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import gin
import keras

from tfkd import features
from tfkd.data import pipeline
from tfkd.models import presets
from tfkd.study import plan as study_plan
from tfkd.training import distillation, loop, periodic_eval, schedules, trainers

REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIN_DIR = os.path.join(REPO_DIR, "gin")

train = gin.external_configurable(loop.train, name="train")

gin.external_configurable(trainers.SupervisedTrainer, name="SupervisedTrainer")
for _trainer in (
    distillation.HardDistillationTrainer,
    distillation.SoftDistillationTrainer,
    distillation.FullSumDistillationTrainer,
    distillation.DiscriminativeFullSumTrainer,
):
    gin.external_configurable(_trainer, name=_trainer.__name__)
gin.external_configurable(distillation.pseudo_label_dataset, name="pseudo_label_dataset")
gin.external_configurable(distillation.mixed_label_dataset, name="mixed_label_dataset")
gin.external_configurable(schedules.WarmupDecay, name="WarmupDecay")
gin.external_configurable(keras.optimizers.Adam, name="Adam", module="keras.optimizers")
gin.external_configurable(pipeline.make_dataset, name="make_dataset")
gin.external_configurable(features.LogMel, name="LogMel")
gin.external_configurable(features.SpecAugment, name="SpecAugment")
gin.external_configurable(periodic_eval.WerEvaluator, name="WerEvaluator")
gin.external_configurable(periodic_eval.EvalSuite, name="EvalSuite")
gin.external_configurable(study_plan.StudyPlan, name="StudyPlan")
for _builder in (
    presets.conformer_teacher,
    presets.conformer_student,
    presets.lstm_student,
    presets.low_frame_rate_student,
):
    gin.external_configurable(_builder)


def parse_gin(files: Sequence[str] = (), bindings: Sequence[str] = ()) -> str:
    """Parses gin files and bindings strictly and returns the resulting config text.

    A misspelt configurable or parameter raises (`skip_unknown=False`); so does an include or
    file that cannot be found. `include` lines (`include 'gin/models/...'`) and `--gin_file`
    names resolve against the current directory first, then tfkd's source tree (the parent of
    `gin/`), so configs work from any directory.

    Raises:
        ValueError, KeyError, IOError: from gin, naming the offending binding or file.
    """
    if REPO_DIR not in _search_paths:
        gin.add_config_file_search_path(REPO_DIR)
        _search_paths.add(REPO_DIR)
    gin.parse_config_files_and_bindings(
        list(files), list(bindings), skip_unknown=False, finalize_config=False
    )
    return gin.config_str()


_search_paths: set[str] = set()
