"""The study driver (`tools/run_study.py`, `tfkd.study`): plan, statistics, scheduler, report."""

import dataclasses
import glob
import json
import math
import os
import re
import shutil
import subprocess
import sys
import types

import gin
import pytest
from tool_scripts import load_tool

from tfkd import cli, config
from tfkd.study import carry, plan_jobs, report, report_markdown, scheduler, stats
from tfkd.study import jobs as jobs_lib
from tfkd.study import mirror as mirror_lib
from tfkd.study import plan as plan_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ---- statistics ------------------------------------------------------------------------------


def test_mean_ci95_uses_student_t():
    mean, half = stats.mean_ci95([1.0, 2.0, 3.0])
    assert mean == 2.0
    assert half == pytest.approx(4.303 * 1.0 / math.sqrt(3))  # s = 1, t_{0.975,2} = 4.303
    assert stats.mean_ci95([5.0]) == (5.0, None)
    assert stats.t_quantile_975(1) == 12.706
    assert stats.t_quantile_975(100) == pytest.approx(1.96, abs=1e-3)
    with pytest.raises(ValueError, match="at least one value"):
        stats.mean_ci95([])
    assert stats.relative_reduction(40.0, 50.0) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="positive"):
        stats.relative_reduction(1.0, 0.0)


def test_paired_difference_uses_the_seeds_both_have():
    a = {0: 30.0, 1: 31.0, 2: 29.5, 3: 99.0}  # seed 3: not in b, left out
    b = {0: 31.0, 1: 32.5, 2: 30.0}
    diff = stats.paired_difference(a, b)
    # d = [-1.0, -1.5, -0.5]: mean -1.0, s = 0.5, half-width t_{0.975,2} * s / sqrt(3)
    assert diff == {"mean": -1.0, "ci95": pytest.approx(4.303 * 0.5 / math.sqrt(3)),
                    "seeds": [0, 1, 2], "n": 3}  # fmt: skip
    assert diff["ci95"] == pytest.approx(1.2422, abs=1e-4)
    assert stats.paired_difference({1: 30.0, 2: 31.0}, {1: 32.5}) == {
        "mean": -2.5, "ci95": None, "seeds": [1], "n": 1
    }  # fmt: skip
    assert stats.paired_difference({0: 30.0}, {1: 30.0}) is None
    assert stats.paired_difference({}, {}) is None


def test_paired_verdict_says_which_is_better_only_when_the_interval_excludes_zero():
    def verdict(mean, ci95, n=3):
        return stats.paired_verdict({"mean": mean, "ci95": ci95, "n": n}, "full-sum", "hard")

    assert verdict(-1.0, 0.5) == "full-sum better"  # lower WER is better
    assert verdict(1.0, 0.5) == "hard better"
    assert verdict(-1.0, 1.2422) == "no separation"
    assert verdict(-1.0, 1.0) == "no separation"  # touching 0 does not exclude it
    assert verdict(-1.0, None, n=1) == "one seed: no interval"
    assert stats.paired_verdict(None, "full-sum", "hard") == "no common seed"
    assert stats.paired_verdict({"mean": -1.0, "ci95": 0.5, "n": 3}) == "A better"


def test_seeds_for_half_width_is_the_fewest_seeds_within_the_target():
    # sd 1, target 1.5: n = 3 gives 4.303 / 1.732 = 2.48, n = 4 3.182 / 2 = 1.59, n = 5
    # 2.776 / 2.236 = 1.24.
    assert stats.seeds_for_half_width(1.0, 1.5) == 5
    # sd 2: n = 9 gives 2.306 * 2 / 3 = 1.54, n = 10 2.262 * 2 / 3.162 = 1.43.
    assert stats.seeds_for_half_width(2.0, 1.5) == 10
    # sd 2.5, target 1: n = 26 gives 2.060 * 2.5 / 5.099 = 1.010, n = 27 2.056 * 2.5 / 5.196
    # = 0.989.
    assert stats.seeds_for_half_width(2.5, 1.0) == 27
    assert stats.seeds_for_half_width(0.0, 1.5) == 2  # no spread: the fewest with an interval
    assert stats.seeds_for_half_width(1.0, 1.5, max_seeds=4) is None
    assert stats.seeds_for_half_width(1.0, 0.1) is None  # n = 30: 2.045 / 5.477 = 0.37
    with pytest.raises(ValueError, match="target > 0"):
        stats.seeds_for_half_width(1.0, 0.0)
    assert stats.sample_sd([40.0, 42.0, 41.0]) == 1.0
    assert stats.sample_sd([30.0, 32.0, 31.0, 33.0]) == pytest.approx(math.sqrt(5 / 3))
    assert stats.sample_sd([41.0]) is None and stats.sample_sd([]) is None


# ---- plan ------------------------------------------------------------------------------------


def load_preset(name, **overrides):
    gin.clear_config()
    try:
        config.parse_gin([plan_lib.preset_path(name)])
        return gin.get_configurable("StudyPlan")(**overrides)
    finally:
        gin.clear_config()  # the plan is built: later tests start from an empty config


def test_presets_are_the_papers_and_gin_study_holds_only_per_run_overlays():
    def binds_plan(path):
        with open(path) as f:
            return any(line.startswith("StudyPlan.") for line in f)

    papers = os.path.join(REPO, plan_lib.PRESET_DIR)
    presets = sorted(n for n in os.listdir(papers) if binds_plan(os.path.join(papers, n)))
    assert presets == ["librispeech.gin", "methods.gin", "small.gin", "tiny.gin"]
    study = os.path.join(REPO, "gin", "study")
    assert not [n for n in os.listdir(study) if binds_plan(os.path.join(study, n))]
    assert plan_lib.preset_path("small") == f"{plan_lib.PRESET_DIR}/small.gin"
    assert plan_lib.preset_path("/tmp/mine.gin") == "/tmp/mine.gin"


@pytest.mark.parametrize(
    "gin_file", sorted(glob.glob(os.path.join(REPO, plan_lib.PRESET_DIR, "*.gin")))
)
def test_every_preset_file_parses_strictly(clean_gin, gin_file):
    # (tests/test_training.py parses gin/*.gin and gin/*/*.gin; the presets are a level deeper)
    assert config.parse_gin([gin_file]).strip()


def test_small_preset_expands_into_every_run_with_valid_dependencies(tmp_path):
    plan = load_preset("small", out_dir=str(tmp_path / "out"), data_dir=str(tmp_path / "data"))
    jobs = plan_jobs.jobs(plan)
    names = [j.name for j in jobs]
    assert len(names) == len(set(names))
    seen = set()
    for job in jobs:  # every dependency is a job listed before its dependants
        assert set(job.deps) <= seen, job.name
        seen.add(job.name)
    kinds = [j.info.get("kind") for j in jobs]
    assert names[:5] == ["data-corpus", "data-spm", "data-records", "data-respoken", "data-pool"]
    assert kinds.count("teacher") == 3
    # N-best per teacher and per noise rate; soft targets (1-best) per teacher
    assert kinds.count("pseudo") == 3 + 1 + 3
    students = [j.info for j in jobs if j.info.get("kind") == "student"]
    # baseline 3 seeds; 3 teachers x 5 methods x 3 seeds; full-sum + labelled with the bad
    # teacher, 3 seeds; noise 1 rate x 2 methods x 3 seeds; tuning: soft 2 x 2 (omega, shift),
    # full-sum 2 length norms, disc 2 x 2 (eta, tau), one of each grid being a seed-0 run.
    assert len(students) == 3 + 45 + 3 + 6 + 3 + 1 + 3
    cell = [s for s in students if s["arm"] == "teacher-good" and s["method"] == "full-sum"]
    assert sorted(s["seed"] for s in cell) == [0, 1, 2]
    mixed = {s["arm"] for s in students if s["method"] == "full-sum + labelled"}
    assert mixed == {"teacher-bad"}


def test_student_commands_point_at_their_teacher(tmp_path):
    plan = load_preset("small", out_dir=str(tmp_path / "out"), data_dir=str(tmp_path / "data"))
    jobs = {j.name: j for j in plan_jobs.jobs(plan)}
    soft = jobs["student-teacher-medium-soft-OMEGA=0.1,SHIFT=2-s0"]
    train, evaluate = soft.argv_lists()
    assert "--gin_file=gin/soft_kd_offline.gin" in train
    assert not any("TEACHER_DIR" in a for a in train)  # offline: no teacher in the trainer
    soft_dir = plan.pseudo_dir("medium", soft_targets=True)
    assert soft.deps == ("pseudo-medium-soft", "data-pool") and soft_dir.endswith(
        "pseudo/medium-soft"
    )
    pseudo = os.path.join(soft_dir, "*.tfrecord")
    assert f"--gin_bindings=PSEUDO_LABEL_RECORDS = '{pseudo}'" in train
    assert "--gin_bindings=SHIFT = 2" in train and "--gin_bindings=OMEGA = 0.1" in train
    soft_pl = jobs["pseudo-medium-soft"].argv_lists()[0]
    assert "--soft_targets" in soft_pl and "--nbest=1" in soft_pl
    assert f"--output_dir={soft_dir}" in soft_pl
    hard_pl = jobs["pseudo-medium"].argv_lists()[0]
    assert "--soft_targets" not in hard_pl and f"--nbest={plan.nbest}" in hard_pl
    # Full-sum is tuned on the medium teacher: its seed-0 runs there are the tuning runs.
    full_sum_job = jobs["student-teacher-medium-full-sum-LENGTH_NORM=True-s0"]
    assert full_sum_job.deps == ("pseudo-medium", "data-pool")
    full_sum = full_sum_job.argv_lists()[0]
    nbest = os.path.join(plan.pseudo_dir("medium"), "*.tfrecord")
    assert f"--gin_bindings=PSEUDO_LABEL_RECORDS = '{nbest}'" in full_sum
    assert "--gin_bindings=LENGTH_NORM = True" in full_sum
    assert "--gin_file=gin/fullsum_kd.gin" in full_sum
    assert "--gin_bindings=train.seed = 0" in train
    assert evaluate[1].endswith("bin/evaluate") and "--split=test" in evaluate
    noisy = jobs["student-noise-0.3-hard-default-s1"]
    assert noisy.deps == ("pseudo-good-noise0.3", "data-pool")
    assert "--gin_bindings=train.seed = 1" in noisy.argv_lists()[0]
    baseline = jobs["student-no-kd-no-kd-default-s2"].argv_lists()[0]
    assert not any("PSEUDO_LABEL" in a or "TEACHER_DIR" in a for a in baseline)
    assert "--gin_file=gin/study/labelled_respoken.gin" in baseline
    respoken = os.path.join(plan.data_dir, "records", "train-respoken-*.tfrecord")
    assert f"--gin_bindings=RESPOKEN_RECORDS = '{respoken}'" in baseline
    # Every teacher learns from scratch after the data, on all labelled audio; they differ in steps.
    bad, medium, good = (jobs[f"teacher-{t}"] for t in ("bad", "medium", "good"))
    assert bad.deps == medium.deps == good.deps == ("data-pool",)
    steps = {t: f"--gin_bindings=NUM_STEPS = {n}" for t, n in (("bad", 3000), ("medium", 6000))}
    assert steps["bad"] in bad.argv_lists()[0] and steps["medium"] in medium.argv_lists()[0]
    assert "--gin_bindings=NUM_STEPS = 20000" in good.argv_lists()[0]
    # Last, the weights the mirror carries to other machines (tfkd.study.carry).
    weights = os.path.join(plan.teacher_dir("good"), "weights")
    assert good.argv_lists()[2][1:] == ["./tools/carry_weights.py", plan.teacher_dir("good"),
                                        weights]  # fmt: skip
    assert not any("file_pattern" in a for t in (bad, medium) for a in t.argv_lists()[0])
    # The good teacher also learns from train-unlabeled with its transcripts.
    unlabeled = os.path.join(plan.data_dir, "records", "train-unlabeled-*.tfrecord")
    want = (
        "--gin_bindings=train_data/make_dataset.file_pattern = "
        f"[%TRAIN_RECORDS, %RESPOKEN_RECORDS, '{unlabeled}']"
    )
    assert want in good.argv_lists()[0]
    assert "--gin_file=gin/study/teacher_recipe.gin" in good.argv_lists()[0]
    pl = jobs["pseudo-good-noise0.3"].argv_lists()[0]
    assert "--noise_rate=0.3" in pl and f"--teacher_dir={plan.teacher_dir('good')}" in pl
    pool = os.path.join(plan.data_dir, "records", "train-pool-*.tfrecord")
    assert f"--input_pattern={pool}" in pl


