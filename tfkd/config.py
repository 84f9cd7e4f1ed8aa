"""gin: the explicit list of configurable roots and symbols, and strict parsing.

Only what a run configuration names is registered: the `train` root, trainers, model presets,
the dataset builder, the front end, the LR schedule, one optimizer, the periodic evaluators and
the study's `StudyPlan` (the root of `tools/run_study.py`).
Library modules never import gin; registration wraps them here, so calling the plain functions
from Python (tests) ignores any global bindings.

`import gin.tf` is deliberately absent: it references `tf.estimator`, which TF 2.17 removed.
"""

from __future__ import annotations

import functools
import glob
import logging
import os
import re
from collections.abc import Iterable, Sequence

import gin
import keras

from tfkd import features
from tfkd.data import kd_batches, pipeline
from tfkd.models import presets
from tfkd.study import plan as study_plan
from tfkd.training import distillation, loop, periodic_wer, schedules, trainers

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
# Where `gin/...` names resolve after the current directory: an installed wheel ships the configs
# inside the package (setup.py installs gin/ as tfkd/gin/); in a clone (or an editable install)
# they are the source tree's gin/, beside tfkd/, bin/ and tools/.
REPO_DIR = (
    _PACKAGE_DIR
    if os.path.isdir(os.path.join(_PACKAGE_DIR, "gin"))
    else os.path.dirname(_PACKAGE_DIR)
)
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
gin.external_configurable(kd_batches.pseudo_label_dataset, name="pseudo_label_dataset")
gin.external_configurable(kd_batches.mixed_label_dataset, name="mixed_label_dataset")
gin.external_configurable(schedules.WarmupDecay, name="WarmupDecay")
gin.external_configurable(keras.optimizers.Adam, name="Adam", module="keras.optimizers")
gin.external_configurable(pipeline.make_dataset, name="make_dataset")
gin.external_configurable(features.LogMel, name="LogMel")
gin.external_configurable(features.SpecAugment, name="SpecAugment")
gin.external_configurable(periodic_wer.WerEvaluator, name="WerEvaluator")
gin.external_configurable(periodic_wer.EvalSuite, name="EvalSuite")
gin.external_configurable(study_plan.StudyPlan, name="StudyPlan")
for _builder in (
    presets.conformer_teacher,
    presets.conformer_student,
    presets.lstm_student,
    presets.low_frame_rate_student,
):
    gin.external_configurable(_builder)


class GinConfigError(ValueError):
    """A gin configuration names a macro or scope that nothing reads (a typo)."""


# Macros that code reads with `gin.query_parameter` rather than a gin file with `%NAME`
# (`tfkd.preflight`, `tfkd.trained_model`); any `<SPLIT>_RECORDS` names a split's records.
MACROS_READ_BY_CODE = frozenset(
    {
        "SPM_MODEL",
        "TEACHER_DIR",
        "SOFT_TARGETS",
        "VOCAB_SIZE",
    }
)
_RECORDS_MACRO = re.compile(r"^[A-Z][A-Z0-9_]*_RECORDS$")
# Scopes that code opens with `gin.config_scope` (none today: every scope is entered through a
# `@scope/name` reference in a gin file).
SCOPES_OPENED_BY_CODE: frozenset[str] = frozenset()

# `NAME = value`: a binding of a macro (no configurable, no parameter, no scope).
_MACRO_BINDING = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=")
_MACRO_REF = re.compile(r"%([A-Za-z_][A-Za-z0-9_./]*)")
_SCOPED_REF = re.compile(r"@([A-Za-z_][A-Za-z0-9_./]*)/[A-Za-z_][A-Za-z0-9_.]*")


def parse_gin(files: Sequence[str] = (), bindings: Sequence[str] = ()) -> str:
    """Parses gin files and bindings strictly and returns the resulting config text.

    A misspelt configurable or parameter raises (`skip_unknown=False`); so does an include or
    file that cannot be found, a macro that nothing references (`NUM_STEPZ = 3`) and a scope
    that nothing enters (`train_dta/make_dataset.max_duration_s = 3.0`); see `check_names`.
    `include` lines (`include 'gin/models/...'`) and `--gin_file` names resolve against the
    current directory first, then `REPO_DIR` (the source tree of a clone, or the installed
    package, which ships the configs as `tfkd/gin/`), so configs work from any directory.

    Raises:
        GinConfigError: an unknown macro or scope, named.
        ValueError, KeyError, IOError: from gin, naming the offending binding or file.
    """
    if REPO_DIR not in _search_paths:
        gin.add_config_file_search_path(REPO_DIR)
        _search_paths.add(REPO_DIR)
    # gin logs every search-path miss at ERROR ("Path not found: gin/teacher.gin") before it
    # finds the file under REPO_DIR; a file that is really missing raises. Keep those lines out
    # of a user's log.
    previous = logging.root.manager.disable
    logging.disable(logging.ERROR)
    try:
        gin.parse_config_files_and_bindings(
            list(files), list(bindings), skip_unknown=False, finalize_config=False
        )
    finally:
        logging.disable(previous)
    check_names()
    return gin.config_str()


