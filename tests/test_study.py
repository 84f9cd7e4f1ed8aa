"""The study driver (`tools/run_study.py`, `tfkd.study`): plan, statistics, scheduler, report."""

import glob
import importlib.util
import json
import math
import os
import subprocess
import sys
import types

import gin
import pytest

from tfkd import config
from tfkd.study import jobs as jobs_lib
from tfkd.study import plan as plan_lib
from tfkd.study import report, scheduler, stats

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
    jobs = plan.jobs()
    names = [j.name for j in jobs]
    assert len(names) == len(set(names))
    seen = set()
    for job in jobs:  # every dependency is a job listed before its dependants
        assert set(job.deps) <= seen, job.name
        seen.add(job.name)
    kinds = [j.info.get("kind") for j in jobs]
    assert kinds.count("teacher") == 3
    # N-best per teacher and per noise rate; soft targets (1-best) per teacher
    assert kinds.count("pseudo") == 3 + 3 + 3
    students = [j.info for j in jobs if j.info.get("kind") == "student"]
    # baseline 3 seeds; 3 teachers x 5 methods x 3 seeds; noise 3 rates x 2 methods x 3 seeds;
    # tuning: soft 2 shifts and disc 2 temperatures, one of each being a seed-0 run.
    assert len(students) == 3 + 45 + 18 + 1 + 1
    cell = [s for s in students if s["arm"] == "teacher-good" and s["method"] == "full-sum"]
    assert sorted(s["seed"] for s in cell) == [0, 1, 2]


def test_student_commands_point_at_their_teacher(tmp_path):
    plan = load_preset("small", out_dir=str(tmp_path / "out"), data_dir=str(tmp_path / "data"))
    jobs = {j.name: j for j in plan.jobs()}
    soft = jobs["student-teacher-medium-soft-SHIFT=2-s0"]
    train, evaluate = soft.argv_lists()
    assert "--gin_file=gin/soft_kd_offline.gin" in train
    assert not any("TEACHER_DIR" in a for a in train)  # offline: no teacher in the trainer
    soft_dir = plan.pseudo_dir("medium", soft_targets=True)
    assert soft.deps == ("pseudo-medium-soft",) and soft_dir.endswith("pseudo/medium-soft")
    pseudo = os.path.join(soft_dir, "*.tfrecord")
    assert f"--gin_bindings=PSEUDO_LABEL_RECORDS = '{pseudo}'" in train
    assert "--gin_bindings=SHIFT = 2" in train
    soft_pl = jobs["pseudo-medium-soft"].argv_lists()[0]
    assert "--soft_targets" in soft_pl and "--nbest=1" in soft_pl
    assert f"--output_dir={soft_dir}" in soft_pl
    hard_pl = jobs["pseudo-medium"].argv_lists()[0]
    assert "--soft_targets" not in hard_pl and f"--nbest={plan.nbest}" in hard_pl
    full_sum = jobs["student-teacher-medium-full-sum-default-s0"].argv_lists()[0]
    nbest = os.path.join(plan.pseudo_dir("medium"), "*.tfrecord")
    assert f"--gin_bindings=PSEUDO_LABEL_RECORDS = '{nbest}'" in full_sum
    assert "--gin_bindings=train.seed = 0" in train
    assert evaluate[1].endswith("bin/evaluate") and "--split=test" in evaluate
    noisy = jobs["student-noise-0.2-hard-default-s1"]
    assert noisy.deps == ("pseudo-good-noise0.2",)
    assert "--gin_bindings=train.seed = 1" in noisy.argv_lists()[0]
    baseline = jobs["student-no-kd-no-kd-default-s2"].argv_lists()[0]
    assert not any("PSEUDO_LABEL" in a or "TEACHER_DIR" in a for a in baseline)
    # The teachers differ in labelled data, size and steps (the good one continues medium).
    half = "--gin_bindings=TRAIN_RECORDS = '{}/records/train-labeled-0000[0-4]-*.tfrecord'"
    half = half.format(plan.data_dir)
    bad, medium, good = (jobs[f"teacher-{t}"] for t in ("bad", "medium", "good"))
    assert bad.deps == medium.deps == ("data-records",)
    assert good.deps == ("data-records", "teacher-medium")
    bad_train, medium_train = bad.argv_lists()[0], medium.argv_lists()[0]
    assert half in bad_train and "--gin_bindings=conformer_teacher.num_layers = 2" in bad_train
    assert half in medium_train and "--gin_bindings=NUM_STEPS = 2000" in medium_train
    assert not any("num_layers" in a for a in medium_train)
    assert not any("TRAIN_RECORDS" in a and "0000[0-4]" in a for a in good.argv_lists()[0])
    pl = jobs["pseudo-good-noise0.4"].argv_lists()[0]
    assert "--noise_rate=0.4" in pl and f"--teacher_dir={plan.teacher_dir('good')}" in pl