def test_tuning_from_runs_after_the_source_tuning_and_uses_its_choice(tmp_path):
    plan = load_preset("small", out_dir=str(tmp_path / "out"), data_dir=str(tmp_path / "data"))
    jobs = {j.name: j for j in plan_jobs.jobs(plan)}
    source = (
        "student-teacher-medium-full-sum-LENGTH_NORM=False-s0",
        "student-teacher-medium-full-sum-LENGTH_NORM=True-s0",
    )
    disc_tuning = jobs["student-teacher-medium-full-sum-disc-ETA=4.0,TAU=2.0-s0"]
    assert disc_tuning.deps == ("pseudo-medium", "data-pool") + source
    other_rate = jobs["student-teacher-good-full-sum-other-frame-rate-tuned-s1"]
    assert set(source) <= set(other_rate.deps)
    # Dev WER picks LENGTH_NORM = True for full-sum; the disc. run adds its own grid on top.
    for values, wer in (({"LENGTH_NORM": False}, 60.0), ({"LENGTH_NORM": True}, 40.0)):
        eval_dir = os.path.join(plan.tuning_dir("full-sum", values), "eval")
        os.makedirs(eval_dir)
        with open(os.path.join(eval_dir, "dev.json"), "w") as f:
            json.dump({"wer": wer, "distinct_hypotheses": 90, "utterances": 100}, f)
    train = disc_tuning.argv_lists()[0]
    assert "--gin_bindings=LENGTH_NORM = True" in train
    assert "--gin_bindings=ETA = 4.0" in train and "--gin_bindings=TAU = 2.0" in train
    assert "--gin_bindings=LENGTH_NORM = True" in other_rate.argv_lists()[0]
    mixed = jobs["student-teacher-bad-full-sum-labelled-tuned-s0"].argv_lists()[0]
    assert "--gin_bindings=LENGTH_NORM = True" in mixed
    assert "--gin_file=gin/data/mixed_labeled.gin" in mixed


def test_plan_refuses_tuning_from_an_untuned_method_and_unknown_teachers(tmp_path):
    plan = load_preset("small", out_dir=str(tmp_path / "out"), data_dir=str(tmp_path / "data"))
    methods = [dataclasses.replace(m, tuning_from=None) for m in plan.methods]
    methods[1] = dataclasses.replace(methods[1], tuning_from="no-kd", teachers=("best",))
    with pytest.raises(ValueError) as err:
        dataclasses.replace(plan, methods=methods)
    assert "method hard: unknown teachers ['best']" in str(err.value)
    assert "method hard: tuning_from 'no-kd' must name a tuned method" in str(err.value)


def _training_argvs(plan):
    """The `bin/train` argv of every teacher and student run of `plan`. Tuned runs make theirs
    when they start, from the dev WER of the tuning runs they depend on (their own method's,
    and full-sum's for the methods that take its setting: `tuning_from`), so those dev
    evaluations are faked first, the last setting of each grid scoring lowest (for full-sum,
    LENGTH_NORM = True)."""
    jobs = plan_jobs.jobs(plan)
    for job in jobs:
        if "tuning" in job.info:
            grid = plan_jobs.grid_settings(plan.tuning[job.info["method"]])
            _write_dev(job.info["model_dir"], 50.0 - grid.index(job.info["tuning"]))
    return [j.argv_lists()[0] for j in jobs if j.info.get("kind") in ("teacher", "student")]


# Trainings: teachers + students. Students binding LENGTH_NORM = True (full-sum's choice above):
# small (3 seeds, tuned on medium): full-sum's tuning run of it 1 and its other cells 3 x 3 - 1
# = 8, disc's 2 x 2 tuning runs 4 and other cells 8, other frame rate 3 x 3 = 9, + labelled with
# bad 3, noise arm 1 rate x 3 seeds = 3: 36. tiny (seed 0, tuned on bad): full-sum 1 + 1, disc
# (no own grid) 2, other frame rate 2, + labelled 1, noise 1: 8. librispeech (3 seeds, tuned on
# medium, 3 noise rates): full-sum 1 + 8, disc's 3 tuning runs + 8, other frame rate 9,
# + labelled 3, noise 3 x 3 = 9: 41.
TRAININGS = {"tiny": (2 + 16, 8), "small": (3 + 64, 36), "librispeech": (3 + 74, 41)}


@pytest.mark.parametrize("preset", ["tiny", "small", "librispeech"])
def test_every_training_command_of_a_preset_parses_strictly(preset, tmp_path, clean_gin):
    """The fast stand-in for the slow end-to-end study: each teacher and student run the plan
    makes is a configuration bin/train accepts (a misspelt or unbound binding raises), with a
    deterministic input pipeline."""
    plan = load_preset(preset, out_dir=str(tmp_path / "out"), data_dir=str(tmp_path / "data"))
    trainings = _training_argvs(plan)
    count, length_norm = TRAININGS[preset]
    assert len(trainings) == count
    assert sum("--gin_bindings=LENGTH_NORM = True" in argv for argv in trainings) == length_norm
    for argv in trainings:
        assert argv[1].endswith("bin/train"), argv
        files = [a.split("=", 1)[1] for a in argv if a.startswith("--gin_file=")]
        bindings = [a.split("=", 1)[1] for a in argv if a.startswith("--gin_bindings=")]
        gin.clear_config()
        assert config.parse_gin(files, bindings).strip(), argv
        # the same seed reads the same batches: reruns of a cell differ only by what they change
        assert gin.query_parameter("train_data/make_dataset.deterministic") is True, argv
    gin.clear_config()


def test_lean_front_ends_reach_every_training_and_build_the_named_layers(tmp_path):
    lean = "gin/study/lean_frontends.gin"
    plan = load_preset(
        "small",
        out_dir=str(tmp_path / "out"),
        data_dir=str(tmp_path / "data"),
        extra_gin=(lean,),
    )
    trainings = _training_argvs(plan)
    assert sum("--gin_file=gin/teacher.gin" in t for t in trainings) == 3
    assert len(trainings) == TRAININGS["small"][0]
    for argv in trainings:  # after the method and model files, so that its bindings win
        files = [a for a in argv if a.startswith("--gin_file=")]
        assert files[-1] == f"--gin_file={lean}", argv

    from tfkd.models import Conv1DSubsampler, StackingSubsampler
    from tfkd.models.subsampling import ConvSubsampler

    def built(files, builder):
        gin.clear_config()
        try:
            config.parse_gin(files, ["VOCAB_SIZE = 16"])
            return gin.get_configurable(builder)(16).encoder.frontend
        finally:
            gin.clear_config()

    teacher_gin, student_gin = "gin/models/conformer_teacher_cpu.gin", "gin/study/student.gin"
    # Stacking is the CPU teacher's front end since the recipe search (docs/recipe.md).
    assert isinstance(built([teacher_gin], "conformer_teacher"), StackingSubsampler)
    assert isinstance(built([teacher_gin, lean], "conformer_teacher"), StackingSubsampler)
    # The 1-D front end is the study student's own since the recipe search; the 2-D one remains
    # the preset builder's default.
    default_student = built([student_gin], "conformer_student")
    assert isinstance(default_student, Conv1DSubsampler) and default_student.filters == 256
    assert isinstance(built([teacher_gin], "conformer_student"), ConvSubsampler)
    student = built([student_gin, lean], "conformer_student")
    assert isinstance(student, Conv1DSubsampler) and student.filters == 256
    other_rate = built([student_gin, "gin/study/student_other_rate.gin", lean], "conformer_student")
    assert isinstance(other_rate, Conv1DSubsampler) and other_rate.factor == 12


def _write_dev(model_dir, wer, **fields):
    os.makedirs(os.path.join(model_dir, "eval"), exist_ok=True)
    with open(os.path.join(model_dir, "eval", "dev.json"), "w") as f:
        json.dump({"wer": wer, **fields}, f)


def test_tuned_values_come_from_the_lowest_dev_wer(tmp_path):
    plan = load_preset("small", out_dir=str(tmp_path), data_dir=str(tmp_path / "data"))
    plan = dataclasses.replace(plan, tuning={**plan.tuning, "soft": {"SHIFT": [0, 2]}})
    with pytest.raises(RuntimeError, match="not evaluated"):
        plan_jobs.tuned_values(plan, "soft")
    for shift, wer in ((0, 50.0), (2, 45.0)):
        path = os.path.join(plan.tuning_dir("soft", {"SHIFT": shift}), "eval")
        os.makedirs(path)
        with open(os.path.join(path, "dev.json"), "w") as f:
            json.dump({"wer": wer}, f)
    assert plan_jobs.tuned_values(plan, "soft") == {"SHIFT": 2}
    # A collapsed run (a few stock transcripts) loses to a listening one even at a lower WER...
    _write_dev(plan.tuning_dir("soft", {"SHIFT": 2}), 45.0, distinct_hypotheses=3, utterances=100)
    _write_dev(plan.tuning_dir("soft", {"SHIFT": 0}), 50.0, distinct_hypotheses=90, utterances=100)
    assert plan_jobs.tuned_values(plan, "soft") == {"SHIFT": 0}
    # ... and when every run collapsed, the lowest dev WER wins again.
    _write_dev(plan.tuning_dir("soft", {"SHIFT": 0}), 50.0, distinct_hypotheses=4, utterances=100)
    assert plan_jobs.tuned_values(plan, "soft") == {"SHIFT": 2}
    _write_dev(plan.tuning_dir("soft", {"SHIFT": 2}), 45.0)
    jobs = {j.name: j for j in plan_jobs.jobs(plan)}
    assert "--gin_bindings=SHIFT = 2" in jobs["student-teacher-good-soft-tuned-s2"].argv_lists()[0]
    assert plan_jobs.tuned_values(plan, "hard") == {}


@pytest.mark.parametrize(
    "binding, message",
    [
        ("StudyPlan.teachers = [{'name': 'a', 'num_steps': 1, 'continue_from': 'b'}]",
         "continues unknown teacher b"),
        ("StudyPlan.noise_teacher = 'nobody'", "noise_teacher 'nobody' is not a teacher"),
        ("StudyPlan.nbest = 9", "nbest <= beam_width"),
        ("StudyPlan.tuning = {'sof': {'SHIFT': [0]}}", "unknown method 'sof'"),
        ("StudyPlan.seeds = ()", "no seeds"),
    ],
)  # fmt: skip
def test_invalid_plans_are_clear_errors(clean_gin, binding, message):
    config.parse_gin([plan_lib.preset_path("small")], [binding])
    with pytest.raises(ValueError, match=message):
        gin.get_configurable("StudyPlan")()


