"""Data made with other sizes is refused, not reused (`Job.check`, `builtin_data_steps`).

The data steps count as done when their tools' completion marks exist; the marks do not say the
sizes, so each step compares the manifests with what the run asks for. Fake data directories
with hand-written manifests; every command would create a file, which must not appear.
"""

import json
import os
import stat

import gin
import pytest

from tfkd import config
from tfkd.study import demo, plan_jobs, scheduler
from tfkd.study import jobs as jobs_lib
from tfkd.study import plan as plan_lib

TINY = {"train-labeled": 16, "train-unlabeled": 8, "dev": 6, "test": 6}
SMALL = {"train-labeled": 5000, "train-unlabeled": 4000, "dev": 500, "test": 500}


def _write(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f)


def _fake_data(data, size="tiny", respoken=0, pool=0):
    """DATA with every completion mark, of preset `size`: the corpus manifest, the SentencePiece
    model, and the records manifests of the four splits, `train-respoken` (respoken x
    train-labeled) and `train-pool` (pool)."""
    main = {"tiny": TINY, "small": SMALL}[size]
    splits = {s: {"utterances": n, "speakers": 1} for s, n in main.items()}
    _write(f"{data}/corpus/{size}/manifest.json", {"size": size, "splits": splits})
    os.makedirs(f"{data}/spm", exist_ok=True)
    open(f"{data}/spm/spm.model", "w").close()
    counts = dict(main)
    if respoken:
        counts["train-respoken"] = respoken * main["train-labeled"]
    if pool:
        counts["train-pool"] = pool
    for split, n in counts.items():
        records = {"split": split, "num_candidates": n, "num_utterances": n, "num_problems": 0}
        _write(f"{data}/records/{split}.manifest.json", records)


