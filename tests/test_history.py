"""Learning curves: `eval/history.jsonl` written by train(), read back, and tools/plot_curves.py."""

import glob
import json
import os
import time

import pytest
import tensorflow as tf
from test_training import VOCAB, B, tiny_model
from tool_scripts import load_tool
from training_records import write_tiny_records

from tfkd.data import pipeline
from tfkd.training import history, loop, trainers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_TERMS = {"rnnt", "loss", "grad_norm", "learning_rate", "steps_per_second"}


def _write(model_dir, text):
    path = history.history_path(str(model_dir))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return path


def _line(step, **values):
    return json.dumps({"step": step, **values}) + "\n"


def test_read_skips_an_incomplete_last_line_and_rejects_a_broken_complete_one(tmp_path):
    assert history.read_history(str(tmp_path)) == []  # no file yet
    _write(tmp_path, _line(1, x=1.0) + _line(2, x=2.0) + '{"step": 3, "x"')
    assert history.read_history(str(tmp_path)) == [{"step": 1, "x": 1.0}, {"step": 2, "x": 2.0}]
    # A record that parses but lacks its newline is incomplete too: a writer may still be at it.
    _write(tmp_path, _line(1, x=1.0) + _line(2, x=2.0).rstrip("\n"))
    assert history.read_history(str(tmp_path)) == [{"step": 1, "x": 1.0}]
    path = _write(tmp_path, _line(1, x=1.0) + '{"step": 2, "x\n' + _line(3, x=3.0))
    with pytest.raises(ValueError, match=f"{path}:2: not a history record"):
        history.read_history(str(tmp_path))


def test_resume_drops_records_after_the_resumed_step_and_the_torn_tail(tmp_path):
    path = _write(tmp_path, _line(2, x=2.0) + _line(4, x=4.0) + _line(6, x=6.0) + '{"st')
    kept = history.resume_history(str(tmp_path), 4)
    assert kept == [{"step": 2, "x": 2.0}, {"step": 4, "x": 4.0}]
    assert open(path).read() == _line(2, x=2.0) + _line(4, x=4.0)
    history.append_record(str(tmp_path), {"step": 5, "x": 5.0})
    assert [r["step"] for r in history.read_history(str(tmp_path))] == [2, 4, 5]
    # No checkpoint (step 0): a new run; the old records go.
    assert history.resume_history(str(tmp_path), 0) == []
    assert open(path).read() == ""


def test_make_record_refuses_a_name_reported_twice():
    times = {"train_seconds": 1.0, "cpu_seconds": 2.0, "wall_time": 3.0}
    record = history.make_record(7, times, {"loss": 4.0}, {"dev/wer": 5.0})
    assert record == {"step": 7, **times, "loss": 4.0, "dev/wer": 5.0}
    with pytest.raises(ValueError, match="'loss' is reported twice"):
        history.make_record(7, times, {"loss": 4.0}, {"loss": 5.0})


def test_clock_excludes_paused_wall_and_cpu_time_and_continues_counts():
    clock = history.TrainingClock.continuing(
        [{"step": 3, "train_seconds": 10.0, "cpu_seconds": 20.0}]
    )
    with clock.paused() as at_pause:
        deadline = time.process_time() + 0.3
        while time.process_time() < deadline:  # burn CPU, then sleep: neither is counted
            pass
        time.sleep(0.3)
    after = clock.snapshot()
    assert 10.0 <= at_pause["train_seconds"] <= after["train_seconds"] < 10.1
    assert 20.0 <= at_pause["cpu_seconds"] <= after["cpu_seconds"] < 20.1
    # Each stamp is rounded to the millisecond: allow that, and no more.
    assert after["wall_time"] - at_pause["wall_time"] >= 0.6 - 0.001
    assert history.TrainingClock.continuing([]).snapshot()["train_seconds"] < 0.1