EXTRA_SEEDS = {"teacher-bad/hard": (3, 4), "no-kd/no-kd": (3,), "teacher-bad/full-sum": (5,)}


def test_extra_seeds_add_runs_to_their_cells_after_every_other_job(tmp_path):
    dirs = {"out_dir": str(tmp_path / "out"), "data_dir": str(tmp_path / "data")}
    plain = load_preset("tiny", seeds=(0, 1, 2), **dirs)
    plan = load_preset("tiny", seeds=(0, 1, 2), extra_seeds=EXTRA_SEEDS, **dirs)
    jobs = {j.name: j for j in plan_jobs.jobs(plan)}
    plain_names = [j.name for j in plan_jobs.jobs(plain)]
    # Seed-major among the extra seeds too, the plan's cell order within a seed.
    assert list(jobs) == plain_names + [
        "student-no-kd-no-kd-default-s3",
        "student-teacher-bad-hard-default-s3",
        "student-teacher-bad-hard-default-s4",
        "student-teacher-bad-full-sum-tuned-s5",
    ]
    hard = jobs["student-teacher-bad-hard-default-s4"]
    assert hard.info["model_dir"] == str(tmp_path / "out/students/teacher-bad/hard/default/s4")
    assert (
        hard.deps
        == jobs["student-teacher-bad-hard-default-s1"].deps
        == ("pseudo-bad", "data-records")
    )
    train, evaluate = hard.argv_lists()
    assert "--gin_bindings=train.seed = 4" in train
    assert f"--model_dir={hard.info['model_dir']}" in train and evaluate[1].endswith("bin/evaluate")
    assert train == [
        a.replace("train.seed = 1", "train.seed = 4").replace("/s1", "/s4")
        for a in jobs["student-teacher-bad-hard-default-s1"].argv_lists()[0]
    ]
    # A tuned method's extra seeds wait for its tuning runs, like its other seeds.
    full_sum = jobs["student-teacher-bad-full-sum-tuned-s5"]
    assert full_sum.deps == jobs["student-teacher-bad-full-sum-tuned-s1"].deps
    assert full_sum.info["setting"] == "tuned" and "tuning" not in full_sum.info
    assert plan.cell_seeds("teacher-bad", "hard") == (0, 1, 2, 3, 4)
    assert plan.cell_seeds("teacher-good", "hard") == (0, 1, 2)


def test_extra_seeds_name_a_cell_and_new_seeds(clean_gin):
    config.parse_gin([plan_lib.preset_path("tiny")], ["StudyPlan.seeds = (0, 1, 2)"])
    cells = [
        "no-kd/no-kd", "teacher-bad/hard", "teacher-good/hard", "noise-0.2/hard",
        "teacher-bad/soft", "teacher-good/soft", "teacher-bad/full-sum", "teacher-good/full-sum",
        "noise-0.2/full-sum", "teacher-bad/full-sum disc.", "teacher-good/full-sum disc.",
        "teacher-bad/full-sum, other frame rate", "teacher-good/full-sum, other frame rate",
        "teacher-bad/full-sum + labelled",
    ]  # fmt: skip
    plan = gin.get_configurable("StudyPlan")()
    assert plan.cell_keys() == cells
    for extra, message in (
        ({"teacher-good/full-sum + labelled": (3,)},
         f"invalid study plan: extra_seeds 'teacher-good/full-sum + labelled': no such cell "
         f"(cells: {cells})"),
        ({"teacher-bad/hard": (2, 3)},
         "invalid study plan: extra_seeds 'teacher-bad/hard': seeds [2] are in seeds (0, 1, 2) "
         "already; extra seeds must be others"),
        ({"no-kd/no-kd": (4, 4)},
         "invalid study plan: extra_seeds 'no-kd/no-kd': seeds repeat: (4, 4)"),
        ({"teacher-bad/hard": 3},  # a lone seed (gin reads `(3)` as 3): not "not iterable"
         "invalid study plan: extra_seeds 'teacher-bad/hard': give a tuple of seeds, e.g. (3, 4), "
         "or (3,) for one seed; got 3"),
        ({"teacher-bad/hard": "34"},  # not seeds 3 and 4
         "invalid study plan: extra_seeds 'teacher-bad/hard': give a tuple of seeds, e.g. (3, 4), "
         "or (3,) for one seed; got '34'"),
        ({"teacher-bad/hard": ("a",)},  # not int()'s "invalid literal for int()"
         "invalid study plan: extra_seeds 'teacher-bad/hard': seeds must be integers >= 0, e.g. "
         "(3, 4); got 'a'"),
        ({"no-kd/no-kd": (3, 4.5, "5")},  # 4.5 is not rounded to 4, nor "5" read as 5
         "invalid study plan: extra_seeds 'no-kd/no-kd': seeds must be integers >= 0, e.g. "
         "(3, 4); got 4.5, '5'"),
    ):  # fmt: skip
        with pytest.raises(ValueError) as err:
            dataclasses.replace(plan, extra_seeds=extra)
        assert str(err.value) == message


def test_seeds_are_integers_that_do_not_repeat(clean_gin):
    config.parse_gin([plan_lib.preset_path("tiny")], [])
    plan = gin.get_configurable("StudyPlan")()
    for seeds, message in (
        (("a",), "seeds: seeds must be integers >= 0, e.g. (3, 4); got 'a'"),  # not int()'s
        ((0, 1.5, -1), "seeds: seeds must be integers >= 0, e.g. (3, 4); got 1.5, -1"),
        (3, "seeds: give a tuple of seeds, e.g. (3, 4), or (3,) for one seed; got 3"),
        ((), "no seeds"),
        ((0, 1, 0), "seeds repeat: (0, 1, 0)"),
    ):
        with pytest.raises(ValueError) as err:
            dataclasses.replace(plan, seeds=seeds)
        assert str(err.value) == f"invalid study plan: {message}"
    assert dataclasses.replace(plan, seeds=[2, 0]).seeds == (2, 0)


# ---- scheduler -------------------------------------------------------------------------------


def _py(code):
    return [sys.executable, "-c", code]


def test_scheduler_orders_resumes_and_blocks_dependants_of_failures(tmp_path):
    out = tmp_path / "out"
    mark = tmp_path / "order.txt"

    def append(name):
        return _py(f"open({str(mark)!r}, 'a').write({name!r} + '\\n')")

    def job(name, deps=(), fail=False):
        cmds = [append(name)] + ([_py("raise SystemExit(3)")] if fail else [])
        return jobs_lib.Job(name, cmds, deps=deps, outputs=(str(mark),))

    jobs = [
        job("a"),
        job("b", deps=("a",)),
        job("c", deps=("a",), fail=True),
        job("d", deps=("c",)),
        job("e", deps=("b",)),
    ]
    status = scheduler.Scheduler(str(out), parallel=2, progress=False).run(jobs)
    assert status == {"a": "done", "b": "done", "c": "failed", "d": "blocked", "e": "done"}
    order = mark.read_text().split()
    assert order[0] == "a" and order.index("e") > order.index("b") and "d" not in order
    assert "exit code 3" in (out / "logs" / "c.log").read_text()
    stamp = json.loads((out / "stamps" / "a.json").read_text())
    assert stamp["job"] == "a" and stamp["seconds"] >= 0
    assert (out / "stamps" / "c.partial.json").exists()
    # Rerun: finished jobs are skipped; the failed one runs again (and fails again).
    again = scheduler.Scheduler(str(out), parallel=2, progress=False).run(jobs)
    assert again == {**status, "a": "skipped", "b": "skipped", "e": "skipped"}
    assert mark.read_text().split().count("a") == 1