def _python(tmp_path):
    """An executable standing in for the interpreter: it creates RAN, whatever it is asked."""
    ran = tmp_path / "RAN"
    path = tmp_path / "fake-python"
    path.write_text(f"#!/bin/sh\ntouch {ran}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path), ran


def _run(tmp_path, data_jobs, last=None):
    """Runs the data jobs and a job `after` that needs the last of them (or `last`)."""
    python, ran = _python(tmp_path)
    after = jobs_lib.Job("after", [[python]], deps=(last or data_jobs[-1].name,))
    runner = scheduler.Scheduler(str(tmp_path / "out"), progress=False)
    return runner, runner.run([*data_jobs, after]), ran


def _steps(tmp_path, data, size="tiny", **kw):
    python, _ = _python(tmp_path)
    return jobs_lib.builtin_data_steps(lambda *a: [python, *a], data, size, 32, **kw)


def test_data_of_this_run_sizes_is_skipped(tmp_path):
    data = str(tmp_path / "data")
    _fake_data(data, respoken=2, pool=8)
    jobs = jobs_lib.data_jobs(_steps(tmp_path, data, respoken=2, pool=8))
    assert all(j.check is not None for j in jobs if j.name != "data-spm")
    runner, status, ran = _run(tmp_path, jobs)
    skipped = {j.name: "skipped" for j in jobs}
    assert status == {**skipped, "after": "done"} and not runner.failures
    assert ran.exists()  # the job after the data ran
    # A split with utterances dropped as bad input (e.g. too short) is still of this size.
    _write(f"{data}/records/train-pool.manifest.json", {"num_candidates": 8, "num_utterances": 7})
    assert jobs[-1].check() is None


def test_a_pool_of_another_size_fails_its_step_and_blocks_the_rest(tmp_path):
    data = str(tmp_path / "data")
    _fake_data(data, respoken=2, pool=5)
    runner, status, ran = _run(tmp_path, jobs_lib.data_jobs(_steps(tmp_path, data, pool=8)))
    assert status["data-pool"] == "failed" and status["after"] == "blocked"
    assert status["data-records"] == "skipped"
    message = (
        f"{data}/records/train-pool.manifest.json has 5 utterances, but this run asks for 8 "
        f"(--pool 8); delete {data}/corpus/tiny/train-pool and {data}/records/train-pool* to "
        "rebuild it, or use another data directory"
    )
    assert list(runner.failures) == ["data-pool"]
    assert runner.failures["data-pool"].reason == message
    assert runner.failures["data-pool"].argv is None
    assert not ran.exists()  # no command ran
    assert message in (tmp_path / "out" / "logs" / "data-pool.log").read_text()
    assert not os.path.exists(tmp_path / "out" / "stamps" / "data-pool.json")


def test_respoken_of_another_count_blocks_the_done_steps_after_it(tmp_path):
    data = str(tmp_path / "data")
    _fake_data(data, respoken=2, pool=8)
    jobs = jobs_lib.data_jobs(_steps(tmp_path, data, respoken=3, pool=8))
    runner, status, ran = _run(tmp_path, jobs)
    # The pool fits and is done, but it comes after the refused step, as does the job after it.
    assert status == {
        "data-corpus": "skipped",
        "data-spm": "skipped",
        "data-records": "skipped",
        "data-respoken": "failed",
        "data-pool": "blocked",
        "after": "blocked",
    }
    assert runner.failures["data-respoken"].reason == (
        f"{data}/records/train-respoken.manifest.json has 32 utterances, but this run asks for "
        f"48 (--respoken 3); delete {data}/corpus/tiny/train-respoken and "
        f"{data}/records/train-respoken* to rebuild it, or use another data directory"
    )
    assert not ran.exists()


def test_records_of_another_corpus_size_are_refused(tmp_path):
    data = str(tmp_path / "data")
    _fake_data(data, "small")  # records of the small preset ...
    _fake_data(data, "tiny")  # ... and the tiny corpus, whose records replaced them
    for split, n in SMALL.items():
        _write(f"{data}/records/{split}.manifest.json", {"num_utterances": n})
    runner, status, ran = _run(tmp_path, jobs_lib.data_jobs(_steps(tmp_path, data), prefix=""))
    assert status == {
        "corpus": "skipped",
        "spm": "skipped",
        "records": "failed",
        "after": "blocked",
    }
    r = f"{data}/records"
    assert runner.failures["records"].reason == (
        f"{r}/train-labeled.manifest.json has 5000 utterances, but this run asks for 16 "
        f"(--size tiny); delete {r}/train-labeled*, {r}/train-unlabeled*, {r}/dev* and "
        f"{r}/test* to rebuild them, or use another data directory"
    )
    assert not ran.exists()


@pytest.mark.parametrize(
    "corpus, message",
    [
        (
            {"size": "small", "splits": {}},
            "{c}/manifest.json is of a corpus of size small, but this run asks for tiny; "
            "delete {c} to rebuild it, or use another data directory",
        ),
        (
            {
                "size": "tiny",
                "splits": {s: {"utterances": n} for s, n in {**TINY, "dev": 5}.items()},
            },
            "{c}/manifest.json has 5 utterances in dev, but this run asks for 6 (--size tiny); "
            "delete {c} to rebuild it, or use another data directory",
        ),
    ],
)
def test_a_corpus_of_another_size_is_refused(tmp_path, corpus, message):
    data = str(tmp_path / "data")
    _fake_data(data, "tiny")
    _write(f"{data}/corpus/tiny/manifest.json", corpus)
    runner, status, ran = _run(tmp_path, jobs_lib.data_jobs(_steps(tmp_path, data)))
    assert status["data-corpus"] == "failed"
    assert [status[n] for n in ("data-spm", "data-records", "after")] == ["blocked"] * 3
    assert runner.failures["data-corpus"].reason == message.format(c=f"{data}/corpus/tiny")
    assert not ran.exists()


def test_a_step_that_finished_is_checked_too_and_a_check_that_raises_fails(tmp_path):
    python, ran = _python(tmp_path)
    mark = str(tmp_path / "mark")
    open(mark, "w").close()

    def check():
        return "mark does not fit"

    made = jobs_lib.Job("made", [[python]], outputs=(mark,), stamped=True, check=check)
    runner = scheduler.Scheduler(str(tmp_path / "out"), progress=False)
    assert runner.run([made]) == {"made": "failed"}  # not done (no stamp): it runs, then fails
    assert ran.exists() and runner.failures["made"].reason == "mark does not fit"
    assert "finished, but does not fit: mark does not fit" in open(runner.log_path(made)).read()
    assert not os.path.exists(runner.stamp_path(made))

    broken = jobs_lib.Job("broken", [[python]], outputs=(mark,), stamped=False, check=lambda: 1 / 0)
    ran.unlink()
    assert runner.run([broken]) == {"broken": "failed"} and not ran.exists()
    assert isinstance(runner.failures["broken"].error, ZeroDivisionError)
    assert runner.failures["broken"].reason.startswith("could not check its outputs:")
    # Without a check, done means skipped, as before.
    plain = jobs_lib.Job("plain", [[python]], outputs=(mark,), stamped=False)
    assert runner.run([plain]) == {"plain": "skipped"} and not ran.exists()


def test_steps_unpack_and_compare_as_before_and_every_caller_checks(tmp_path):
    steps = jobs_lib.builtin_data_steps(lambda *a: list(a), "/d", "tiny", 32, respoken=2, pool=8)
    name, commands, marks = steps[-1]
    assert (name, marks) == ("pool", ("/d/records/train-pool.manifest.json",))
    assert steps == [tuple(s) for s in steps]  # the checks do not take part in equality
    assert [j.check is None for j in jobs_lib.data_jobs([("x", [], ())])] == [True]
    # make demo: its data stages are checked.
    ctx = demo.Context(out=str(tmp_path / "out"), data="/d", size="tiny")
    checked = [j.name for j in demo.demo_jobs(ctx) if j.check is not None]
    assert checked == ["corpus", "spm", "records", "respoken"]


def test_the_small_preset_refuses_a_smaller_pool(tmp_path):
    python, ran = _python(tmp_path)
    data = str(tmp_path / "data")
    gin.clear_config()
    try:
        config.parse_gin([plan_lib.preset_path("small")])
        plan = gin.get_configurable("StudyPlan")(data_dir=data, python=python, repo=str(tmp_path))
    finally:
        gin.clear_config()
    assert (plan.respoken, plan.pool) == (2, 20000)
    _fake_data(data, "small", respoken=2, pool=20000)
    runner, status, _ = _run(tmp_path, plan_jobs.data_jobs(plan), last=plan_jobs.data_deps(plan)[0])
    assert set(status.values()) == {"skipped", "done"} and status["after"] == "done"
    ran.unlink()
    _write(f"{data}/records/train-pool.manifest.json", {"num_utterances": 5000})
    runner, status, _ = _run(tmp_path, plan_jobs.data_jobs(plan), last=plan_jobs.data_deps(plan)[0])
    assert (status["data-pool"], status["after"]) == ("failed", "blocked")
    assert runner.failures["data-pool"].reason.startswith(
        f"{data}/records/train-pool.manifest.json has 5000 utterances, but this run asks for "
        "20000 (--pool 20000); delete "
    )
    assert not ran.exists()


def test_the_demo_says_to_delete_refused_data_not_to_rerun_the_stage(tmp_path):
    data = str(tmp_path / "data")
    _fake_data(data, respoken=2)
    _write(f"{data}/records/train-respoken.manifest.json", {"num_utterances": 48})
    jobs = jobs_lib.data_jobs(_steps(tmp_path, data, respoken=2), prefix="")
    ctx = demo.Context(out=str(tmp_path / "out"), data=data, size="tiny")
    with pytest.raises(demo.StageError) as err:
        demo.run_stages(jobs, ctx)
    assert str(err.value) == (
        f"stage 'respoken' refused the data it found: {data}/records/train-respoken.manifest.json"
        " has 48 utterances, but this run asks for 32 (--respoken 2); delete "
        f"{data}/corpus/tiny/train-respoken and {data}/records/train-respoken* to rebuild it, or "
        f"use another data directory\n  then rerun: python tools/run_demo.py --out {ctx.out} "
        f"--data {data}"
    )
    assert "--only" not in str(err.value)


def _spm_manifest(data, input_dir, vocab_size=32):
    _write(f"{data}/spm/spm.json", {"input": input_dir, "vocab_size": vocab_size, "pieces": 30})


def test_a_sentencepiece_model_of_another_corpus_or_size_is_refused(tmp_path):
    data = str(tmp_path / "data")
    _fake_data(data)
    jobs = jobs_lib.data_jobs(_steps(tmp_path, data))
    spm = {j.name: j for j in jobs}["data-spm"]
    assert spm.check() is None  # no manifest (a model made before manifests): nothing to compare
    # Trained on this corpus with this size: fits, also in a data directory moved since.
    _spm_manifest(data, "/elsewhere/data/corpus/tiny/train-labeled")
    assert spm.check() is None
    fix = (
        f"delete {data}/spm/spm.* and {data}/records/* to rebuild them, or use another data "
        "directory"
    )
    _spm_manifest(data, "/elsewhere/data/corpus/small/train-labeled")
    runner, status, ran = _run(tmp_path, jobs)
    assert (status["data-spm"], status["data-records"], status["after"]) == (
        "failed",
        "blocked",
        "blocked",
    )
    assert runner.failures["data-spm"].reason == (
        f"{data}/spm/spm.json: the SentencePiece model was trained on "
        "/elsewhere/data/corpus/small/train-labeled, but this run asks for "
        f"{data}/corpus/tiny/train-labeled; {fix}"
    )
    assert not ran.exists()
    _spm_manifest(data, f"{data}/corpus/tiny/train-labeled", vocab_size=1024)
    assert spm.check() == (
        f"{data}/spm/spm.json: the SentencePiece model was trained with --vocab_size 1024, but "
        f"this run asks for 32; {fix}"
    )
    with open(f"{data}/spm/spm.json", "w") as f:
        f.write("{not json")
    assert spm.check().startswith(f"{data}/spm/spm.json cannot be read (")
    assert spm.check().endswith(fix)