def _train_scalars(model_dir, tag):
    """{step: value} of a scalar in the `train/` TensorBoard run."""
    values = {}
    for path in glob.glob(os.path.join(model_dir, "train", "events.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for v in event.summary.value:
                if v.tag == tag:
                    values[event.step] = float(tf.make_ndarray(v.tensor))
    return values


def test_train_writes_one_record_per_evaluation_and_continues_after_a_resume(tmp_path):
    pattern = write_tiny_records(str(tmp_path / "records"), vocab_size=VOCAB)
    calls = []

    def fake_eval(trainer):
        calls.append(int(trainer.optimizer.iterations.numpy()))
        time.sleep(0.2)  # evaluation time: not in train_seconds
        return {"dev/wer": 100.0 / len(calls), "dev/utterances": 7.0}

    def dataset_fn(input_context, seed):
        return pipeline.make_dataset(
            pattern, global_batch_size=B, shuffle=True, seed=seed, repeat=True,
            input_context=input_context,
        )  # fmt: skip

    kwargs = dict(
        model_fn=tiny_model,
        train_dataset_fn=dataset_fn,
        global_batch_size=B,
        trainer_fn=lambda *a, **k: trainers.SupervisedTrainer(*a, jit_compile=False, **k),
        checkpoint_every=2,
        summary_every=1,
        eval_every=2,
        eval_fn=fake_eval,
        progress=False,
    )
    model_dir = str(tmp_path / "run")
    loop.train(model_dir, num_steps=3, **kwargs)  # evaluates at 2 and at the end, 3
    first = history.read_history(model_dir)
    assert [r["step"] for r in first] == [2, 3]
    # An interrupted invocation evaluated step 4, was killed before saving ckpt-4 and while
    # writing its next record: the resumed run drops both and evaluates step 4 again.
    path = history.history_path(model_dir)
    with open(path, "a") as f:
        f.write(_line(4, train_seconds=1e6, cpu_seconds=1e6, wall_time=0.0) + '{"step": 5, "tr')
    loop.train(model_dir, num_steps=6, **kwargs)  # resumes at ckpt-3; evaluates at 4 and 6
    # Already at the target: nothing is trained, evaluated or recorded.
    loop.train(model_dir, num_steps=6, **kwargs)

    records = history.read_history(model_dir)
    assert open(path).read().endswith("\n")
    assert [r["step"] for r in records] == [2, 3, 4, 6]
    assert calls == [2, 3, 4, 6]
    assert records[:2] == first  # kept as written
    losses = _train_scalars(model_dir, "loss")
    for n, record in enumerate(records, start=1):
        assert set(record) == {
            "step",
            *history.TIME_KEYS,
            *TRAIN_TERMS,
            "dev/wer",
            "dev/utterances",
        }
        assert record["dev/wer"] == 100.0 / n and record["dev/utterances"] == 7.0
        # summary_every=1: the training terms are those logged at the same step.
        assert record["loss"] == pytest.approx(losses[record["step"]], rel=1e-6)
    for key in history.TIME_KEYS:
        values = [r[key] for r in records]
        assert values == sorted(values) and values[0] > 0, key
    # Counts carry over from step 3 (not from the dropped 1e6), and exclude the 0.2 s sleeps.
    assert records[2]["train_seconds"] < 1e5 and records[2]["cpu_seconds"] < 1e5
    for a, b in zip(records, records[1:], strict=False):
        assert b["train_seconds"] - a["train_seconds"] <= b["wall_time"] - a["wall_time"] - 0.19


# --- tools/plot_curves.py -------------------------------------------------------------------


def _fake_run(directory, points):
    """A history of `(step, train_seconds, cpu_seconds, dev_wer, train_wer)` points."""
    for step, seconds, cpu, dev, train in points:
        record = {"step": step, "train_seconds": seconds, "cpu_seconds": cpu, "wall_time": 0.0}
        record.update({"loss": 1.0, "dev/wer": dev})
        if train is not None:
            record["train/wer"] = train
        history.append_record(str(directory), record)


def test_plot_curves_prints_best_and_last_points_and_writes_a_png(tmp_path, capsys):
    _fake_run(tmp_path / "old", [(500, 600, 1100, 80.0, None), (1000, 1200, 2300, 70.5, None)])
    _fake_run(
        tmp_path / "new",
        [
            (500, 300, 500, 75.0, 70.0),
            (1000, 630, 1000, 60.25, 50.0),
            (1500, 960, 1600, 61.0, 45.5),
        ],
    )
    png = tmp_path / "plots" / "curves.png"
    argv = [f"--run=old={tmp_path / 'old'}", f"--run=new={tmp_path / 'new'}", "--metric=dev/wer"]
    argv += ["--metric=train/wer", f"--output={png}", "--title=recipes"]
    assert load_tool("plot_curves").main(argv) == 0
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith("|")]
    assert table == [
        "| run | best dev/wer | at step | at train min | last step | last train min "
        "| last dev/wer | last train/wer |",
        "|---|---|---|---|---|---|---|---|",
        "| old | 70.50 | 1000 | 20.0 | 1000 | 20.0 | 70.50 | – |",
        "| new | 60.25 | 1000 | 10.5 | 1500 | 16.0 | 61.00 | 45.50 |",
    ]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    # CPU minutes on the x axis: the table reports them instead.
    load_tool("plot_curves").main(
        [f"--run=new={tmp_path / 'new'}", "--x=cpu_minutes", f"--output={png}"]
    )
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    assert rows[0].startswith("| run | best dev/wer | at step | at CPU min |")
    assert rows[2] == "| new | 60.25 | 1000 | 16.7 | 1500 | 26.7 | 61.00 |"


def test_plot_curves_names_a_run_without_history_and_how_to_make_one(tmp_path):
    _fake_run(tmp_path / "ok", [(500, 600, 1100, 80.0, None)])
    os.makedirs(tmp_path / "bare")
    argv = [f"--run=ok={tmp_path / 'ok'}", f"--run=bare={tmp_path / 'bare'}"]
    with pytest.raises(SystemExit) as e:
        load_tool("plot_curves").main([*argv, f"--output={tmp_path / 'c.png'}"])
    message = str(e.value)
    assert len(message.splitlines()) == 1
    assert str(tmp_path / "bare") in message and "train.eval_every" in message
    assert not (tmp_path / "c.png").exists()
    with pytest.raises(SystemExit, match="no 'dev/loss' in"):
        load_tool("plot_curves").main(
            [argv[0], "--metric=dev/loss", f"--output={tmp_path / 'c.png'}"]
        )


def test_plot_curves_reads_a_probe_summary_curve(tmp_path, capsys):
    curve = [
        {"step": 500, "train_seconds": 120, "cpu_seconds": 240, "dev/wer": 90.0},
        {"step": 1000, "train_seconds": 240, "cpu_seconds": 480, "dev/wer": 70.0},
    ]
    summary = tmp_path / "teacher_x.json"
    summary.write_text(json.dumps({"name": "teacher_x", "final": {}, "curve": curve}))
    png = tmp_path / "c.png"
    argv = [f"--run=x={summary}", "--x=cpu_minutes", f"--output={png}"]
    assert load_tool("plot_curves").main(argv) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    assert rows[2] == "| x | 70.00 | 1000 | 8.0 | 1000 | 8.0 | 70.00 |"
    (tmp_path / "bad.json").write_text(json.dumps({"name": "no curve"}))
    with pytest.raises(SystemExit, match=r"bad: no records in .*bad\.json \(no `curve`"):
        load_tool("plot_curves").main([f"--run=bad={tmp_path / 'bad.json'}", f"--output={png}"])