def test_wall_clock_keeps_the_time_of_a_killed_invocation(tmp_path, monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(scheduler, "time", types.SimpleNamespace(time=lambda: now[0]))
    path = str(tmp_path / "out" / "wall_time.json")
    clock = scheduler.WallClock(path, every=30)
    clock.start()
    now[0] += 100
    clock.stop()
    assert json.load(open(path)) == {"seconds": 100.0}
    # Killed (no stop): the last tick survives, and the next start counts up to it.
    killed = scheduler.WallClock(path, every=30)
    killed.start()
    now[0] += 20
    killed.tick()  # less than `every` since the last write: nothing written
    assert json.load(open(path))["running"]["seen"] == 1100.0
    now[0] += 20
    killed.tick()
    assert json.load(open(path))["running"] == {"started": 1100.0, "seen": 1140.0}
    now[0] += 25  # 25 s after the last tick are lost
    assert scheduler.WallClock(path).seconds() == pytest.approx(140.0)
    resumed = scheduler.WallClock(path)
    resumed.start()
    now[0] += 10
    assert resumed.seconds() == pytest.approx(150.0)
    resumed.stop()
    assert json.load(open(path)) == {"seconds": 150.0}


def test_scheduler_checks_outputs_and_thread_budget(tmp_path):
    run = scheduler.Scheduler(str(tmp_path), parallel=2, cores=2, env={}, progress=False)
    assert run.job_env()["TF_NUM_INTRAOP_THREADS"] == "1"
    ghost = jobs_lib.Job("ghost", [_py("pass")], outputs=(str(tmp_path / "never"),))
    assert run.run([ghost]) == {"ghost": "failed"}
    assert "without its outputs" in (tmp_path / "logs" / "ghost.log").read_text()
    with pytest.raises(ValueError, match="unknown jobs"):
        run.run([jobs_lib.Job("x", [], deps=("y",))])
    # Unstamped jobs (data) are done as soon as their outputs exist; they never run again.
    marked = tmp_path / "manifest.json"
    marked.write_text("{}")
    data = jobs_lib.Job("data", [_py("raise SystemExit(1)")], outputs=(str(marked),), stamped=False)
    assert run.run([data]) == {"data": "skipped"}


def test_scheduler_calls_on_done_after_stamping_each_job_it_finishes(tmp_path, capsys):
    """How the study copies each finished job's results to the committed mirror at once."""
    ok = jobs_lib.Job("ok", [_py("pass")])
    bad = jobs_lib.Job("bad", [_py("raise SystemExit(1)")])
    after = jobs_lib.Job("after", [_py("pass")], deps=("ok",))
    seen = []

    def on_done(job):
        seen.append((job.name, os.path.exists(jobs_lib.stamp_path(str(tmp_path), job.name))))
        if job.name == "after":
            raise OSError("disk full")

    run = scheduler.Scheduler(str(tmp_path), parallel=1, progress=False)
    status = run.run([ok, bad, after], on_done=on_done)
    assert status == {"ok": "done", "bad": "failed", "after": "done"}  # the hook's error too
    assert seen == [("ok", True), ("after", True)]
    assert "[study] after: after it finished: OSError('disk full')" in capsys.readouterr().out
    run.run([ok, bad, after], on_done=on_done)  # skipped jobs were handled when they finished
    assert len(seen) == 2


def test_scheduler_in_sequence_only_always_and_failures(tmp_path):
    """What `make demo` uses: jobs one after another, `only`, jobs that always run, and why a job
    failed."""
    mark = tmp_path / "order.txt"

    def job(name, code=0, **kw):
        append = _py(f"open({str(mark)!r}, 'a').write({name!r} + '\\n'); raise SystemExit({code})")
        return jobs_lib.Job(name, [append], **kw)

    jobs = jobs_lib.in_sequence([job("a"), job("b", code=3), job("c"), job("r", always=True)])
    assert [j.deps for j in jobs] == [(), ("a",), ("b",), ("c",)]
    run = scheduler.Scheduler(str(tmp_path / "out"), progress=False)
    assert run.run(jobs) == {"a": "done", "b": "failed", "c": "blocked", "r": "blocked"}
    assert (
        run.failures["b"].reason == "exit code 3" and run.failures["b"].argv == jobs[1].commands[0]
    )
    assert list(run.failures) == ["b"]
    # `only` runs a job whose dependencies are not done, and a done one again.
    assert run.run(jobs, only="c") == {"c": "done"} and not run.failures
    assert run.run(jobs, only="a") == {"a": "done"}
    with pytest.raises(ValueError, match="unknown job 'x'"):
        run.run(jobs, only="x")
    jobs[1] = job("b", deps=("a",))
    assert run.run(jobs) == {"a": "skipped", "c": "skipped", "b": "done", "r": "done"}
    assert run.run(jobs)["r"] == "done"  # never done: runs every time
    assert mark.read_text().split() == ["a", "b", "c", "a", "b", "r", "r"]
    # Commands that cannot be made fail the job with what they raised.
    broken = jobs_lib.Job("broken", lambda: [[str(1 / 0)]])
    assert run.run([broken]) == {"broken": "failed"}
    assert isinstance(run.failures["broken"].error, ZeroDivisionError)
    steps = [("x", [], ()), ("y", [], ()), ("z", [], ())]
    assert [(j.name, j.deps) for j in jobs_lib.data_jobs(steps, prefix="")] == [
        ("x", ()),
        ("y", ("x",)),
        ("z", ("x", "y")),  # each data step reads the corpus and the SentencePiece model
    ]


# ---- report ----------------------------------------------------------------------------------


def _fake_eval(model_dir, dev, test, distinct=100):
    os.makedirs(os.path.join(model_dir, "eval"), exist_ok=True)
    for split, wer in (("dev", dev), ("test", test)):
        with open(os.path.join(model_dir, "eval", f"{split}.json"), "w") as f:
            counts = {"distinct_hypotheses": distinct, "utterances": 100}
            json.dump({"wer": wer, "step": 10, **counts}, f)


def test_report_means_intervals_links_and_plot(tmp_path):
    plan = load_preset("small", out_dir=str(tmp_path / "out"), data_dir=str(tmp_path / "data"))
    jobs = plan_jobs.jobs(plan)
    for j in jobs:
        info = j.info
        if info.get("kind") == "teacher":
            _fake_eval(info["model_dir"], 30.0, 31.0)
        if info.get("kind") == "student":
            base = 50.0 if info["method"] == "no-kd" else 40.0
            # One seed of full-sum with the bad teacher says the same words for every input.
            one_output = (info["arm"], info["method"], info["seed"]) == (
                "teacher-bad",
                "full-sum",
                1,
            )
            distinct = 1 if one_output else 100
            _fake_eval(info["model_dir"], base + info["seed"], base + 1 + info["seed"], distinct)
            if info["arm"] == "teacher-bad" and info["method"] == "hard" and info["seed"] == 0:
                with open(os.path.join(info["model_dir"], "operative_config.gin"), "w") as f:
                    f.write("NUM_STEPS = 1500\n")
        if info.get("kind") == "pseudo":
            os.makedirs(info["dir"], exist_ok=True)
            with open(os.path.join(info["dir"], "manifest.json"), "w") as f:
                json.dump({"teacher_wer": 33.0, "label_wer": 33.0 + 100 * info["noise"]}, f)
    with open(os.path.join(plan.out_dir, mirror_lib.WALL_TIME_NOTE), "w") as f:
        f.write("Teachers carried over\nfrom another run.\n")
    result = report.collect(plan, jobs, seconds=3600.0)
    assert result["baseline"]["test"]["mean"] == pytest.approx(52.0)
    cells = {(c["arm"], c["method"]): c for c in result["cells"]}
    good = cells[("teacher-good", "full-sum")]
    assert good["test"]["values"] == [41.0, 42.0, 43.0]
    assert good["test"]["ci95"] == pytest.approx(4.303 / math.sqrt(3))
    assert good["test_rel_wer_reduction"] == pytest.approx((52.0 - 42.0) / 52.0)
    assert [r["model_dir"] for r in good["runs"]][0].endswith(
        "students/teacher-good/full-sum/tuned/s0"
    )
    # Tuning: every value ties on dev, the first is chosen, and only its run joins the cell.
    assert {m: c["values"] for m, c in result["chosen_on_dev"].items()} == {
        "soft": {"OMEGA": 1.0, "SHIFT": 0},
        "full-sum": {"LENGTH_NORM": False},
        "full-sum disc.": {"ETA": 1.0, "TAU": 1.0},
    }
    for method in ("soft", "full-sum", "full-sum disc."):
        chosen = plan_lib.setting_name(result["chosen_on_dev"][method]["values"])
        runs = cells[("teacher-medium", method)]["runs"]
        assert [r["setting"] for r in runs] == [chosen, "tuned", "tuned"]
    # soft 2 omegas x 2 shifts + full-sum 2 length norms + disc. 2 etas x 2 taus
    assert len(result["tuning_runs"]) == 4 + 2 + 4
    # The methods that take full-sum's setting make ordinary cells; the mixed arm only with bad.
    other_rate = cells[("teacher-medium", "full-sum, other frame rate")]
    assert [r["setting"] for r in other_rate["runs"]] == ["tuned"] * 3
    mixed = {arm for arm, method in cells if method == "full-sum + labelled"}
    assert mixed == {"teacher-bad"}
    assert cells[("teacher-bad", "full-sum + labelled")]["test"]["values"] == [41.0, 42.0, 43.0]
    assert result["noise_labels"] == [{"noise_rate": 0.3, "teacher_wer": 33.0, "label_wer": 63.0}]
    paths = report.write(result, str(tmp_path / "results"), "python tools/run_study.py")
    loaded = json.loads(open(paths[0]).read())
    assert loaded["command"] == "python tools/run_study.py" and loaded["measured_seconds"] == 3600
    # Every job has its results (no stamps: no job seconds); 5 data jobs are not counted:
    # 3 teachers + 7 pseudo-labelling + 62 students = 72.
    assert loaded["jobs_done"] == loaded["jobs_total"] == len(jobs) - 5 == 3 + 7 + 64
    assert loaded["job_seconds"] == 0 and loaded["partial"] is False and loaded["missing"] == []
    assert loaded["cells"][0]["convergence"] is None  # no learning curves
    md = open(paths[1]).read()
    assert "Partial" not in md
    assert "(data preparation is not counted). Teachers carried over from another run.\n" in md
    row = (
        "| **good** (all labelled audio and train-unlabeled transcribed (19,000 utterances, "
        "9,000 sentences), 20k steps) | "
        "[30.0 / 31.0](#runs-teacher-good) | 33.0 |"
    )
    assert row in md
    assert '<a id="runs-teacher-good"></a>' in md and "(../out/teachers/good) |" in md
    assert "[41.0 ± 2.5 / 42.0 ± 2.5](#runs-teacher-bad-hard)<br>+19.2%" in md
    assert '<a id="runs-teacher-bad-hard"></a>' in md
    # A student that says the same words for every input is flagged in its cell and its row.
    assert cells[("teacher-bad", "full-sum")]["collapsed_runs"] == 1
    assert cells[("teacher-bad", "hard")]["collapsed_runs"] == 0
    assert "(#runs-teacher-bad-full-sum)<br>+19.2%<br>1 of 3 collapsed |" in md
    assert "| 1 | 41.00 | 42.00 | **1 of 100 (collapsed)** | – |" in md
    assert "| 0 | 40.00 | 41.00 | 100 of 100 | – |" in md
    assert "| teacher-good / full-sum | – | – | – | – | – |" in md  # the convergence table
    # Without a mirror (collect without results_dir), runs link to their directories in OUT.
    s0 = "../out/students/teacher-bad/hard/default/s0"
    assert f"({s0}) | [operative_config.gin]({s0}/operative_config.gin) |" in md
    assert not (tmp_path / "results" / "configs").exists()
    assert "soft, other frame rate: n/a" in md and "OMEGA=1.0,SHIFT=0 (lowest dev WER" in md
    # The settings taken from full-sum's choice are named; the mixed arm is not run with the
    # teachers it leaves out (not "–", which is a result still missing).
    assert "- **full-sum disc.**: ETA=1.0,TAU=1.0 on top of full-sum's LENGTH_NORM=False (" in md
    assert "- **full-sum, other frame rate**: full-sum's LENGTH_NORM=False\n" in md
    assert "- **full-sum + labelled**: full-sum's LENGTH_NORM=False\n" in md
    header = next(line for line in md.split("\n") if line.startswith("| teacher | "))
    column = header.split(" | ").index("full-sum + labelled")
    rows = {line.split(" ")[1]: line.split(" | ") for line in md.split("\n") if line[:4] == "| **"}
    assert rows["**bad**"][column] == (
        "[41.0 ± 2.5 / 42.0 ± 2.5](#runs-teacher-bad-full-sum---labelled)<br>+19.2%"
    )
    assert rows["**medium**"][column] == rows["**good**"][column] == "not run"
    png = open(paths[2], "rb").read()
    assert png.startswith(PNG_MAGIC) and len(png) > 10_000


# Test WER of the comparison study (`_comparison_study`) by cell and seed; dev is half of it.
# Cells not named: 45 + (0, 1, -0.5)[seed].
_COMPARED_TEST_WER = {
    ("teacher-bad", "hard"): {0: 31.0, 1: 32.5, 2: 30.0},
    ("teacher-bad", "full-sum"): {0: 30.0, 1: 31.0, 2: 29.5},
    ("teacher-good", "hard"): {0: 41.0, 1: 42.2, 2: 40.3},
    ("teacher-good", "full-sum"): {0: 40.0, 1: 41.0, 2: 39.5},
    ("teacher-good", "full-sum disc."): {0: 42.0, 1: 43.5, 2: 41.0},
    ("no-kd", "no-kd"): {0: 50.0, 1: 51.0, 2: 49.5},
}
# Cells evaluated for some seeds only (teacher-good / soft: for none).
_COMPARED_SEEDS = {
    ("teacher-good", "soft"): (),
    ("noise-0.2", "hard"): (1,),
    ("noise-0.2", "full-sum"): (0, 2),
}


def _comparison_study(tmp_path):
    """The tiny preset with seeds 0-2 and the student evaluations of `_COMPARED_TEST_WER` (every
    tuning setting ties, so the first is chosen); seed 2 of teacher-bad / hard collapsed."""
    plan = load_preset(
        "tiny", out_dir=str(tmp_path / "out"), data_dir=str(tmp_path / "data"), seeds=(0, 1, 2)
    )
    jobs = plan_jobs.jobs(plan)
    for j in jobs:
        info = j.info
        if info.get("kind") != "student":
            continue
        cell, seed = (info["arm"], info["method"]), info["seed"]
        if seed not in _COMPARED_SEEDS.get(cell, (seed,)):
            continue
        test = _COMPARED_TEST_WER.get(cell, {}).get(seed, 45.0 + (0.0, 1.0, -0.5)[seed])
        distinct = 1 if (cell, seed) == (("teacher-bad", "hard"), 2) else 100
        _fake_eval(info["model_dir"], test / 2, test, distinct)
    return plan, jobs


def test_report_compares_methods_paired_by_seed(tmp_path):
    plan, jobs = _comparison_study(tmp_path)
    result = json.loads(json.dumps(report.collect(plan, jobs)))  # as study.json holds it
    found = [(c["arm"], c["a"], c["b"], c["kind"]) for c in result["comparisons"]]
    # The claims in every arm that runs both methods (teachers in the plan's order, then noise),
    # then every KD method against the no-KD baseline in each of its arms.
    assert found[:10] == [
        ("teacher-bad", "full-sum", "hard", "claim"),
        ("teacher-good", "full-sum", "hard", "claim"),
        ("noise-0.2", "full-sum", "hard", "claim"),
        ("teacher-bad", "full-sum", "soft", "claim"),
        ("teacher-good", "full-sum", "soft", "claim"),
        ("teacher-bad", "full-sum disc.", "full-sum", "claim"),
        ("teacher-good", "full-sum disc.", "full-sum", "claim"),
        ("teacher-bad", "full-sum, other frame rate", "full-sum", "claim"),
        ("teacher-good", "full-sum, other frame rate", "full-sum", "claim"),
        ("teacher-bad", "full-sum + labelled", "full-sum", "claim"),  # the mixed arm: bad only
    ]
    assert [(arm, a) for arm, a, b, kind in found[10:]] == [
        ("teacher-bad", "hard"), ("teacher-good", "hard"), ("noise-0.2", "hard"),
        ("teacher-bad", "soft"), ("teacher-good", "soft"),
        ("teacher-bad", "full-sum"), ("teacher-good", "full-sum"), ("noise-0.2", "full-sum"),
        ("teacher-bad", "full-sum disc."), ("teacher-good", "full-sum disc."),
        ("teacher-bad", "full-sum, other frame rate"),
        ("teacher-good", "full-sum, other frame rate"),
        ("teacher-bad", "full-sum + labelled"),
    ]  # fmt: skip
    assert {(b, kind) for arm, a, b, kind in found[10:]} == {("no-kd", "against baseline")}
    bad = result["comparisons"][0]
    # d = [-1.0, -1.5, -0.5] on test, half that on dev; seed 0 of full-sum is its tuning run.
    assert bad["test"] == {"mean": -1.0, "ci95": pytest.approx(1.2422, abs=1e-4),
                           "seeds": [0, 1, 2], "n": 3, "verdict": "no separation"}  # fmt: skip
    assert bad["dev"]["mean"] == -0.5 and bad["dev"]["ci95"] == pytest.approx(0.6211, abs=1e-4)
    assert bad["missing"] == [] and bad["collapsed_seeds"] == [2]
    md = report_markdown.format_markdown(result, str(tmp_path / "results"), "cmd")
    section = md.split("## Comparisons (paired by seed)\n")[1].split("\n## ")[0]
    assert "A run's seed fixes its student's initial weights and the order" in section
    rows = [line for line in section.split("\n") if line.startswith("| ")]
    assert rows[0] == "| arm | A | B | test A − B | dev A − B | seeds (which) | verdict (test) |"
    assert rows[1:6] == [
        "| teacher-bad | full-sum | hard | -1.0 ± 1.2 | -0.5 ± 0.6 | 3 (0, 1, 2) | no separation "
        "(seed 2 collapsed) |",
        # d = [-1.0, -1.2, -0.8]: s = 0.2, half-width 0.50
        "| teacher-good | full-sum | hard | -1.0 ± 0.5 | -0.5 ± 0.2 | 3 (0, 1, 2) | "
        "full-sum better |",
        # hard has seed 1 only, full-sum seeds 0 and 2
        "| noise-0.2 | full-sum | hard | – | – | – | no common seed |",
        # soft: 45 + (0, 1, -0.5), full-sum 15 points lower at every seed
        "| teacher-bad | full-sum | soft | -15.0 ± 0.0 | -7.5 ± 0.0 | 3 (0, 1, 2) | "
        "full-sum better |",
        "| teacher-good | full-sum | soft | – | – | – | missing: soft |",
    ]
    for row in (
        # the variant is worse: B better
        "| teacher-good | full-sum disc. | full-sum | +2.0 ± 1.2 | +1.0 ± 0.6 | 3 (0, 1, 2) | "
        "full-sum better |",
        "| noise-0.2 | hard | no-kd | -5.0 | -2.5 | 1 (1) | one seed: no interval |",
        "| noise-0.2 | full-sum | no-kd | -5.0 ± 0.0 | -2.5 ± 0.0 | 2 (0, 2) | full-sum better |",
    ):
        assert row in rows
    assert len(rows) == 1 + len(found)
    # After the main table and its notes, before the noise arm's table.
    assert md.index("- **full-sum + labelled**") < md.index("## Comparisons (paired by seed)")
    assert md.index("## Comparisons (paired by seed)") < md.index("## Controlled label noise")


def _precision_study(tmp_path, test_wer, seeds=None, extra_seeds=None):
    """The tiny preset with seeds 0-2 (and `extra_seeds`), each student's test WER from
    `test_wer` by cell and seed, else 45 + (0, 0.5, -0.5)[seed] (sd 0.5: a 95 % half-width of
    4.303 * 0.5 / sqrt(3) = 1.24 points); `seeds`: the seeds evaluated in some cells."""
    plan = load_preset(
        "tiny",
        out_dir=str(tmp_path / "out"),
        data_dir=str(tmp_path / "data"),
        seeds=(0, 1, 2),
        extra_seeds=extra_seeds or {},
    )
    jobs = plan_jobs.jobs(plan)
    for info in (j.info for j in jobs if j.info.get("kind") == "student"):
        cell, seed = (info["arm"], info["method"]), info["seed"]
        if seed in (seeds or {}).get(cell, (seed,)):
            test = test_wer[cell][seed] if cell in test_wer else 45.0 + (0.0, 0.5, -0.5)[seed]
            _fake_eval(info["model_dir"], test, test)
    return plan, jobs


def _precision_rows(md):
    section = md.split("## Precision\n")[1].split("\n## ")[0]
    return section, [line for line in section.split("\n") if line.startswith("| ")]


def test_report_names_the_cells_short_of_the_precision_target(tmp_path, clean_gin):
    test_wer = {
        # sd sqrt(5/3) = 1.29, half-width 3.182 * 1.29 / 2 = 2.05; 6 seeds: 2.571 * 1.29 / 2.449
        # = 1.36 (5: 1.60). Seed 3 is an extra seed.
        ("teacher-bad", "hard"): {0: 30.0, 1: 32.0, 2: 31.0, 3: 33.0},
        # sd 1, half-width 2.48: 5 seeds (1.24; 4: 1.59)
        ("teacher-good", "full-sum"): {0: 40.0, 1: 42.0, 2: 41.0},
        # sd 5: even 30 seeds give 2.045 * 5 / 5.477 = 1.87
        ("no-kd", "no-kd"): {0: 50.0, 1: 60.0, 2: 55.0},
        # sd 1.41 (seed 2 not evaluated), 6 seeds: 2.571 * 1.414 / 2.449 = 1.48 (5: 1.76)
        ("noise-0.2", "hard"): {0: 60.0, 1: 62.0},
    }
    seeds = {("teacher-good", "soft"): (0,), ("noise-0.2", "hard"): (0, 1)}
    extra = {"teacher-bad/hard": (3,)}
    plan, jobs = _precision_study(tmp_path, test_wer, seeds, extra)
    result = json.loads(json.dumps(report.collect(plan, jobs)))  # as study.json holds it
    cells = {(c["arm"], c["method"]): c for c in result["cells"]}
    assert cells[("teacher-bad", "hard")]["test"]["values"] == [30.0, 32.0, 31.0, 33.0]
    assert cells[("teacher-good", "full-sum")]["precision"] == {
        "cell": "teacher-good/full-sum", "meets_target": False, "main_grid": True,
        "seeds": [0, 1, 2], "planned": [0, 1, 2], "sd": 1.0, "seeds_needed": 5,
        "extra_seeds": [3, 4],
    }  # fmt: skip
    assert cells[("teacher-good", "hard")]["precision"] == {
        "cell": "teacher-good/hard", "meets_target": True, "main_grid": True,
        "seeds": [0, 1, 2], "planned": [0, 1, 2],
    }  # fmt: skip
    assert result["baseline"]["precision"]["seeds_needed"] is None
    assert cells[("noise-0.2", "full-sum")]["precision"]["main_grid"] is False
    md = report_markdown.format_markdown(result, str(tmp_path / "results"), "cmd")
    assert (
        "over seeds [0, 1, 2] (more in some cells, `StudyPlan.extra_seeds`: teacher-bad/hard 3)"
        in md
    )
    section, rows = _precision_rows(md)
    assert (
        "Main grid (the no-KD baseline and the teachers' arms): 8 of 12 cells meet it; other "
        "arms: 1 of 2." in section
    )
    assert rows == [
        "| arm | method | seeds run | test WER | sd | seeds needed | line for the preset |",
        "| no-kd | no-kd | 3 of 3 | 55.0 ± 12.4 | 5.00 | > 30 | – |",
        "| teacher-bad | hard | 4 of 4 | 31.5 ± 2.1 | 1.29 | 6 | "
        "`StudyPlan.extra_seeds = {'teacher-bad/hard': (3, 4, 5)}` |",
        "| teacher-good | full-sum | 3 of 3 | 41.0 ± 2.5 | 1.00 | 5 | "
        "`StudyPlan.extra_seeds = {'teacher-bad/hard': (3,), 'teacher-good/full-sum': (3, 4)}` |",
        "| teacher-good | soft | 1 of 3 | 45.0 | – | >= 3 (no sd below 2 seeds) | "
        "– (planned seeds 1, 2 not evaluated yet) |",
        "| noise-0.2 (noise arm) | hard | 2 of 3 | 61.0 ± 12.7 | 1.41 | 6 | "
        "`StudyPlan.extra_seeds = {'teacher-bad/hard': (3,), 'noise-0.2/hard': (3, 4, 5)}` |",
    ]
    combined = (
        "StudyPlan.extra_seeds = {'teacher-bad/hard': (3, 4, 5), 'teacher-good/full-sum': (3, 4), "
        "'noise-0.2/hard': (3, 4, 5)}"
    )
    assert section.rstrip().endswith(f"All of them in one binding: `{combined}`")
    # After the comparisons, before the noise arm's table.
    assert md.index("## Comparisons (paired by seed)") < md.index("## Precision")
    assert md.index("## Precision") < md.index("## Controlled label noise")
    # The line is a binding the preset takes: those cells get the seeds.
    config.parse_gin([plan_lib.preset_path("tiny")], ["StudyPlan.seeds = (0, 1, 2)", combined])
    more = gin.get_configurable("StudyPlan")()
    assert more.extra_seeds["teacher-good/full-sum"] == (3, 4)
    assert more.cell_seeds("teacher-bad", "hard") == (0, 1, 2, 3, 4, 5)
    assert "student-noise-0.2-hard-default-s5" in [j.name for j in plan_jobs.jobs(more)]


def test_report_says_in_one_line_when_every_cell_meets_the_precision_target(tmp_path):
    plan, jobs = _precision_study(tmp_path, {})
    result = report.collect(plan, jobs)
    assert all(c["precision"]["meets_target"] for c in (result["baseline"], *result["cells"]))
    section, rows = _precision_rows(report_markdown.format_markdown(result, str(tmp_path), "cmd"))
    assert rows == []
    assert section.strip() == (
        "Every cell (14, the baseline included) meets the target: at least 3 seeds and a 95 % "
        "interval of the test WER mean within ±1.5 points (`report.CI_TARGET`)."
    )


# ---- committed results: the mirror, partial tables, convergence -------------------------------


def _write_history(model_dir, points, incomplete=None):
    """eval/history.jsonl with a dev WER at each `(step, wer)`; `incomplete`: a last line cut
    short, as a killed writer leaves it."""
    os.makedirs(os.path.join(model_dir, "eval"), exist_ok=True)
    with open(os.path.join(model_dir, "eval", "history.jsonl"), "w") as f:
        for step, wer in points:
            f.write(json.dumps({"step": step, "loss": 1.0, "train/wer": 1.0, "dev/wer": wer}))
            f.write("\n")
        f.write("" if incomplete is None else incomplete)


def _fake_study(tmp_path, seeds=(0, 1)):
    """A finished tiny study written by hand: evaluations (dev WER 40 + seed for students, 50 +
    seed for the baseline, test 1 more; teachers 30 / 31), configs, stamps of 100 s each,
    manifests, records and checkpoints (which the mirror must not copy), the driver's wall time,
    and the learning curves of the hard-KD students of the teachers' arms."""
    plan = load_preset(
        "tiny", out_dir=str(tmp_path / "out"), data_dir=str(tmp_path / "data"), seeds=seeds
    )
    jobs = plan_jobs.jobs(plan)
    os.makedirs(os.path.join(plan.out_dir, "stamps"))
    for j in jobs:
        info = j.info
        if "kind" not in info:
            continue
        if info["kind"] == "pseudo":
            os.makedirs(info["dir"])
            with open(os.path.join(info["dir"], "manifest.json"), "w") as f:
                json.dump({"teacher_wer": 33.0, "label_wer": 33.0 + 100 * info["noise"]}, f)
            open(os.path.join(info["dir"], "train-00000.tfrecord"), "wb").close()
        else:
            model_dir = info["model_dir"]
            if info["kind"] == "teacher":
                _fake_eval(model_dir, 30.0, 31.0)
            else:
                wer = (50.0 if info["method"] == "no-kd" else 40.0) + info["seed"]
                _fake_eval(model_dir, wer, wer + 1.0)
            with open(os.path.join(model_dir, "operative_config.gin"), "w") as f:
                f.write(f"# {j.name}\n")
            open(os.path.join(model_dir, "ckpt-4.index"), "wb").close()
            if info["kind"] == "student" and info["method"] == "hard":
                # teacher-good: 50 -> 39.5 / 41.2 and 52 -> 41.9 / 41.0: means 40.7 -> 41.1
                # teacher-bad: 60 -> 55: not converged. noise arm: no curve.
                tails = {
                    ("teacher-good", 0): [(2, 50.0), (4, 39.5), (6, 41.2)],
                    ("teacher-good", 1): [(2, 52.0), (4, 41.9), (6, 41.0)],
                    ("teacher-bad", 0): [(4, 60.0), (6, 55.0)],
                    ("teacher-bad", 1): [(4, 61.0), (6, 56.0)],
                }
                points = tails.get((info["arm"], info["seed"]))
                if points:
                    _write_history(model_dir, points, incomplete='{"step": 8, "dev/w')
        with open(jobs_lib.stamp_path(plan.out_dir, j.name), "w") as f:
            json.dump({"job": j.name, "seconds": 100.0}, f)
    with open(os.path.join(plan.out_dir, "wall_time.json"), "w") as f:
        json.dump({"seconds": 7200.0}, f)
    return plan, jobs


def _numbers(result):
    """What the tables show, without where the runs were read from."""
    cells = {
        (c["arm"], c["method"]): (c["dev"], c["test"], c["convergence"], c["num_runs"])
        for c in result["cells"]
    }
    teachers = [(t["name"], t["dev_wer"], t["test_wer"], t["pseudo_label_wer"]) for t in
                result["teachers"]]  # fmt: skip
    keys = ("measured_seconds", "job_seconds", "jobs_done", "jobs_total", "partial")
    return (
        cells,
        teachers,
        result["baseline"]["test"],
        result["chosen_on_dev"],
        result["noise_labels"],
        [(r["method"], r["values"], r["dev_wer"]) for r in result["tuning_runs"]],
        {k: result[k] for k in keys},
    )


def test_finished_jobs_are_mirrored_and_a_clone_without_out_rebuilds_the_same_tables(tmp_path):
    plan, jobs = _fake_study(tmp_path)
    results = str(tmp_path / "results")
    from_out = report.collect(plan, jobs, results_dir=results)
    assert {r["read_from"] for c in from_out["cells"] for r in c["runs"]} == {"out"}
    copies = mirror_lib.mirror_study(plan, jobs, results)
    mirror = tmp_path / "results" / "runs"
    good = mirror / "teachers" / "good"
    assert sorted(str(p.relative_to(good)) for p in good.rglob("*") if p.is_file()) == [
        "eval/dev.json",
        "eval/test.json",
        "operative_config.gin",
        "stamp.json",
    ]
    hard = mirror / "students" / "teacher-good" / "hard" / "default" / "s1"
    assert (hard / "eval" / "history.jsonl").read_text().endswith('"dev/w')  # copied as it is
    assert json.loads((hard / "stamp.json").read_text())["seconds"] == 100.0
    assert sorted(os.listdir(mirror / "pseudo" / "good-noise0.2")) == [
        "manifest.json",
        "stamp.json",
    ]
    # Tiny files only: never a checkpoint or a record.
    names = {os.path.basename(p) for p in copies}
    assert names == {"dev.json", "test.json", "operative_config.gin", "history.jsonl",
                     "manifest.json", "stamp.json", "wall_time.json"}  # fmt: skip
    # The run directories are gone (a fresh clone): the same numbers from the mirror alone.
    shutil.rmtree(plan.out_dir)
    from_mirror = report.collect(plan, jobs, results_dir=results)
    assert _numbers(from_mirror) == _numbers(from_out)
    assert {r["read_from"] for c in from_mirror["cells"] for r in c["runs"]} == {"mirror"}
    # 2 teachers + 5 pseudo-labelling (N-best 2 + noise 1 + soft 2) + 30 students (baseline 2;
    # 2 teachers x 5 methods x 2 seeds = 20; + labelled with bad 2; noise 1 rate x 2 methods x 2
    # seeds = 4; tuning 1 soft + 1 full-sum besides the seed-0 runs) = 37 jobs of 100 s.
    assert from_mirror["measured_seconds"] == 7200.0 and from_mirror["job_seconds"] == 100.0 * 37
    assert {m: c["values"] for m, c in from_mirror["chosen_on_dev"].items()} == {
        "soft": {"SHIFT": 0},
        "full-sum": {"LENGTH_NORM": False},
    }
    md = open(report.write(from_mirror, results, "python tools/run_study.py")[1]).read()
    # Numbers link to the committed copies, not to the run directories.
    s1 = "runs/students/teacher-good/hard/default/s1"
    assert f"]({s1}) | [operative_config.gin]({s1}/operative_config.gin) |" in md
    assert "Measured: 2.00 h of wall time" in md and "37 of 37 teacher" in md
    assert "- **full-sum, other frame rate**: full-sum's LENGTH_NORM=False\n" in md
    assert not (tmp_path / "results" / "configs").exists()
    # Without the mirror either, nothing is left to report.
    assert report.collect(plan, jobs)["jobs_done"] == 0


def test_the_mirror_holds_the_runs_of_one_command(tmp_path):
    results = str(tmp_path / "results")
    mirror_lib.claim_mirror(results, "python tools/run_study.py --preset small")
    mirror_lib.claim_mirror(results, "python tools/run_study.py --preset small")
    with pytest.raises(ValueError, match="holds the runs of `python tools/run_study.py --preset "
                       "small`, not of `python tools/run_study.py --preset tiny`"):  # fmt: skip
        mirror_lib.claim_mirror(results, "python tools/run_study.py --preset tiny")


# ---- carrying a study to another machine -------------------------------------------------------


def test_a_teachers_last_checkpoint_is_carried_and_restores_in_tensorflow(tmp_path):
    import tensorflow as tf

    run, copy = str(tmp_path / "run"), str(tmp_path / "copy")
    v = tf.Variable(1.0)
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(v=v), run, max_to_keep=2)
    manager.save(checkpoint_number=4)
    v.assign(2.0)
    manager.save(checkpoint_number=8)
    copies = carry.carry_checkpoint(run, copy)
    assert sorted(os.path.basename(p) for p in copies) == [
        "checkpoint", "ckpt-8.data-00000-of-00001", "ckpt-8.index"]  # fmt: skip
    w = tf.Variable(0.0)
    tf.train.Checkpoint(v=w).restore(tf.train.latest_checkpoint(copy)).assert_consumed()
    assert w.numpy() == 2.0
    v.assign(3.0)
    manager.save(checkpoint_number=12)
    carry.carry_checkpoint(run, copy)  # the older copy goes: one checkpoint per run
    assert sorted(os.listdir(copy)) == [
        "checkpoint", "ckpt-12.data-00000-of-00001", "ckpt-12.index"]  # fmt: skip
    assert carry.carry_checkpoint(str(tmp_path / "none"), copy) == []
    v.assign(4.0)  # trained again: other weights, the same step and file sizes
    manager.save(checkpoint_number=12)
    carry.carry_checkpoint(run, copy)
    tf.train.Checkpoint(v=w).restore(tf.train.latest_checkpoint(copy)).assert_consumed()
    assert w.numpy() == 4.0