def check_names() -> None:
    """Raises if the parsed configuration binds a macro or a scope that nothing uses.

    Known macros: those referenced as `%NAME` by the parsed configuration or by any gin file
    shipped in `gin/` (overlays such as `gin/demo/*.gin` reference macros that their base files
    define), those that code reads (`MACROS_READ_BY_CODE`, `*_RECORDS`). Known scopes: those
    of `@scope/name` references in the configuration or in the shipped files, and
    `SCOPES_OPENED_BY_CODE`; a nested scope `a/b` is known when `a` and `b` are. `check_run_scopes`
    is stricter about scopes, for a complete run configuration.

    Raises:
        GinConfigError: naming each unknown macro or scoped binding.
    """
    macros, scopes = _parsed_references()
    shipped_macros, shipped_scopes = _shipped_references()
    known_macros = macros | shipped_macros | MACROS_READ_BY_CODE
    known_scopes = scopes | shipped_scopes | SCOPES_OPENED_BY_CODE
    problems = []
    for name in sorted(_bound_macros()):
        if name not in known_macros and not _RECORDS_MACRO.match(name):
            problems.append(
                f"macro {name} is bound but nothing references %{name} (a misspelt macro?)"
            )
    for scope, selector in _scoped_bindings():
        unknown = [c for c in scope.split("/") if c not in known_scopes]
        if unknown:
            problems.append(
                f"scope {'/'.join(unknown)!r} of {scope}/{selector} is never entered: no "
                f"@{unknown[0]}/... reference uses it (a misspelt scope?)"
            )
    if problems:
        raise GinConfigError("; ".join(problems))


def check_run_scopes() -> None:
    """Raises if a scoped binding names a scope that this (complete) run configuration never enters.

    `check_names` accepts a scope that some shipped gin file uses, so that overlays parse on
    their own; a run whose files never reference `@train_data/...` would still ignore
    `train_data/make_dataset.max_duration_s`. bin/train calls this after `parse_gin`.

    Raises:
        GinConfigError: naming each scoped binding that the run would not read.
    """
    _, scopes = _parsed_references()
    known = scopes | SCOPES_OPENED_BY_CODE
    problems = [
        f"{scope}/{selector} is never read: this configuration enters no scope {scope!r} "
        f"(it references no @{scope}/...)"
        for scope, selector in _scoped_bindings()
        if scope not in known
    ]
    if problems:
        raise GinConfigError("; ".join(problems))


def check_run_macros(bindings: Sequence[str]) -> None:
    """Raises if a macro bound by `bindings` (the user's `--gin_bindings`) is never read by this
    (complete) run configuration.

    `check_names` accepts a macro that some shipped gin file references, so that overlays parse
    on their own; a run whose files never reference `%NUM_STEPS` would still ignore
    `--gin_bindings='NUM_STEPS = 3'`. Only command-line bindings are held to this: an overlay file
    shared by every run of a study may bind a macro that only some of them read (e.g.
    `NBEST` in gin/study/tiny_sizes.gin). Macros that code reads (`MACROS_READ_BY_CODE`,
    `*_RECORDS`) are exempt. bin/train calls this after `parse_gin`.

    Raises:
        GinConfigError: naming each such macro.
    """
    macros, _ = _parsed_references()
    matches = (_MACRO_BINDING.match(binding) for binding in bindings)
    bound = sorted({m.group(1) for m in matches if m})
    problems = [
        f"--gin_bindings binds macro {name}, but this configuration never reads %{name}"
        for name in bound
        if name not in macros and name not in MACROS_READ_BY_CODE and not _RECORDS_MACRO.match(name)
    ]
    if problems:
        raise GinConfigError("; ".join(problems))


def _bound_macros() -> set[str]:
    return {scope for scope, selector in gin.config._CONFIG if selector == "gin.macro"}


def _scoped_bindings() -> list[tuple[str, str]]:
    """[(scope, "name.param")] of the scoped bindings: ("train_data", "make_dataset.shuffle")."""
    return sorted(
        (scope, f"{selector.rsplit('.', 1)[-1]}.{param}")
        for (scope, selector), params in gin.config._CONFIG.items()
        if scope and selector != "gin.macro"
        for param in params
    )


def _parsed_references() -> tuple[set[str], set[str]]:
    """(macro names referenced as %NAME, scope components and prefixes of @scope/... references)
    in the parsed configuration."""
    macros, scopes = set(), set()
    for ref in gin.config.iterate_references(gin.config._CONFIG):
        if ref.selector == "gin.macro":
            macros.add("/".join(ref.scopes))
        elif ref.selector != "gin.constant" and ref.scopes:
            scopes.update(_scope_names(ref.scopes))
    return macros, scopes


def _scope_names(components: Iterable[str]) -> set[str]:
    """Components and prefixes: ["a", "b"] -> {"a", "b", "a/b"}."""
    components = list(components)
    names = set(components)
    names.update("/".join(components[: i + 1]) for i in range(len(components)))
    return names


@functools.cache
def _shipped_references() -> tuple[frozenset[str], frozenset[str]]:
    """(%NAME macros, @scope/... scopes) that the gin files under `gin/` reference."""
    macros, scopes = set(), set()
    for path in glob.glob(os.path.join(GIN_DIR, "**", "*.gin"), recursive=True):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        macros.update(_MACRO_REF.findall(text))
        for scope in _SCOPED_REF.findall(text):
            scopes.update(_scope_names(scope.split("/")))
    return frozenset(macros), frozenset(scopes)


_search_paths: set[str] = set()