def _training_argvs(plan):
    """The `bin/train` argv of every teacher and student run of `plan` whose command is known
    now (tuned runs make theirs when they start, from the tuning runs' dev WER)."""
    jobs = [j for j in plan.jobs() if j.info.get("setting") != "tuned"]
    return [j.argv_lists()[0] for j in jobs if j.info.get("kind") in ("teacher", "student")]


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_every_training_command_of_a_preset_parses_strictly(preset, tmp_path, clean_gin):
    """The fast stand-in for the slow end-to-end study: each teacher and student run the plan
    makes is a configuration bin/train accepts (a misspelt or unbound binding raises), with a
    deterministic input pipeline."""
    plan = load_preset(preset, out_dir=str(tmp_path / "out"), data_dir=str(tmp_path / "data"))
    trainings = _training_argvs(plan)
    assert len(trainings) >= 10
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
    assert len(trainings) > 50
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
    with pytest.raises(RuntimeError, match="not evaluated"):
        plan.tuned_values("soft")
    for shift, wer in ((0, 50.0), (2, 45.0)):
        path = os.path.join(plan.tuning_dir("soft", {"SHIFT": shift}), "eval")
        os.makedirs(path)
        with open(os.path.join(path, "dev.json"), "w") as f:
            json.dump({"wer": wer}, f)
    assert plan.tuned_values("soft") == {"SHIFT": 2}
    # A collapsed run (a few stock transcripts) loses to a listening one even at a lower WER...
    _write_dev(plan.tuning_dir("soft", {"SHIFT": 2}), 45.0, distinct_hypotheses=3, utterances=100)
    _write_dev(plan.tuning_dir("soft", {"SHIFT": 0}), 50.0, distinct_hypotheses=90, utterances=100)
    assert plan.tuned_values("soft") == {"SHIFT": 0}
    # ... and when every run collapsed, the lowest dev WER wins again.
    _write_dev(plan.tuning_dir("soft", {"SHIFT": 0}), 50.0, distinct_hypotheses=4, utterances=100)
    assert plan.tuned_values("soft") == {"SHIFT": 2}
    _write_dev(plan.tuning_dir("soft", {"SHIFT": 2}), 45.0)
    jobs = {j.name: j for j in plan.jobs()}
    assert "--gin_bindings=SHIFT = 2" in jobs["student-teacher-good-soft-tuned-s2"].argv_lists()[0]
    assert plan.tuned_values("hard") == {}


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
    steps = [("x", [], ()), ("y", [], ())]
    assert [(j.name, j.deps) for j in jobs_lib.data_jobs(steps, prefix="")] == [
        ("x", ()),
        ("y", ("x",)),
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
    jobs = plan.jobs()
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
    with open(os.path.join(plan.out_dir, report.WALL_TIME_NOTE), "w") as f:
        f.write("Teachers carried over\nfrom another run.\n")
    result = report.collect(plan, jobs, seconds=3600.0)
    assert result["baseline"]["test"]["mean"] == pytest.approx(52.0)
    cells = {(c["arm"], c["method"]): c for c in result["cells"]}
    good = cells[("teacher-good", "full-sum")]
    assert good["test"]["values"] == [41.0, 42.0, 43.0]
    assert good["test"]["ci95"] == pytest.approx(4.303 / math.sqrt(3))
    assert good["test_rel_wer_reduction"] == pytest.approx((52.0 - 42.0) / 52.0)
    assert [r["model_dir"] for r in good["runs"]][0].endswith(
        "students/teacher-good/full-sum/default/s0"
    )
    # Tuning: every value ties on dev, the first is chosen, and only its run joins the cell.
    assert result["chosen_on_dev"]["soft"]["values"] == {"SHIFT": 0}
    assert len(cells[("teacher-medium", "soft")]["runs"]) == 3
    assert len(result["tuning_runs"]) == 4
    assert result["noise_labels"][1] == {"noise_rate": 0.2, "teacher_wer": 33.0, "label_wer": 53.0}
    paths = report.write(result, str(tmp_path / "results"), "python tools/run_study.py")
    loaded = json.loads(open(paths[0]).read())
    assert loaded["command"] == "python tools/run_study.py" and loaded["measured_seconds"] == 3600
    assert loaded["jobs_done"] == 0 and loaded["jobs_total"] == len(jobs) - 3  # 3 data jobs
    md = open(paths[1]).read()
    assert "(data preparation is not counted). Teachers carried over from another run.\n" in md
    row = "| **good** (all data, 3 layers, 3k steps) | [30.0 / 31.0](#runs-teacher-good) | 33.0 |"
    assert row in md
    assert '<a id="runs-teacher-good"></a>' in md and "(../out/teachers/good) |" in md
    assert "[41.0 ± 2.5 / 42.0 ± 2.5](#runs-teacher-bad-hard)<br>+19.2%" in md
    assert '<a id="runs-teacher-bad-hard"></a>' in md
    # A student that says the same words for every input is flagged in its cell and its row.
    assert cells[("teacher-bad", "full-sum")]["collapsed_runs"] == 1
    assert cells[("teacher-bad", "hard")]["collapsed_runs"] == 0
    assert "(#runs-teacher-bad-full-sum)<br>+19.2%<br>1 of 3 collapsed |" in md
    assert "| 1 | 41.00 | 42.00 | **1 of 100 (collapsed)** |" in md
    assert "| 0 | 40.00 | 41.00 | 100 of 100 |" in md
    # A run's config is copied next to the results (run directories are not committed) ...
    copy = tmp_path / "results" / "configs" / "students__teacher-bad__hard__default__s0.gin"
    assert copy.read_text() == "NUM_STEPS = 1500\n"
    assert "(../out/students/teacher-bad/hard/default/s0) | [operative_config.gin](" in md
    assert "(configs/students__teacher-bad__hard__default__s0.gin)" in md
    # ... and a run without one links to where it would be.
    assert "(../out/students/teacher-bad/hard/default/s1/operative_config.gin)" in md
    assert "soft, other frame rate: n/a" in md and "SHIFT=0 (lowest dev WER" in md
    png = open(paths[2], "rb").read()
    assert png.startswith(PNG_MAGIC) and len(png) > 10_000


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
        assert 0.0 <= t["dev_wer"] and t["train_unlabeled_wer"] is not None
    methods = [m["name"] for m in result["methods"]]
    cells = {(c["arm"], c["method"]) for c in result["cells"]}
    assert cells == {(f"teacher-{t}", m) for t in ("bad", "good") for m in methods} | {
        ("noise-0.2", "hard"),
        ("noise-0.2", "full-sum"),
    }
    for c in result["cells"]:
        for r in c["runs"]:
            assert os.path.exists(r["operative_config"]) and 0.0 <= r["test_wer"]
            assert os.path.dirname(r["config_copy"]) == str(results / "configs")
            assert open(r["config_copy"]).read() == open(r["operative_config"]).read()
    assert result["chosen_on_dev"]["soft"]["values"] in ({"SHIFT": 0}, {"SHIFT": 1})
    md = (results / "study.md").read_text()
    assert md.startswith("# Student WER by distillation method") and "| **bad** (2 steps) |" in md
    assert result["jobs_done"] == result["jobs_total"] and result["job_seconds"] > 0
    assert (results / "study.png").read_bytes().startswith(PNG_MAGIC)
    # Resumable: a rerun finds every job done and only rewrites the results.
    again = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0
    assert "[study] done:" not in again.stdout and "wrote" in again.stdout


def test_librispeech_preset_documents_the_paper_scale_runs(tmp_path):
    plan = load_preset("librispeech", out_dir=str(tmp_path), data_dir="/data/ls")
    jobs = {j.name: j for j in plan.jobs()}
    assert len(jobs) == 79 and not any(n.startswith("data-") for n in jobs)
    bad = jobs["teacher-bad"].argv_lists()[0]
    assert "--gin_bindings=TRAIN_RECORDS = '/data/ls/records/train-labeled-100-*.tfrecord'" in bad
    assert "--gin_file=gin/study/librispeech_hardware.gin" in bad
    student = jobs["student-teacher-good-full-sum-default-s1"].argv_lists()[0]
    assert "--gin_file=gin/study/librispeech_student.gin" in student
    assert student.index("--gin_file=gin/study/librispeech_data.gin") > student.index(
        "--gin_file=gin/fullsum_kd.gin"
    )
    assert "--gin_bindings=NUM_STEPS = 100000" in student
    soft = jobs["student-teacher-medium-soft-SHIFT=0-s0"].argv_lists()[0]  # online at this scale
    assert "--gin_file=gin/soft_kd.gin" in soft
    assert f"--gin_bindings=TEACHER_DIR = '{plan.teacher_dir('medium')}'" in soft


def test_results_name_the_command_that_runs_the_study_not_the_report():
    spec = importlib.util.spec_from_file_location(
        "run_study", os.path.join(REPO, "tools", "run_study.py")
    )
    run_study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_study)
    argv = ["--report_only", "--results", "/tmp/r", "--parallel", "1", "--out", "runs/s"]
    argv += ["--gin_bindings", "StudyPlan.seeds = (0,)"]
    assert run_study._command_line(run_study._parse_args(argv)) == (
        "python tools/run_study.py --preset small --out runs/s "
        "'--gin_bindings=StudyPlan.seeds = (0,)'"
    )