def _fake_data(plan):
    for rel, content in (("records/dev-00000.tfrecord", b"dev"), ("spm/spm.model", b"spm")):
        os.makedirs(os.path.join(plan.data_dir, os.path.dirname(rel)), exist_ok=True)
        with open(os.path.join(plan.data_dir, rel), "wb") as f:
            f.write(content)
    with open(os.path.join(plan.data_dir, "records", "dev.manifest.json"), "w") as f:
        f.write("{}")  # not read by a run: not fingerprinted


def test_a_clone_on_another_machine_restores_finished_runs_and_reruns_only_what_is_left(tmp_path):
    plan, jobs = _fake_study(tmp_path)
    _fake_data(plan)
    for t in plan.teachers:
        model_dir = plan.teacher_dir(t.name)
        with open(os.path.join(model_dir, "checkpoint"), "w") as f:
            f.write('model_checkpoint_path: "ckpt-4"\nall_model_checkpoint_paths: "ckpt-4"\n')
        open(os.path.join(model_dir, "ckpt-4.data-00000-of-00001"), "wb").close()
    weights = os.path.join(plan.teacher_dir("bad"), "weights")  # tools/carry_weights.py's
    os.makedirs(weights)
    for name in ("ckpt-4.index", "ckpt-4.data-00000-of-00001"):
        with open(os.path.join(weights, name), "w") as f:
            f.write("weights only")
    shutil.copy(os.path.join(plan.teacher_dir("bad"), "checkpoint"), weights)
    results = str(tmp_path / "results")
    mirror_lib.mirror_study(plan, jobs, results)
    carried = carry.carry_study(plan, jobs, results)
    mirror = tmp_path / "results" / "runs"
    good = mirror / "teachers" / "good"
    assert sorted(str(p.relative_to(good)) for p in good.rglob("*") if p.is_file()) == [
        "checkpoint", "ckpt-4.data-00000-of-00001", "ckpt-4.index", "eval/dev.json",
        "eval/test.json", "operative_config.gin", "stamp.json"]  # fmt: skip
    assert (mirror / "teachers" / "bad" / "ckpt-4.index").read_text() == "weights only"
    assert (good / "ckpt-4.index").read_text() == ""  # no weights/: the training checkpoint
    assert str(mirror / "data.json") in carried
    files = json.loads((mirror / "data.json").read_text())["files"]
    assert sorted(files) == ["records/dev-00000.tfrecord", "spm/spm.model"]
    # One student had not finished on the first machine; then the study moves.
    unfinished = plan.student_dir("teacher-good", "full-sum", "tuned", 1)
    shutil.rmtree(mirror_lib.mirrored(plan, str(mirror), unfinished))
    shutil.rmtree(plan.out_dir)
    restored = carry.restore(plan, jobs, results)
    models = [j.name for j in jobs if j.info.get("kind") in ("teacher", "student")]
    assert sorted(restored) == sorted(set(models) - {"student-teacher-good-full-sum-tuned-s1"})
    stamp = json.loads(open(jobs_lib.stamp_path(plan.out_dir, "teacher-good")).read())
    assert stamp == {"job": "teacher-good", "seconds": 100.0,
                     "restored_from": "runs/teachers/good"}  # fmt: skip
    assert os.path.exists(os.path.join(plan.teacher_dir("good"), "ckpt-4.index"))
    assert json.loads(open(os.path.join(plan.out_dir, "wall_time.json")).read())["seconds"] == 7200
    runner = scheduler.Scheduler(plan.out_dir, progress=False)
    # The unfinished student reads pseudo-good, made from the carried teacher from the data.
    assert carry.unneeded(jobs, runner.done) == {
        "pseudo-bad", "pseudo-bad-soft", "pseudo-good-noise0.2", "pseudo-good-soft"}  # fmt: skip
    # The pseudo-labels made again here are compared with the carried ones.
    pseudo = next(j for j in jobs if j.name == "pseudo-good")
    assert carry.compare_pseudo_labels(plan, pseudo, results) is None  # not made again yet
    shards = [{"input": f"/a/train-{i}.tfrecord", "num_records": 5, "num_bytes": 100 + i,
               "label_token_errors": 3, "teacher_token_errors": 3} for i in range(2)]  # fmt: skip
    carried_manifest = {"label_wer": 33.0, "shards": shards}
    with open(mirror / "pseudo" / "good" / "manifest.json", "w") as f:
        json.dump(carried_manifest, f)
    os.makedirs(pseudo.info["dir"])
    with open(os.path.join(pseudo.info["dir"], "manifest.json"), "w") as f:
        json.dump({**carried_manifest, "output_pattern": "/elsewhere/*.tfrecord"}, f)
    assert carry.compare_pseudo_labels(plan, pseudo, results) == (
        "pseudo-good: the same pseudo-labels as the carried run's (2 shards agree)"
    )
    shards[1] = {**shards[1], "num_bytes": 99}
    with open(os.path.join(pseudo.info["dir"], "manifest.json"), "w") as f:
        json.dump({"label_wer": 33.04, "shards": shards}, f)
    assert carry.compare_pseudo_labels(plan, pseudo, results) == (
        "pseudo-good: pseudo-labels differ from the carried run's in 1 shards (first "
        "train-1.tfrecord; label WER 33.00 then, 33.04 now): students finished before read the "
        "carried ones"
    )
    shutil.rmtree(pseudo.info["dir"])
    assert carry.restore(plan, jobs, results) == []  # done in OUT now
    mirror_lib.mirror_study(plan, jobs, results)  # the mirror's stamps stay the first machine's
    assert json.loads((good / "stamp.json").read_text()) == {"job": "teacher-good", "seconds": 100}
    assert report.collect(plan, jobs, results_dir=results)["jobs_done"] == 36
    # Every job done: nothing to rerun, not even the data.
    _fake_eval(unfinished, 40.0, 41.0)
    stamp_job = "student-teacher-good-full-sum-tuned-s1"
    with open(jobs_lib.stamp_path(plan.out_dir, stamp_job), "w") as f:
        json.dump({"seconds": 1.0}, f)
    skip = carry.unneeded(jobs, runner.done)
    assert skip == {j.name for j in jobs if not runner.done(j)} and "data-records" in skip


