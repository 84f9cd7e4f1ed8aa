"""tools/run_demo.py and its package side (`tfkd.study.demo`: the stages as jobs of the study's
scheduler; `tfkd.study.demo_report`): stage skipping, failures naming the stage, the summary table.
"""

import dataclasses
import json
import os
import sys

import pytest
from gin_settings import gin_settings
from tool_scripts import load_tool

from tfkd.study import demo, demo_report
from tfkd.study.jobs import Job

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


run_demo = load_tool("run_demo")


def _touch_stage(name, out_file, code=0):
    """A stage whose command appends a line to out_file, then exits with `code`."""
    script = (
        f"import sys; open({out_file!r}, 'a').write({name!r} + '\\n'); "
        f"print('hello from {name}'); sys.exit({code})"
    )
    return Job(name, [[sys.executable, "-c", script]])


def _calls(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return f.read().split()


def test_done_stages_are_skipped_and_stamped(tmp_path):
    ctx = demo.Context(out=str(tmp_path / "out"), data=str(tmp_path / "data"))
    calls = str(tmp_path / "calls.txt")
    stages = [_touch_stage("a", calls), _touch_stage("b", calls)]

    report = demo.run_stages(stages, ctx)
    assert _calls(calls) == ["a", "b"]
    assert list(report.values()) == ["done", "done"]
    stamp = json.load(open(tmp_path / "out" / "stamps" / "a.json"))
    assert stamp["job"] == "a" and stamp["seconds"] >= 0
    assert "hello from a" in open(tmp_path / "out" / "logs" / "a.log").read()

    report = demo.run_stages(stages, ctx)
    assert _calls(calls) == ["a", "b"]  # nothing ran again
    assert list(report.values()) == ["skipped", "skipped"]

    os.remove(tmp_path / "out" / "stamps" / "b.json")
    demo.run_stages(stages, ctx)
    assert _calls(calls) == ["a", "b", "b"]


def test_only_reruns_a_done_stage_alone(tmp_path):
    ctx = demo.Context(out=str(tmp_path / "out"), data=str(tmp_path / "data"))
    calls = str(tmp_path / "calls.txt")
    stages = [_touch_stage("a", calls), _touch_stage("b", calls)]
    demo.run_stages(stages, ctx)
    demo.run_stages(stages, ctx, only="a")
    assert _calls(calls) == ["a", "b", "a"]
    with pytest.raises(demo.StageError, match="unknown stage 'c'"):
        demo.run_stages(stages, ctx, only="c")


def test_outputs_decide_unstamped_stages(tmp_path):
    ctx = demo.Context(out=str(tmp_path / "out"), data=str(tmp_path / "data"))
    marker = tmp_path / "data" / "manifest.json"
    calls = str(tmp_path / "calls.txt")
    stage = dataclasses.replace(
        _touch_stage("corpus", calls), outputs=(str(marker),), stamped=False
    )
    assert not demo.scheduler(ctx).done(stage)
    marker.parent.mkdir(parents=True)
    marker.write_text("{}")
    assert demo.scheduler(ctx).done(stage)
    demo.run_stages([stage], ctx)
    assert _calls(calls) == []


def test_failure_names_stage_and_log_and_stops(tmp_path):
    ctx = demo.Context(out=str(tmp_path / "out"), data=str(tmp_path / "data"))
    calls = str(tmp_path / "calls.txt")
    stages = [_touch_stage("a", calls), _touch_stage("teacher", calls, code=3)]
    stages.append(_touch_stage("c", calls))
    with pytest.raises(demo.StageError) as err:
        demo.run_stages(stages, ctx)
    message = str(err.value)
    assert "stage 'teacher' failed (exit code 3)" in message
    assert os.path.join("logs", "teacher.log") in message
    assert "--only teacher" in message
    assert _calls(calls) == ["a", "teacher"]  # c never ran
    assert not os.path.exists(tmp_path / "out" / "stamps" / "teacher.json")
    partial = json.load(open(tmp_path / "out" / "stamps" / "teacher.partial.json"))
    assert partial["seconds"] > 0
    # A later success counts the failed attempt's time too, and drops the partial record.
    stages[1] = _touch_stage("teacher", calls)
    demo.run_stages(stages, ctx)
    stamp = json.load(open(tmp_path / "out" / "stamps" / "teacher.json"))
    assert stamp["seconds"] >= round(partial["seconds"], 1)
    assert not os.path.exists(tmp_path / "out" / "stamps" / "teacher.partial.json")
    assert _calls(calls) == ["a", "teacher", "teacher", "c"]
    assert "hello from teacher" in open(tmp_path / "out" / "logs" / "teacher.log").read()


def test_main_reports_failure_with_exit_code_1(tmp_path, capsys, monkeypatch):
    calls = str(tmp_path / "calls.txt")
    monkeypatch.setattr(run_demo, "demo_jobs", lambda ctx: [_touch_stage("spm", calls, code=2)])
    rc = run_demo.main(["--out", str(tmp_path / "out"), "--data", str(tmp_path / "data")])
    assert rc == 1
    assert "FAILED: stage 'spm' failed (exit code 2)" in capsys.readouterr().err


def test_disabled_baseline_is_not_run(tmp_path):
    ctx = demo.Context(out=str(tmp_path), data=str(tmp_path), baseline=False)
    stages = {s.name: s for s in demo.demo_jobs(ctx)}
    assert "baseline" not in stages
    assert "fullsum_kd" in stages
    assert demo._students(ctx) == ["fullsum_kd", "hard_kd"]


def test_demo_commands_point_at_out_and_data(tmp_path):
    data = tmp_path / "d"
    (data / "spm").mkdir(parents=True)
    (data / "spm" / "spm.vocab").write_text("".join(f"p{i}\t0\n" for i in range(37)))
    ctx = demo.Context(out="/o", data=str(data), extra_gin=("/x/tiny.gin",))
    stages = {s.name: s for s in demo.demo_jobs(ctx)}
    assert list(stages) == [
        "corpus",
        "spm",
        "records",
        "respoken",
        "teacher",
        "teacher_eval",
        "pseudo_labels",
        "fullsum_kd",
        "hard_kd",
        "baseline",
        "student_eval",
        "export",
        "summary",
    ]
    (kd,) = stages["fullsum_kd"].argv_lists()
    assert "--gin_file=gin/fullsum_kd.gin" in kd and "--model_dir=/o/fullsum_kd" in kd
    assert "--gin_bindings=PSEUDO_LABEL_RECORDS = '/o/pseudo/*.tfrecord'" in kd
    assert "--gin_bindings=PSEUDO_LABEL_DEV_RECORDS = '/o/pseudo-dev/*.tfrecord'" in kd
    assert f"--gin_bindings=SPM_MODEL = '{data}/spm/spm.model'" in kd
    assert "--gin_bindings=VOCAB_SIZE = 37" in kd
    # Extra gin files come after the demo's own, before the data bindings.
    assert kd.index("--gin_file=/x/tiny.gin") > kd.index("--gin_file=gin/demo/fullsum_kd.gin")
    (base,) = stages["baseline"].argv_lists()
    assert not any("PSEUDO_LABEL_RECORDS" in a for a in base)
    # Every shard of train-unlabeled, whatever their number.
    (pseudo,) = stages["pseudo_labels"].argv_lists()
    assert f"--input_pattern={data}/records/train-unlabeled-*.tfrecord" in pseudo
    export = stages["export"].argv_lists()
    assert export[0][1].endswith("bin/export") and "--output=/o/export/saved_model/1" in export[0]
    assert [c for c in export[3] if c.startswith("--tflite=")] == [
        "--tflite=/o/export/student_whole_float32.tflite",
        "--tflite=/o/export/student_streaming_float32.tflite",
        "--tflite=/o/export/student_whole_dynamic_int8.tflite",
        "--tflite=/o/export/student_streaming_dynamic_int8.tflite",
    ]
    for name in ("teacher", "fullsum_kd", "hard_kd", "baseline"):
        gin_files = [a.split("=", 1)[1] for a in stages[name].argv_lists()[0] if "gin_file" in a]
        for path in gin_files[:-1]:
            assert os.path.exists(os.path.join(REPO, path)), path


def _gin_settings(argv, *keys):
    """What each key resolves to after parsing argv's gin flags strictly (as bin/train does)."""
    files = [a.split("=", 1)[1] for a in argv if a.startswith("--gin_file=")]
    bindings = [a.split("=", 1)[1] for a in argv if a.startswith("--gin_bindings=")]
    return gin_settings(files, bindings, keys)


def test_kd_students_mix_labelled_ground_truth_into_pseudo_labels(tmp_path):
    """The paper's regime: KD students see the ground truth of train-labeled and its respoken
    renditions and the teacher's labels of train-unlabeled, each in proportion to its sentences
    (small corpus: 5,000 and 4,000); the no-KD student sees the ground truth alone."""
    data = tmp_path / "d"
    (data / "spm").mkdir(parents=True)
    (data / "spm" / "spm.vocab").write_text("".join(f"p{i}\t0\n" for i in range(37)))
    ctx = demo.Context(out="/o", data=str(data))
    stages = {s.name: s for s in demo.demo_jobs(ctx)}
    labelled = [
        f"{data}/records/train-labeled-*.tfrecord",
        f"{data}/records/train-respoken-*.tfrecord",
    ]
    for name, nbest in (("fullsum_kd", 4), ("hard_kd", 1)):
        (argv,) = stages[name].argv_lists()
        dataset_fn, *values = _gin_settings(
            argv,
            "train.train_dataset_fn",
            "mixed_label_dataset.labeled_file_pattern",
            "mixed_label_dataset.file_pattern",
            "mixed_label_dataset.labeled_share",
            "%GT_WEIGHT",
            "train_data/make_dataset.nbest_size",
        )
        assert dataset_fn.selector == "mixed_label_dataset", name
        share = values.pop(2)
        assert values == [labelled, "/o/pseudo/*.tfrecord", 1.0, nbest], name
        assert share == pytest.approx(5000 / 9000, abs=1e-4), name
    (argv,) = stages["baseline"].argv_lists()
    dataset_fn, pattern = _gin_settings(
        argv, "train.train_dataset_fn", "train_data/make_dataset.file_pattern"
    )
    assert dataset_fn.scoped_selector == "train_data/make_dataset" and pattern == labelled


def _write(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f)


def test_summary_table_and_json(tmp_path, capsys):
    ctx = demo.Context(out=str(tmp_path), data=str(tmp_path))
    wers = {"teacher": (40.0, 42.0), "fullsum_kd": (50.0, 45.0), "baseline": (60.0, 60.0)}
    for name, (dev, test) in wers.items():
        _write(ctx.path(name, "eval", "dev.json"), {"wer": dev, "step": 7, "utterances": 64})
        _write(ctx.path(name, "eval", "test.json"), {"wer": test, "step": 7, "utterances": 32})
    _write(ctx.path("pseudo", "manifest.json"), {"teacher_wer": 41.5, "utterances": 20, "nbest": 4})
    _write(
        os.path.join(ctx.data, "records", "train-labeled.manifest.json"), {"num_utterances": 5000}
    )
    datasets = {
        "teacher": "train_data/make_dataset",
        "fullsum_kd": "mixed_label_dataset",
        "baseline": "train_data/make_dataset",
    }
    _write(
        os.path.join(ctx.data, "records", "train-respoken.manifest.json"), {"num_utterances": 10000}
    )
    for name, dataset in datasets.items():
        # The teacher read the respoken renditions too: their utterances count as labelled.
        respoken = "train_data/make_dataset.file_pattern = ['r/train-respoken-*.tfrecord']\n"
        with open(ctx.path(name, "operative_config.gin"), "w") as f:
            f.write(
                f"BATCH_SIZE = 16\n\n# Parameters for train:\ntrain.train_dataset_fn = @{dataset}\n"
                + (respoken if name == "teacher" else "")
            )
    row = {
        "model": "student_whole_float32.tflite",
        "kind": "whole",
        "wer": 45.0,
        "keras_wer": 45.0,
        "wer_diff": 0.0,
        "rtf_1_thread": 0.01,
        "size_bytes": 2_000_000,
        "utterances": 10,
    }
    _write(ctx.path("export", "tflite_eval.json"), [row])
    _write(ctx.path("stamps", "teacher.json"), {"stage": "teacher", "seconds": 60.0})
    _write(ctx.path("stamps", "corpus.json"), {"stage": "corpus", "seconds": 5.0})
    # a summary stamp from an earlier invocation is not a stage of the run
    _write(ctx.path("stamps", "summary.json"), {"job": "summary", "seconds": 0.5})
    demo_report.write_summary(ctx)

    summary = json.load(open(tmp_path / "summary.json"))
    by = {r["model"]: r for r in summary["wer"]}
    assert set(by) == {"teacher", "fullsum_kd", "baseline"}  # hard_kd has no eval: no row
    assert by["fullsum_kd"]["test_rel_wer_reduction_vs_baseline"] == pytest.approx(0.25)
    assert by["fullsum_kd"]["dev_rel_wer_reduction_vs_baseline"] == pytest.approx(1 / 6)
    assert "test_rel_wer_reduction_vs_baseline" not in by["teacher"]
    assert list(summary["stage_seconds"].items()) == [("corpus", 5.0), ("teacher", 60.0)]
    assert summary["pseudo_labels"]["teacher_wer"] == 41.5
    assert [r["model"] for r in summary["wer"]] == ["teacher", "fullsum_kd", "baseline"]
    assert by["teacher"]["trained_on"] == "15,000 labelled"
    assert by["teacher"]["training_utterances"] == {"labelled": 15000}
    assert by["baseline"]["trained_on"] == "5,000 labelled"
    assert by["fullsum_kd"]["trained_on"] == "5,000 labelled + 20 pseudo-labelled"
    assert by["fullsum_kd"]["training_utterances"] == {"labelled": 5000, "pseudo_labelled": 20}
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    header = (
        "| model | trained on | step | dev WER % | test WER % | rel. WER red. vs no-KD (test) |"
    )
    assert (
        lines[lines.index(header) + 2]
        == "| teacher (Conformer) | 15,000 labelled | 7 | 40.00 | 42.00 | – |"
    )
    assert (
        "| student: full-sum KD | 5,000 labelled + 20 pseudo-labelled "
        "| 7 | 50.00 | 45.00 | +25.0% |" in lines
    )
    assert "| student: no KD (ground truth) | 5,000 labelled | 7 | 60.00 | 60.00 | – |" in lines
    assert (
        "Trained on: labelled = the ground truth of train-labeled (and of its respoken "
        "renditions, where the run read them); pseudo-labelled = the "
        "teacher's hypotheses on train-unlabeled, whose transcripts no model trains on."
    ) in lines
    assert "| student_whole_float32.tflite | 45.00 | 45.00 | +0.00 | 0.0100 | 2.00 |" in printed
    assert "WER over the first 64 dev and 32 test utterances." in printed
    assert "teacher 1-best WER 41.50% on 20 train-unlabeled utterances" in printed
    assert open(tmp_path / "summary.md").read().strip() == printed.strip()


def _num_records(pattern):
    import tensorflow as tf

    files = sorted(tf.io.gfile.glob(str(pattern)))
    assert files, pattern
    return sum(1 for _ in tf.data.TFRecordDataset(files))


def _operative_config(model_dir):
    """`{parameter or macro: value text}` of a run's operative_config.gin, macros resolved."""
    settings = {}
    # gin wraps a long value onto the next line after ` \`.
    text = (model_dir / "operative_config.gin").read_text().replace(" \\\n    ", " ")
    for line in text.splitlines():
        if " = " in line and not line.startswith(("#", " ")):
            key, value = line.split(" = ", 1)
            settings[key] = value
    for key, value in settings.items():
        while value.startswith("%"):
            value = settings[value[1:]]
        settings[key] = value
    return settings


@pytest.mark.slow
def test_tiny_demo_end_to_end(tmp_path):
    """The real stages and CLIs on the tiny corpus with tiny models, then a resumed rerun."""
    out, data = tmp_path / "out", tmp_path / "data"
    argv = ["--out", str(out), "--data", str(data), "--size", "tiny"]
    argv += ["--gin_file", os.path.join(REPO, "gin", "demo", "tiny.gin")]
    assert run_demo.main(argv) == 0

    summary = json.load(open(out / "summary.json"))
    assert {r["model"] for r in summary["wer"]} == {"teacher", "fullsum_kd", "hard_kd", "baseline"}
    for row in summary["wer"]:
        assert row["step"] == 4 and 0 <= row["dev_wer"] and 0 <= row["test_wer"]
    # Pseudo-labels cover every utterance of train-unlabeled (tiny: 8, in fewer shards than 8).
    unlabeled = json.load(open(data / "records" / "train-unlabeled.manifest.json"))
    assert unlabeled["num_utterances"] == _num_records(
        data / "records" / "train-unlabeled-*.tfrecord"
    )
    assert _num_records(out / "pseudo" / "*.tfrecord") == unlabeled["num_utterances"] == 8
    assert summary["pseudo_labels"]["utterances"] == 8
    # KD students mix the labelled ground truth (train-labeled and its respoken renditions) into
    # the pseudo-labels; the no-KD one learns from the same labelled audio alone.
    records = data / "records"
    labelled = sum(
        json.load(open(records / f"{split}.manifest.json"))["num_utterances"]
        for split in ("train-labeled", "train-respoken")
    )
    assert labelled == 16 * 3  # tiny: 16 labelled sentences in three voices
    both = "[%TRAIN_RECORDS, %RESPOKEN_RECORDS]"
    for name in ("fullsum_kd", "hard_kd", "baseline"):
        operative = _operative_config(out / name)
        assert operative["TRAIN_RECORDS"] == repr(str(records / "train-labeled-*.tfrecord"))
        assert operative["RESPOKEN_RECORDS"] == repr(str(records / "train-respoken-*.tfrecord"))
    for name in ("fullsum_kd", "hard_kd"):
        operative = _operative_config(out / name)
        assert operative["train.train_dataset_fn"] == "@mixed_label_dataset", name
        assert operative["mixed_label_dataset.labeled_file_pattern"] == both, name
        assert operative["mixed_label_dataset.file_pattern"] == repr(
            str(out / "pseudo" / "*.tfrecord")
        )
    operative = _operative_config(out / "baseline")
    assert operative["train.train_dataset_fn"] == "@train_data/make_dataset"
    assert operative["train_data/make_dataset.file_pattern"] == both
    assert not any(k.startswith(("mixed_label_dataset.", "PSEUDO_LABEL")) for k in operative)
    by = {r["model"]: r for r in summary["wer"]}
    assert summary["wer"][0]["model"] == "teacher"
    assert by["teacher"]["trained_on"] == f"{labelled} labelled"
    assert by["baseline"]["trained_on"] == f"{labelled} labelled"
    for name in ("fullsum_kd", "hard_kd"):
        assert by[name]["trained_on"] == f"{labelled} labelled + 8 pseudo-labelled"
    table = (out / "summary.md").read_text()
    assert f"| student: hard KD | {labelled} labelled + 8 pseudo-labelled | 4 |" in table
    kinds = sorted((t["model"], t["kind"]) for t in summary["tflite"])
    assert [k for _, k in kinds] == ["streaming", "streaming", "whole", "whole"]
    assert len(summary["saved_model"]) == 1
    assert os.path.exists(out / "export" / "saved_model" / "1" / "saved_model.pb")
    stages = set(summary["stage_seconds"])
    assert {"teacher", "pseudo_labels", "fullsum_kd", "export"} <= stages

    # Everything is done: a second run only rewrites the summary.
    before = os.path.getmtime(out / "stamps" / "teacher.json")
    assert run_demo.main(argv) == 0
    assert os.path.getmtime(out / "stamps" / "teacher.json") == before
