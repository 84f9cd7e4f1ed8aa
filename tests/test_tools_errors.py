"""One-line errors from `tools/` (issue 21 item 16): an expected failure is `tools/NAME.py: message`
on stderr and exit code 2, never a traceback.

Each tool runs in this process as `python tools/NAME.py ARGS` would (its `__main__` block, with
`sys.argv` set): a subprocess would pay seconds for every TensorFlow import.
"""

import os
import runpy
import sys

import pytest
from tool_scripts import load_tool

from tfkd.study.jobs import Job

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(name, args, monkeypatch, capsys):
    """`(exit code, stderr)` of `python tools/NAME.py ARGS`."""
    path = os.path.join(REPO, "tools", f"{name}.py")
    monkeypatch.delenv("TFKD_TRACEBACK", raising=False)
    monkeypatch.setattr(sys, "argv", [path, *args])
    monkeypatch.setattr(sys, "path", list(sys.path))  # the tools prepend the repository
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(path, run_name="__main__")
    return stop.value.code, capsys.readouterr().err


def _one_line(err):
    assert "Traceback" not in err, err
    assert err.endswith("\n") and err.count("\n") == 1, err
    return err.rstrip("\n")


def test_make_corpus_bad_jobs(tmp_path, monkeypatch, capsys):
    # Refused before the TTS engine check, which may install packages.
    code, err = _run("make_corpus", [str(tmp_path / "c"), "--jobs", "0"], monkeypatch, capsys)
    assert code == 2
    assert _one_line(err) == "tools/make_corpus.py: --jobs must be >= 1, got 0"
    assert not (tmp_path / "c").exists()


def test_train_spm_missing_input(tmp_path, monkeypatch, capsys):
    missing = str(tmp_path / "lines.txt")
    args = [missing, "--output_prefix", str(tmp_path / "spm" / "spm")]
    code, err = _run("train_spm", args, monkeypatch, capsys)
    assert code == 2
    assert _one_line(err) == (
        f"tools/train_spm.py: {missing}: no such file or directory (INPUT is a LibriSpeech-layout "
        "directory or a text file)"
    )


def test_compute_feature_stats_pattern_matching_nothing(tmp_path, monkeypatch, capsys):
    pattern = str(tmp_path / "train-*.tfrecord")
    args = [pattern, str(tmp_path / "stats.json")]
    code, err = _run("compute_feature_stats", args, monkeypatch, capsys)
    assert code == 2
    assert _one_line(err) == (
        f"tools/compute_feature_stats.py: no TFRecord files match ['{pattern}']"
    )