def test_data_other_than_the_carried_runs_stops_the_study_at_the_last_data_job(tmp_path):
    plan = load_preset("tiny", out_dir=str(tmp_path / "out"), data_dir=str(tmp_path / "data"))
    results = str(tmp_path / "results")
    _fake_data(plan)
    assert carry.check_data(plan, results) is None  # nothing carried yet
    carry.record_data(plan, results)
    assert carry.check_data(plan, results) is None
    with open(os.path.join(plan.data_dir, "records", "dev-00000.tfrecord"), "wb") as f:
        f.write(b"other audio")
    fix = (
        f"differs (1 files): the carried runs in {results}/runs were trained on other data "
        f"({results}/runs/data.json): rebuild {plan.data_dir} with the tools and Debian "
        "packages they used, or move that directory aside to start the study afresh"
    )
    assert carry.check_data(plan, results) == f"{plan.data_dir}/records/dev-00000.tfrecord {fix}"
    os.remove(os.path.join(plan.data_dir, "spm", "spm.model"))
    assert carry.check_data(plan, results).startswith(
        f"{plan.data_dir}/spm/spm.model is missing (1 files): the carried runs in"
    )
    # The last data job checks it after its own check.
    jobs = [
        jobs_lib.Job("data-spm", [], check=lambda: None),
        jobs_lib.Job("data-records", [], check=lambda: None),
        jobs_lib.Job("teacher-good", [], info={"kind": "teacher"}),
    ]
    guarded = carry.guard_data(plan, jobs, results)
    assert guarded[0] is jobs[0] and guarded[2] is jobs[2] and guarded[0].check() is None
    assert guarded[1].check().startswith(f"{plan.data_dir}/spm/spm.model is missing")
    jobs[1] = dataclasses.replace(jobs[1], check=lambda: "records of another size")
    assert carry.guard_data(plan, jobs, results)[1].check() == "records of another size"


