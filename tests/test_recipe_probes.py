"""tools/recipe_probes.py: probes parse strictly, name real parents and report their results."""

import inspect
import json
import pathlib
import runpy

import gin
import pytest
from gin_settings import gin_settings

from tfkd import config
from tfkd.data import pipeline
from tfkd.models import presets
from tfkd.training import schedules, trainers

ROOT = pathlib.Path(__file__).resolve().parents[1]
TOOL = runpy.run_path(str(ROOT / "tools" / "recipe_probes.py"))
PROBES = TOOL["PROBES"]


@pytest.mark.parametrize("name", sorted(PROBES))
def test_every_probe_parses_strictly_and_has_a_known_parent(name, clean_gin):
    probe = PROBES[name]
    assert probe.parent is None or probe.parent in PROBES
    argv = TOOL["train_command"](probe, "runs/recipe/x", "data", None)
    files = [a.split("=", 1)[1] for a in argv if a.startswith("--gin_file=")]
    bindings = [a.split("=", 1)[1] for a in argv if a.startswith("--gin_bindings=")]
    assert files[-1] == "gin/eval/train_subset.gin" and argv[-1] == "--model_dir=runs/recipe/x"
    config.parse_gin(files, bindings)  # strict: a misspelt binding raises
    assert gin.query_parameter("train.eval_every") in (250, 500)


def test_starting_points_are_the_frozen_demo_models(clean_gin):
    config.parse_gin(["gin/teacher.gin", "gin/recipe/teacher_base.gin"])
    assert gin.query_parameter("conformer_teacher.frontend") == "conv"
    assert gin.query_parameter("%NUM_STEPS") == 1500
    gin.clear_config()
    config.parse_gin(["gin/student_baseline.gin", "gin/recipe/student_base.gin"])
    assert gin.query_parameter("conformer_student.frontend") == "conv"
    assert gin.query_parameter("conformer_student.dim") == 96
    assert gin.query_parameter("%NUM_STEPS") == 1000


def test_report_tabulates_finished_probes_only(tmp_path):
    result = {
        "name": "teacher_stack",
        "parent": "teacher_demo_old",
        "change": "stacking front end, 6,000 steps",
        "train_minutes": 36.86,
        "cpu_minutes": 29.73,
        "final": {"dev": {"wer": 52.43, "step": 6000}, "test": {"wer": 48.01, "step": 6000}},
        "curve": [{"step": 6000, "dev/wer": 47.07, "train/wer": 6.34}],
    }
    (tmp_path / "teacher_stack.json").write_text(json.dumps(result))
    lines = TOOL["report"](str(tmp_path)).splitlines()
    assert len(lines) == 3
    assert lines[2] == (
        "| `teacher_stack` | teacher_demo_old | stacking front end, 6,000 steps | 6000 | 36.9 "
        "| 29.7 | 52.4 | 48.0 | 6.3 / 47.1 |"
    )


def test_unknown_probe_is_an_error_naming_it():
    with pytest.raises(SystemExit, match=r"unknown probes \['teacher_typo'\]; see --list"):
        TOOL["main"](["teacher_typo"])


TEACHER_KEYS = [f"conformer_teacher.{k}" for k in ("frontend", "num_layers", "dim", "dropout")]
STUDENT_KEYS = [
    f"conformer_student.{k}"
    for k in ("frontend", "subsampling_filters", "num_layers", "dim", "dropout")
]
SHARED_KEYS = [
    "%NUM_STEPS",
    "%PEAK_LR",
    "%WARMUP_STEPS",
    "%BATCH_SIZE",
    "WarmupDecay.decay",
    "WarmupDecay.decay_steps",
    "SupervisedTrainer.ctc_weight",
    "SupervisedTrainer.spec_augment",
    "train_data/make_dataset.file_pattern",
    "train_data/make_dataset.speed_factors",
]


# Where an unbound key's default comes from.
DEFAULTS_OF = {
    "SupervisedTrainer": trainers.LossTermsTrainer.__init__,
    "conformer_teacher": presets.conformer_teacher,
    "conformer_student": presets.conformer_student,
    "train_data/make_dataset": pipeline.make_dataset,
    "WarmupDecay": schedules.WarmupDecay.__init__,
}


def _settings(files, bindings, keys):
    """Each key's value after strict parsing, macros followed; the code's default if unbound."""

    def default(key):
        owner, name = key.rsplit(".", 1)
        return inspect.signature(DEFAULTS_OF[owner]).parameters[name].default

    return dict(zip(keys, gin_settings(files, bindings, keys, default), strict=True))


@pytest.mark.parametrize(
    "probe, demo_files, keys",
    [
        (
            "teacher_stack_respoken_cosine",
            ["gin/teacher.gin", "gin/demo/teacher.gin"],
            TEACHER_KEYS,
        ),
        (
            "student_lean_respoken_cosine",
            ["gin/student_baseline.gin", "gin/demo/student.gin", "gin/demo/baseline.gin"],
            STUDENT_KEYS,
        ),
    ],
)
def test_demo_models_are_the_probes_that_measured_them(probe, demo_files, keys, clean_gin):
    argv = TOOL["train_command"](PROBES[probe], "runs/x", "data", None)
    files = [a.split("=", 1)[1] for a in argv if a.startswith("--gin_file=")][:-1]
    bindings = [a.split("=", 1)[1] for a in argv if a.startswith("--gin_bindings=")]
    data = [*bindings[:3], "RESPOKEN_RECORDS = 'data/records/train-respoken-*.tfrecord'"]
    measured = _settings(files, bindings, keys + SHARED_KEYS)
    demo = _settings(demo_files, data, keys + SHARED_KEYS)
    assert demo == measured
    assert demo["train_data/make_dataset.file_pattern"] == [
        "data/records/train-labeled-*.tfrecord",
        "data/records/train-respoken-*.tfrecord",
    ]