def test_run_demo_unknown_stage_deletes_nothing(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    out.mkdir()
    args = ["--out", str(out), "--data", str(tmp_path / "data"), "--fresh", "--only", "teachr"]
    code, err = _run("run_demo", args, monkeypatch, capsys)
    assert code == 2
    assert _one_line(err) == (
        "tools/run_demo.py: --only=teachr: unknown stage; stages: corpus, spm, records, "
        "respoken, teacher, teacher_eval, pseudo_labels, fullsum_kd, hard_kd, baseline, "
        "student_eval, export, summary"
    )
    assert out.exists()  # --fresh did not delete OUT for a typo


def test_run_demo_failed_stage_is_one_line_naming_its_log(tmp_path, monkeypatch, capsys):
    run_demo = load_tool("run_demo")
    fail = [sys.executable, "-c", "raise SystemExit(3)"]
    monkeypatch.setattr(run_demo, "demo_jobs", lambda ctx: [Job("spm", [fail])])
    out = str(tmp_path / "out")
    assert run_demo.main(["--out", out, "--data", str(tmp_path / "data")]) == 1
    log = os.path.join(out, "logs", "spm.log")
    assert _one_line(capsys.readouterr().err) == (
        f"[demo] FAILED: stage 'spm' failed (exit code 3) running: {' '.join(fail)}; log: {log}; "
        f"rerun: python tools/run_demo.py --out {out} --data {tmp_path / 'data'} --only spm"
    )


def test_run_demo_later_stage_without_data_names_the_data_stages(tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    args = ["--out", str(tmp_path / "out"), "--data", str(data), "--only", "teacher"]
    code, err = _run("run_demo", args, monkeypatch, capsys)
    assert code == 2
    assert _one_line(err) == (
        f"tools/run_demo.py: no SentencePiece vocabulary {data}/spm/spm.vocab: run the data "
        f"stages first (python tools/run_demo.py --data {data} --only corpus, then --only spm)"
    )


def test_run_study_bad_parallel(monkeypatch, capsys):
    code, err = _run("run_study", ["--preset", "tiny", "--parallel", "0"], monkeypatch, capsys)
    assert code == 2
    assert _one_line(err) == "tools/run_study.py: --parallel must be >= 1, got 0"


def test_run_study_unknown_preset_names_the_presets(monkeypatch, capsys):
    code, err = _run("run_study", ["--preset", "smal", "--dry_run"], monkeypatch, capsys)
    assert code == 2
    assert _one_line(err) == (
        "tools/run_study.py: --preset smal: no gin/papers/fullsum_kd_icassp2023/smal.gin "
        "(presets: librispeech, small, tiny; or a gin file)"
    )


def test_recipe_probes_unknown_probe(monkeypatch, capsys):
    code, err = _run("recipe_probes", ["teacher_typo"], monkeypatch, capsys)
    assert code == 2
    assert _one_line(err) == "tools/recipe_probes.py: unknown probes ['teacher_typo']; see --list"


def test_plot_curves_run_without_history(tmp_path, monkeypatch, capsys):
    bare, other = tmp_path / "bare", tmp_path / "other"
    bare.mkdir()
    other.mkdir()
    args = [f"--run=a={bare}", f"--run=b={other}", f"--output={tmp_path / 'c.png'}"]
    code, err = _run("plot_curves", args, monkeypatch, capsys)
    assert code == 2
    line = _one_line(err)  # both runs named, on one line
    assert line.startswith(f"tools/plot_curves.py: a: no records in {bare}{os.sep}")
    assert f"; b: no records in {other}{os.sep}" in line and "train.eval_every" in line
    assert not (tmp_path / "c.png").exists()


def test_tflite_eval_missing_tflite_file(tmp_path, monkeypatch, capsys):
    missing = str(tmp_path / "student_whole_float32.tflite")
    args = [f"--model_dir={tmp_path / 'run'}", f"--tflite={missing}"]
    code, err = _run("tflite_eval", args, monkeypatch, capsys)
    assert code == 2
    assert _one_line(err) == (
        f"tools/tflite_eval.py: --tflite={missing}: no such file (bin/convert_tflite "
        "--model_dir=... --output_dir=... makes it)"
    )


def test_serving_request_bad_token_ids(tmp_path, monkeypatch, capsys):
    audio = str(tmp_path / "a.wav")
    args = [audio, "--signature", "score_hypotheses"]
    code, err = _run("serving_request", args, monkeypatch, capsys)
    assert code == 2
    assert _one_line(err) == (
        "tools/serving_request.py: --signature=score_hypotheses needs --token_ids='[[ids...], ...]'"
    )
    code, err = _run("serving_request", [*args, "--token_ids", "[[1, 2"], monkeypatch, capsys)
    assert code == 2
    assert _one_line(err).startswith("tools/serving_request.py: --token_ids is not JSON (")


def test_bench_rnnt_loss_bad_shape(monkeypatch, capsys):
    code, err = _run("bench_rnnt_loss", ["--shapes", "4,300"], monkeypatch, capsys)
    assert code == 2
    assert _one_line(err) == (
        "tools/bench_rnnt_loss.py: --shapes 4,300: expected B,T,U+1,V, four integers >= 1"
    )


def test_bench_kd_step_bad_repeats(monkeypatch, capsys):
    code, err = _run("bench_kd_step", ["--repeats", "0"], monkeypatch, capsys)
    assert code == 2
    assert _one_line(err) == "tools/bench_kd_step.py: --repeats must be >= 1, got 0"


def test_bench_input_pipeline_without_records_names_the_data_stages(tmp_path, monkeypatch, capsys):
    code, err = _run("bench_input_pipeline", ["--data", str(tmp_path)], monkeypatch, capsys)
    assert code == 2
    assert _one_line(err) == (
        f"tools/bench_input_pipeline.py: no records match {tmp_path}/records/train-labeled-*"
        ".tfrecord: make them with make demo's data stages (python tools/run_demo.py --only "
        "records, then --only respoken)"
    )


def test_argparse_errors_keep_their_usage_and_exit_2(monkeypatch, capsys):
    code, err = _run("bench_kd_step", ["--student", "nope"], monkeypatch, capsys)
    assert code == 2 and "invalid choice: 'nope'" in err and "Traceback" not in err