def test_scheduler_skips_unneeded_jobs_and_refuses_one_that_a_pending_job_needs(tmp_path):
    made = tmp_path / "made"
    a = jobs_lib.Job("a", [_py(f"open({str(made)!r}, 'w')")])
    b = jobs_lib.Job("b", [_py("pass")], deps=("a",))
    run = scheduler.Scheduler(str(tmp_path / "out"), progress=False)
    with pytest.raises(ValueError, match=r"jobs \['b'\] need jobs marked unneeded"):
        run.run([a, b], unneeded={"a"})
    assert run.run([a, b], unneeded={"a", "b"}) == {"a": "unneeded", "b": "unneeded"}
    assert not made.exists()


def test_report_only_from_the_committed_results_alone(tmp_path, monkeypatch, clean_gin):
    """tools/run_study.py --report_only on a clone with RESULTS but without OUT."""
    run_study = load_tool("run_study")
    monkeypatch.setattr(run_study.signal, "signal", lambda *args: None)  # pytest keeps its own
    plan, jobs = _fake_study(tmp_path, seeds=(0,))
    out, data, results = plan.out_dir, plan.data_dir, str(tmp_path / "results")
    argv = ["--preset", "tiny", "--out", out, "--data", data, "--results", results]
    argv += ["--report_only"]
    assert run_study.main(argv) == 0  # mirrors the finished jobs of OUT, then reports
    first = json.loads(open(os.path.join(results, "study.json")).read())
    shutil.rmtree(out)
    assert run_study.main(argv) == 0
    again = json.loads(open(os.path.join(results, "study.json")).read())
    # 2 teachers + 5 pseudo-labelling + 16 students (baseline 1; 2 x 5 methods; + labelled with
    # bad 1; noise 2; tuning 1 soft + 1 full-sum besides the seed-0 runs) = 23
    assert _numbers(again) == _numbers(first) and again["jobs_done"] == 23
    assert again["teachers"][1]["read_from"] == "mirror"
    with pytest.raises(cli.UsageError, match="holds the runs of"):
        run_study.main([*argv[:-1], "--gin_bindings", "StudyPlan.seeds = (0, 1)", "--report_only"])


def test_report_marks_a_partial_table_and_names_what_is_missing(tmp_path):
    plan, jobs = _fake_study(tmp_path)
    for path in (
        plan.teacher_dir("good"),
        plan.pseudo_dir("good", 0.2),
        plan.student_dir("teacher-good", "full-sum", "tuned", 0),
        plan.student_dir("teacher-good", "full-sum", "tuned", 1),
        plan.student_dir("teacher-bad", "full-sum-labelled", "tuned", 1),
        plan.student_dir("teacher-bad", "soft", "SHIFT=1", 0),
        plan.student_dir("no-kd", "no-kd", "default", 1),
    ):
        for name in ("eval/dev.json", "manifest.json"):
            if os.path.exists(os.path.join(path, name)):
                os.remove(os.path.join(path, name))
    for j in jobs:  # full-sum students took 300 s, every other job 100 s
        if j.info.get("method") == "full-sum":
            with open(jobs_lib.stamp_path(plan.out_dir, j.name), "w") as f:
                json.dump({"job": j.name, "seconds": 300.0}, f)
    result = report.collect(plan, jobs, results_dir=str(tmp_path / "results"))
    assert result["partial"] is True
    # Each missing job at its kind's median, a student at its method's: teacher-good's two
    # full-sum seeds at 300 s, the other 5 at 100 s.
    assert result["remaining"] == {"job_seconds": 1100.0, "jobs": 7, "unestimated": 0}
    teacher = next(j for j in jobs if j.name == "teacher-good")
    assert report._remaining([teacher], {("student",): [1.0]}) == {
        "job_seconds": 0.0,
        "jobs": 0,
        "unestimated": 1,
    }
    # 37 jobs (test_finished_jobs_are_mirrored_...), 7 of them without their results
    assert (result["jobs_done"], result["jobs_total"]) == (30, 37)
    assert result["missing"] == [
        "teacher good",
        "pseudo-labels good-noise0.2",
        "teacher-bad / soft SHIFT=1 (tuning, seed 0)",
        "teacher-good / full-sum (seeds 0, 1)",
        "no-KD baseline (seed 1)",
        "teacher-bad / full-sum + labelled (seed 1)",
    ]  # in the order of the jobs (seed 0's, then seed 1's)
    assert len(result["missing_jobs"]) == 7 and "teacher-good" in result["missing_jobs"]
    assert "student-teacher-bad-full-sum-labelled-tuned-s1" in result["missing_jobs"]
    paths = report.write(result, str(tmp_path / "results"), "python tools/run_study.py")
    assert json.loads(open(paths[0]).read())["partial"] is True
    md = open(paths[1]).read()
    title, blank, partial = md.split("\n")[:3]
    assert title.startswith("# Student WER") and blank == ""
    assert partial == (
        "**Partial: 30 of 37 jobs finished** (teacher, pseudo-label and student jobs with results "
        "in the study directory or in `runs/`). Missing: teacher good; pseudo-labels "
        "good-noise0.2; teacher-bad / soft SHIFT=1 (tuning, seed 0); teacher-good / full-sum "
        "(seeds 0, 1); no-KD baseline (seed 1); teacher-bad / full-sum + labelled (seed 1). "
        "Estimated: about 0.3 h of job time for 7 of the missing jobs (0.2 h of wall time two at "
        "a time), each at the median time of the finished jobs of its method (students) or kind."
    )


