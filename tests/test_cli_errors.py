"""Invalid arguments and one-line exits (issue 21 items 9, 14, 16): bin/ scripts exit 2 with one
message for expected failures and keep tracebacks for bugs."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from training_records import write_tiny_records

from tfkd import cli, config
from tfkd.losses import rnnt_loss
from tfkd.training import loop, trainers

ROOT = config.REPO_DIR


# ---- tfkd.cli: what counts as expected ---------------------------------------------------------


def _raise_from_tfkd(error):
    trainers.check_number("train.num_steps", error, minimum=1, integer=True)


def test_expected_failures_become_one_line_and_exit_2(capsys, monkeypatch):
    monkeypatch.delenv("TFKD_TRACEBACK", raising=False)

    def main(argv):
        _raise_from_tfkd(-5)

    assert cli.run(main, "bin/x") == cli.EXIT_USAGE == 2
    assert capsys.readouterr().err == (
        "bin/x: train.num_steps must be >= 1, got -5 (expected an integer): fix the gin binding "
        "train.num_steps (or the macro it references)\n"
    )

    def usage(argv):
        raise cli.UsageError("pass --model_dir")

    assert cli.run(usage, "bin/x") == 2
    assert capsys.readouterr().err == "bin/x: pass --model_dir\n"


def test_file_errors_are_expected_wherever_raised(tmp_path, capsys):
    def main(argv):
        open(tmp_path / "missing.txt").read()  # raised by the standard library

    assert cli.run(main, "bin/x") == 2
    assert "No such file or directory" in capsys.readouterr().err

    def tf_missing(argv):
        tf.io.gfile.GFile(str(tmp_path / "missing.txt")).read()

    assert cli.run(tf_missing, "bin/x") == 2
    assert capsys.readouterr().err.startswith("bin/x: ")


def test_system_exit_with_a_message_is_expected_and_a_code_passes_through(capsys):
    def tool(argv):
        raise SystemExit("unknown probes ['x']; see --list")

    assert cli.run(tool, "tools/x.py") == 2
    assert capsys.readouterr().err == "tools/x.py: unknown probes ['x']; see --list\n"

    def exits(argv):
        sys.exit(3)

    with pytest.raises(SystemExit) as stop:
        cli.run(exits, "tools/x.py")
    assert stop.value.code == 3


def test_check_at_least_names_the_flag():
    cli.check_at_least("--jobs", None, 1)  # an unset optional flag
    cli.check_at_least("--jobs", 1, 1)
    with pytest.raises(cli.UsageError, match=r"^--jobs must be >= 1, got 0$"):
        cli.check_at_least("--jobs", 0, 1)
    with pytest.raises(cli.UsageError, match=r"^--seconds must be >= 0, got nan$"):
        cli.check_at_least("--seconds", float("nan"), 0)


def test_bugs_keep_their_traceback(monkeypatch):
    monkeypatch.delenv("TFKD_TRACEBACK", raising=False)

    def value_error_outside_tfkd(argv):  # raised in this test file: not one of tfkd's checks
        raise ValueError("shapes (3,) and (4,) not aligned")

    with pytest.raises(ValueError, match="not aligned"):
        cli.run(value_error_outside_tfkd, "bin/x")

    def key_error(argv):  # only gin's KeyErrors (unknown names) are checks
        return {}["missing"]

    with pytest.raises(KeyError):
        cli.run(key_error, "bin/x")

    def runtime_error(argv):
        raise RuntimeError("bug")

    with pytest.raises(RuntimeError):
        cli.run(runtime_error, "bin/x")
    monkeypatch.setenv("TFKD_TRACEBACK", "1")
    with pytest.raises(ValueError, match="train.num_steps"):
        cli.run(lambda argv: _raise_from_tfkd(-5), "bin/x")


# ---- argument checks (items 9 and 14) ----------------------------------------------------------


def _unused(*args, **kwargs):
    raise AssertionError("train() must check its arguments before building anything")


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"num_steps": -5}, r"train.num_steps must be >= 1, got -5 \(expected an integer\)"),
        ({"num_steps": 0}, r"train.num_steps must be >= 1, got 0"),
        (
            {"num_steps": "four"},
            r"train.num_steps must be >= 1, got 'four' \(expected an integer, not str\): fix the "
            r"gin binding train.num_steps",
        ),
        ({"num_steps": 2.5}, r"train.num_steps must be >= 1, got 2.5 \(expected an integer"),
        ({"global_batch_size": 0}, r"train.global_batch_size must be >= 1, got 0"),
        ({"eval_every": -1}, r"train.eval_every must be >= 0, got -1"),
        ({"checkpoint_every": 0}, r"train.checkpoint_every must be >= 1, got 0"),
        ({"summary_every": -100}, r"train.summary_every must be >= 1, got -100"),
        ({"keep_checkpoints": 0}, r"train.keep_checkpoints must be >= 1, got 0"),
    ],
)
def test_train_rejects_invalid_counts_before_any_work(tmp_path, overrides, message):
    kwargs = dict(
        model_fn=_unused,
        train_dataset_fn=_unused,
        global_batch_size=4,
        num_steps=10,
        trainer_fn=_unused,
        optimizer_fn=_unused,
    )
    kwargs.update(overrides)
    with pytest.raises(ValueError, match=message):
        loop.train(str(tmp_path / "run"), **kwargs)
    assert not (tmp_path / "run").exists()


def test_negative_fastemit_lambda_is_rejected():
    with pytest.raises(
        ValueError,
        match=r"SupervisedTrainer.fastemit_lambda must be >= 0, got -1 \(expected a number\): "
        r"fix the gin binding SupervisedTrainer.fastemit_lambda",
    ):
        trainers.SupervisedTrainer(
            None,
            None,
            strategy=tf.distribute.get_strategy(),
            global_batch_size=2,
            fastemit_lambda=-1,
        )
    rng = np.random.default_rng(0)
    logits = tf.constant(rng.normal(size=[1, 3, 3, 4]), tf.float32)
    args = (logits, tf.constant([[1, 2]]), tf.constant([3]), tf.constant([2]))
    with pytest.raises(ValueError, match=r"rnnt_loss: fastemit_lambda must be >= 0, got -1.0"):
        rnnt_loss(*args, fastemit_lambda=-1.0)
    with pytest.raises(tf.errors.InvalidArgumentError, match="fastemit_lambda must be >= 0"):
        rnnt_loss(*args, fastemit_lambda=tf.constant(-1.0))
    assert float(rnnt_loss(*args, fastemit_lambda=0.5)[0]) > 0


def test_invalid_trainer_weights_name_the_binding():
    strategy = tf.distribute.get_strategy()
    with pytest.raises(ValueError, match=r"SupervisedTrainer.clip_norm must be > 0, got 0"):
        trainers.SupervisedTrainer(
            None, None, strategy=strategy, global_batch_size=2, clip_norm=0.0
        )
    with pytest.raises(ValueError, match=r"SupervisedTrainer.loss_weights\['rnnt'\] must be >= 0"):
        trainers.SupervisedTrainer(
            None, None, strategy=strategy, global_batch_size=2, loss_weights={"rnnt": -1.0}
        )


# ---- bin/ scripts: exit 2 with one line (items 14, 16) -----------------------------------------


def _bin(name, *args):
    return [sys.executable, os.path.join(ROOT, "bin", name), *args]


def test_bin_scripts_exit_2_with_one_line(tmp_path):
    pattern = write_tiny_records(str(tmp_path / "records"), num_files=1, per_file=2)
    missing = str(tmp_path / "no_run")
    commands = {
        "train": _bin(
            "train",
            "--gin_file=gin/test/tiny.gin",
            f"--gin_bindings=TRAIN_RECORDS = '{pattern}'",
            "--gin_bindings=train.num_steps = -5",
            f"--model_dir={tmp_path / 'run'}",
        ),
        "evaluate": _bin("evaluate", f"--model_dir={missing}", "--records=data/x-*.tfrecord"),
        "evaluate_nothing": _bin(
            "evaluate", f"--model_dir={missing}", f"--records=test={tmp_path}/none-*.tfrecord"
        ),
        "export": _bin("export", f"--model_dir={missing}", f"--output={tmp_path / 'e' / '1'}"),
        "pseudo_label": _bin(
            "pseudo_label", f"--teacher_dir={missing}", f"--output_dir={tmp_path / 'p'}"
        ),
        "convert_tflite": _bin(
            "convert_tflite", f"--model_dir={missing}", f"--output_dir={tmp_path / 't'}"
        ),
    }
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("TFKD_TRACEBACK", None)
    # In parallel: each pays for importing TensorFlow.
    procs = {
        name: subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for name, argv in commands.items()
    }
    results = {name: (p.communicate(timeout=600), p.returncode) for name, p in procs.items()}
    last = {}
    for name, ((_, err), rc) in results.items():
        assert rc == 2, (name, err[-3000:])
        assert "Traceback" not in err, (name, err[-3000:])
        last[name] = err.strip().splitlines()[-1]
    assert last["train"] == (
        "bin/train: train.num_steps must be >= 1, got -5 (expected an integer): fix the gin "
        "binding train.num_steps (or the macro it references)"
    )
    assert last["evaluate"] == (
        "bin/evaluate: --records=data/x-*.tfrecord: expected --records=SPLIT=PATTERN, e.g. "
        "--records='test=data/records/test-*.tfrecord'"
    )
    assert last["evaluate_nothing"] == (
        f"bin/evaluate: --records=test={tmp_path}/none-*.tfrecord matches no file"
    )
    for name in ("export", "pseudo_label", "convert_tflite"):
        assert last[name].startswith(f"bin/{name}: "), last[name]
    # The missing run is named with the command that makes it (tfkd.trained_model's message).
    stderr = results["export"][0][1]
    assert f"gin config {missing}/operative_config.gin not found: train the model first" in stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "e").exists()