def test_report_shows_the_dev_wer_of_the_last_two_evaluations(tmp_path):
    plan, jobs = _fake_study(tmp_path)
    result = report.collect(plan, jobs, results_dir=str(tmp_path / "results"))
    cells = {(c["arm"], c["method"]): c for c in result["cells"]}
    good = cells[("teacher-good", "hard")]
    assert good["runs"][0]["dev_wer_last_evals"] == [
        {"step": 4, "dev_wer": 39.5},
        {"step": 6, "dev_wer": 41.2},
    ]  # the incomplete line of step 8 is skipped
    conv = good["convergence"]
    assert conv["steps"] == [4, 6] and conv["dev_wer"] == pytest.approx([40.7, 41.1])
    assert conv["change"] == pytest.approx(0.4) and conv["converged"] is True
    assert (conv["num_runs"], conv["of_runs"]) == (2, 2)
    bad = cells[("teacher-bad", "hard")]["convergence"]
    assert bad["change"] == pytest.approx(-5.0) and bad["converged"] is False
    assert cells[("noise-0.2", "hard")]["convergence"] is None
    assert result["teachers"][0]["convergence"] is None
    md = open(report.write(result, str(tmp_path / "results"), "cmd")[1]).read()
    assert "**Converged**: |last − previous| ≤ 1 point." in md
    assert conv["curve"] == [
        {"step": 2, "dev_wer": pytest.approx(51.0)},
        {"step": 4, "dev_wer": pytest.approx(40.7)},
        {"step": 6, "dev_wer": pytest.approx(41.1)},
    ]
    assert (
        "| teacher-good / hard | 4 / 6 | 40.7 / 41.1 | +0.4 | yes | "
        "51.0, 40.7, 41.1 (steps 2–6, every 2) |" in md
    )
    assert (
        "| teacher-bad / hard | 4 / 6 | 60.5 / 55.5 | -5.0 | **no** | "
        "60.5, 55.5 (steps 4–6, every 2) |" in md
    )
    assert "| noise-0.2 / hard | – | – | – | – | – |" in md
    assert "| teacher good | – | – | – | – | – |" in md
    assert "(#runs-teacher-bad-hard)<br>+19.4%<br>[not converged](#convergence) |" in md
    assert "(#runs-teacher-good-hard)<br>+19.4% |" in md
    assert "| 1 | 41.00 | 42.00 | 100 of 100 | 41.9 / 41.0 (steps 4 / 6) |" in md


def test_learning_curve_text_names_its_steps():
    def curve(*points):
        return [{"step": s, "dev_wer": w} for s, w in points]

    assert report_markdown._curve([]) == "–"
    assert report_markdown._curve(curve((8000, 29.14))) == "29.1 (step 8,000)"
    assert (
        report_markdown._curve(curve((1000, 76.42), (2000, 55.6), (3000, 45.26)))
        == "76.4, 55.6, 45.3 (steps 1,000–3,000, every 1,000)"
    )
    assert (
        report_markdown._curve(curve((1000, 60.0), (2000, 50.0), (2500, 48.0)))
        == "60.0, 50.0, 48.0 (steps 1,000, 2,000, 2,500)"
    )


def test_history_file_name_matches_training():
    from tfkd.training import history

    assert mirror_lib.HISTORY_FILE == history.HISTORY_FILE


# ---- end to end ------------------------------------------------------------------------------


@pytest.mark.slow  # 4-10 min on 2 cores; the fast suite parses every planned run instead
def test_tiny_study_end_to_end_and_resume(tmp_path):
    """The real driver, data tools and CLIs on the tiny corpus: every output exists and parses."""
    out, results = tmp_path / "study", tmp_path / "results"
    argv = [sys.executable, os.path.join(REPO, "tools", "run_study.py"), "--preset", "tiny"]
    argv += ["--out", str(out), "--data", str(out / "data"), "--results", str(results)]
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((results / "study.json").read_text())
    assert [t["name"] for t in result["teachers"]] == ["bad", "good"]
    for t in result["teachers"]:
        assert 0.0 <= t["dev_wer"] and t["pseudo_label_wer"] is not None
    methods = [m["name"] for m in result["methods"]]
    cells = {(c["arm"], c["method"]) for c in result["cells"]}
    every_teacher = {(f"teacher-{t}", m) for t in ("bad", "good") for m in methods}
    # the mixed arm runs with the bad teacher only (MIXED_TEACHERS)
    assert cells == every_teacher - {("teacher-good", "full-sum + labelled")} | {
        ("noise-0.2", "hard"),
        ("noise-0.2", "full-sum"),
    }
    for c in result["cells"]:
        for r in c["runs"]:
            assert os.path.exists(r["operative_config"]) and 0.0 <= r["test_wer"]
            rel = os.path.relpath(r["model_dir"], out)
            assert r["mirror_dir"] == str(results / "runs" / rel)  # the committed copy
            copy = os.path.join(r["mirror_dir"], "operative_config.gin")
            assert open(copy).read() == open(r["operative_config"]).read()
    assert result["chosen_on_dev"]["soft"]["values"] in ({"SHIFT": 0}, {"SHIFT": 1})
    md = (results / "study.md").read_text()
    assert md.startswith("# Student WER by distillation method") and "| **bad** (2 steps) |" in md
    assert result["jobs_done"] == result["jobs_total"] and result["job_seconds"] > 0
    assert result["partial"] is False
    assert (results / "study.png").read_bytes().startswith(PNG_MAGIC)
    # Resumable: a rerun finds every job done and only rewrites the results.
    again = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0
    assert "[study] done:" not in again.stdout and "wrote" in again.stdout
    # Another machine: a clone with the mirror only (the teachers' checkpoints in it), where one
    # student had not finished. The data is rebuilt and checked against the carried runs', the
    # finished runs come back, and only that student and the pseudo-labels it reads run.
    mirror = results / "runs"
    assert (mirror / "data.json").exists() and (mirror / "teachers" / "bad" / "checkpoint").exists()
    left = "student-teacher-good-hard-default-s0"
    shutil.rmtree(mirror / "students" / "teacher-good" / "hard" / "default" / "s0")
    shutil.rmtree(out)
    moved = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert moved.returncode == 0, moved.stdout[-3000:] + moved.stderr[-3000:]
    ran = sorted(re.findall(r"\[study\] done: (\S+) ", moved.stdout))
    assert ran == sorted(["data-corpus", "data-spm", "data-records", "pseudo-good", left])
    assert f"[study] restored {result['jobs_done'] - 1 - 5} finished jobs" in moved.stdout
    # From the carried weights, the same pseudo-labels as the first time.
    assert "[study] pseudo-good: the same pseudo-labels as the carried run's (" in moved.stdout
    again = json.loads((results / "study.json").read_text())
    assert again["jobs_done"] == again["jobs_total"] and again["teachers"] == result["teachers"]


def test_librispeech_preset_documents_the_paper_scale_runs(tmp_path):
    plan = load_preset("librispeech", out_dir=str(tmp_path), data_dir="/data/ls")
    jobs = {j.name: j for j in plan_jobs.jobs(plan)}
    # 3 teachers + 6 N-best pseudo-labelling (3 teachers, 3 noise rates; soft KD is online) + 74
    # students: baseline 3; 3 teachers x 5 methods x 3 seeds = 45; + labelled with bad 3; noise
    # 3 rates x 2 methods x 3 seeds = 18; tuning soft 3 - 1, full-sum 2 - 1, disc. 3 - 1 = 5.
    assert len(jobs) == 3 + 6 + 74 == 83 and not any(n.startswith("data-") for n in jobs)
    assert [n for n in jobs if "labelled" in n] == [
        f"student-teacher-bad-full-sum-labelled-tuned-s{seed}" for seed in (0, 1, 2)
    ]
    bad = jobs["teacher-bad"].argv_lists()[0]
    assert "--gin_bindings=TRAIN_RECORDS = '/data/ls/records/train-labeled-100-*.tfrecord'" in bad
    assert "--gin_file=gin/study/librispeech_hardware.gin" in bad
    for length_norm, wer in ((False, 30.0), (True, 25.0)):  # full-sum's tuning on dev
        _write_dev(plan.tuning_dir("full-sum", {"LENGTH_NORM": length_norm}), wer)
    student = jobs["student-teacher-good-full-sum-tuned-s1"].argv_lists()[0]
    assert "--gin_bindings=LENGTH_NORM = True" in student
    assert "--gin_file=gin/study/librispeech_student.gin" in student
    assert student.index("--gin_file=gin/study/librispeech_data.gin") > student.index(
        "--gin_file=gin/fullsum_kd.gin"
    )
    assert "--gin_bindings=NUM_STEPS = 100000" in student
    soft = jobs["student-teacher-medium-soft-SHIFT=0-s0"].argv_lists()[0]  # online at this scale
    assert "--gin_file=gin/soft_kd.gin" in soft
    assert f"--gin_bindings=TEACHER_DIR = '{plan.teacher_dir('medium')}'" in soft


def test_dry_run_lists_the_jobs_without_tensorflow_start_up_lines(tmp_path, monkeypatch, clean_gin):
    """Parsing the preset loads TensorFlow (tfkd.config); its C++ start-up lines (cuFFT, cuDNN and
    cuBLAS factories: errors, which TF_CPP_MIN_LOG_LEVEL=2 keeps; TensorRT) stay out of the
    listing, and the environment the jobs inherit is left as it was."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    argv = [sys.executable, os.path.join(REPO, "tools", "run_study.py"), "--preset", "tiny"]
    argv += ["--dry_run", "--out", str(tmp_path)]
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = (proc.stdout + proc.stderr).splitlines()
    assert [line for line in lines if "cuda" in line.lower() or "tensorrt" in line.lower()] == []
    assert proc.stdout.splitlines()[-1] == f"26 jobs; study directory {tmp_path}"
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    run_study = load_tool("run_study")
    run_study.load_plan(run_study._parse_args(["--preset", "tiny", "--out", str(tmp_path)]))
    assert "TF_CPP_MIN_LOG_LEVEL" not in os.environ


def test_results_name_the_command_that_runs_the_study_not_the_report():
    run_study = load_tool("run_study")
    argv = ["--report_only", "--results", "/tmp/r", "--parallel", "1", "--out", "runs/s"]
    argv += ["--gin_bindings", "StudyPlan.seeds = (0,)"]
    assert run_study._command_line(run_study._parse_args(argv)) == (
        "python tools/run_study.py --preset small --out runs/s "
        "'--gin_bindings=StudyPlan.seeds = (0,)'"
    )


def test_a_difference_that_rounds_to_zero_has_no_sign_of_its_own():
    assert report_markdown._difference({"mean": -0.04, "ci95": 0.5}) == "+0.0 ± 0.5"
    assert report_markdown._difference({"mean": -1.26, "ci95": None}) == "-1.3"
    assert report_markdown._difference(None) == "–"


def test_evaluate_command_names_both_splits_records():
    argv = jobs_lib.evaluate_command(
        lambda *a: ["py", *a], "m", lambda s: f"r/{s}-*", "spm.model", 64, max_batches=8
    )
    assert argv == [
        "py",
        "bin/evaluate",
        "--model_dir=m",
        "--split=dev",
        "--split=test",
        "--records=dev=r/dev-*",
        "--records=test=r/test-*",
        "--spm_model=spm.model",
        "--batch_size=64",
        "--max_batches=8",
    ]
    whole = jobs_lib.evaluate_command(lambda *a: list(a), "m", str, "s", 1)
    assert whole[-1] == "--batch_size=1" and not any("max_batches" in a for a in whole)
