"""tfkd.trained_model: restoring a run from its model directory, and export's import boundary."""

import os
import subprocess
import sys

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf
from tool_scripts import load_tool
from training_records import write_tiny_records

from tfkd import config, trained_model
from tfkd.data.tokenizer import train_sentencepiece
from tfkd.training import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = 16
TINY_STUDENT = """
train.model_fn = @lstm_student
lstm_student.vocab_size = 16
lstm_student.num_layers = 1
lstm_student.units = 16
lstm_student.frontend_units = 16
lstm_student.prediction_units = 16
lstm_student.prediction_embed_dim = 8
lstm_student.joint_dim = 16
lstm_student.dropout = 0.0
"""


def _save_run(model_dir, gin_text, step=7, seed=4, adam_slots=False):
    """A model directory as bin/train leaves it: `operative_config.gin` and a `ckpt-<step>`
    (with Adam's two slots per weight when `adam_slots`, as after a training step)."""
    os.makedirs(model_dir, exist_ok=True)
    path = os.path.join(model_dir, loop.OPERATIVE_CONFIG)
    with open(path, "w") as f:
        f.write(gin_text)
    try:
        config.parse_gin([path])
        keras.utils.set_random_seed(seed)
        model = gin.query_parameter("train.model_fn").scoped_configurable_fn()
    finally:
        gin.clear_config()
    model.build_by_calling(num_features=80)
    optimizer = keras.optimizers.Adam()
    if adam_slots:
        optimizer.build(model.trainable_variables)
    ckpt = tf.train.Checkpoint(
        model=model, optimizer=optimizer, step=tf.Variable(step, dtype=tf.int64)
    )
    tf.train.CheckpointManager(ckpt, model_dir, 1, checkpoint_name="ckpt").save(step)
    return model


def _assert_same_weights(a, b):
    assert len(a.weights) == len(b.weights)
    for x, y in zip(a.weights, b.weights, strict=True):
        np.testing.assert_array_equal(x.numpy(), y.numpy())


def test_export_never_imports_training_or_config():
    # Every tfkd module that tfkd/export names, including imports inside functions.
    code = r"""
import ast, importlib, pathlib, pkgutil, sys
import tfkd.export
names = {"tfkd.export." + m.name for m in pkgutil.iter_modules(tfkd.export.__path__)}
for path in pathlib.Path(tfkd.export.__path__[0]).glob("*.py"):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tfkd"):
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.startswith("tfkd"))
for name in sorted(names):
    try:
        importlib.import_module(name)
    except ModuleNotFoundError:
        importlib.import_module(name.rsplit(".", 1)[0])  # `from package import function`
print(sorted(names))
print(sorted(m for m in sys.modules if m.startswith(("tfkd.training", "tfkd.config", "gin"))))
"""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    imported, forbidden = proc.stdout.strip().splitlines()[-2:]
    assert "tfkd.export.tflite" in imported and "tfkd.decoding" in imported
    assert forbidden == "[]"


def test_front_end_is_the_one_bound_to_the_trainer_in_use(tmp_path, clean_gin):
    text = config.parse_gin(
        ["gin/test/tiny_fullsum_kd.gin"],
        [
            f"PSEUDO_LABEL_RECORDS = '{tmp_path}/pseudo/train-unlabeled-*.tfrecord'",
            "FullSumDistillationTrainer.frontend = @LogMel()",
            "LogMel.normalization = 'utterance'",
            # Not the trainer of this run: must not be read.
            "SupervisedTrainer.frontend = @supervised/LogMel()",
            "supervised/LogMel.num_mel_bins = 40",
        ],
    )
    gin.clear_config()
    saved = _save_run(str(tmp_path / "run"), text, step=6)

    restored = trained_model.load_trained_model(str(tmp_path / "run"))
    assert restored.trainer == "FullSumDistillationTrainer"
    assert restored.frontend.normalization == "utterance"
    assert restored.frontend.num_mel_bins == 80
    assert restored.frontend.built
    assert restored.step == 6 and restored.checkpoint.endswith("ckpt-6")
    _assert_same_weights(restored.model, saved)
    assert restored.tokenizer is None and restored.spm_model is None
    # The distilled student trained on pseudo-labels: those are its training records.
    assert restored.record_pattern("train") == f"{tmp_path}/pseudo/train-unlabeled-*.tfrecord"
    assert gin.config_str() == ""  # leaves no global configuration behind


def test_front_end_defaults_to_the_trainers_default(tmp_path, clean_gin):
    _save_run(str(tmp_path / "run"), TINY_STUDENT + "train.trainer_fn = @SupervisedTrainer\n")
    restored = trained_model.load_trained_model(str(tmp_path / "run"))
    assert restored.trainer == "SupervisedTrainer"
    assert restored.frontend.normalization == "none" and restored.frontend.num_mel_bins == 80


def test_records_are_found_from_a_real_operative_config(tmp_path, clean_gin):
    records = str(tmp_path / "records")
    train = write_tiny_records(records, "train", num_files=1, per_file=4, vocab_size=VOCAB)
    test = write_tiny_records(records, "test", num_files=1, per_file=2, vocab_size=VOCAB)
    model_dir = str(tmp_path / "run")
    # The pattern bound directly, not through TRAIN_RECORDS: gin keeps no macro for it.
    config.parse_gin(
        ["gin/test/tiny.gin"],
        [f"make_dataset.file_pattern = '{train}'", "NUM_STEPS = 1", "train.progress = False"],
    )
    config.train(model_dir)
    gin.clear_config()
    operative = open(os.path.join(model_dir, loop.OPERATIVE_CONFIG)).read()
    assert "_RECORDS" not in operative

    restored = trained_model.load_trained_model(model_dir)
    assert restored.step == 1 and restored.global_batch_size == 4
    assert restored.record_pattern("train") == train
    assert restored.record_pattern("test") == test  # next to the training records
    with pytest.raises(FileNotFoundError, match=r"split 'dev'.*dev-\*\.tfrecord"):
        restored.record_pattern("dev")


def test_records_and_sentencepiece_from_the_periodic_evaluator(tmp_path, clean_gin):
    spm = train_sentencepiece(["the cat sat", "a dog ran home"] * 5, str(tmp_path / "sp"), 20)
    data = str(tmp_path / "data")
    write_tiny_records(data, "test", num_files=1, per_file=1, vocab_size=VOCAB)
    write_tiny_records(str(tmp_path / "pseudo"), "train-unlabeled", 1, 1, VOCAB)
    # What an operative config of a distilled student with dev evaluation holds: the patterns
    # inlined into scoped datasets, no data macros.
    _save_run(
        str(tmp_path / "run"),
        TINY_STUDENT
        + f"""
train.trainer_fn = @FullSumDistillationTrainer
train.train_dataset_fn = @pseudo_label_dataset
pseudo_label_dataset.file_pattern = '{tmp_path}/pseudo/train-unlabeled-*.tfrecord'
pseudo_label_dataset.dataset_fn = @train_data/make_dataset
train.eval_fn = @WerEvaluator()
WerEvaluator.dataset_fn = @dev_data/make_dataset
WerEvaluator.spm_model = '{spm}'
dev_data/make_dataset.file_pattern = '{data}/dev-*.tfrecord'
""",
    )
    restored = trained_model.load_trained_model(str(tmp_path / "run"))
    assert restored.spm_model == spm
    assert restored.tokenizer.decode(restored.tokenizer.encode("a cat")) == "a cat"
    assert restored.record_patterns == {
        "dev": f"{data}/dev-*.tfrecord",
        "train": f"{tmp_path}/pseudo/train-unlabeled-*.tfrecord",
    }
    # The dev set's directory comes first; the pseudo-label directory holds no test split.
    assert restored.record_pattern("test") == f"{data}/test-*.tfrecord"
    # Explicit arguments win: gin files and bindings instead of the operative config.
    other = trained_model.load_trained_model(
        str(tmp_path / "run"),
        gin_files=[str(tmp_path / "run" / loop.OPERATIVE_CONFIG)],
        gin_bindings=["TEST_RECORDS = '/elsewhere/test-*.tfrecord'"],
    )
    assert other.record_pattern("test") == "/elsewhere/test-*.tfrecord"


def test_records_and_sentencepiece_from_the_dev_evaluator_of_an_eval_suite(tmp_path, clean_gin):
    spm = train_sentencepiece(["the cat sat", "a dog ran home"] * 5, str(tmp_path / "sp"), 20)
    # gin/eval/train_subset.gin's suite, patterns inlined: the first evaluator is the dev one.
    _save_run(
        str(tmp_path / "run"),
        TINY_STUDENT
        + f"""
train.train_dataset_fn = @train_data/make_dataset
train_data/make_dataset.file_pattern = '/data/train-*.tfrecord'
train.eval_fn = @EvalSuite()
EvalSuite.evaluators = [@WerEvaluator(), @train_subset/WerEvaluator()]
WerEvaluator.dataset_fn = @dev_data/make_dataset
WerEvaluator.spm_model = '{spm}'
dev_data/make_dataset.file_pattern = '/data/dev-*.tfrecord'
train_subset/WerEvaluator.dataset_fn = @train_subset_data/make_dataset
train_subset/WerEvaluator.split = 'train'
train_subset_data/make_dataset.file_pattern = '/data/train-*.tfrecord'
""",
    )
    restored = trained_model.load_trained_model(str(tmp_path / "run"))
    assert restored.spm_model == spm
    assert restored.record_patterns == {
        "dev": "/data/dev-*.tfrecord",
        "train": "/data/train-*.tfrecord",
    }


def test_clear_errors(tmp_path, clean_gin):
    run = str(tmp_path / "run")
    with pytest.raises(FileNotFoundError, match="(?s)operative_config.gin.*bin/train"):
        trained_model.load_trained_model(run)
    os.makedirs(run)
    with open(os.path.join(run, loop.OPERATIVE_CONFIG), "w") as f:
        f.write(TINY_STUDENT)
    with pytest.raises(FileNotFoundError, match=f"(?s)no checkpoint in {run}.*bin/train"):
        trained_model.load_trained_model(run)
    _save_run(run, TINY_STUDENT)
    with pytest.raises(FileNotFoundError, match="ckpt-99"):
        trained_model.load_trained_model(run, checkpoint=os.path.join(run, "ckpt-99"))
    with pytest.raises(FileNotFoundError, match="SentencePiece model /nowhere/sp.model"):
        trained_model.load_trained_model(run, spm_model="/nowhere/sp.model")
    with open(os.path.join(run, "no_model.gin"), "w") as f:
        f.write("train.num_steps = 3\n")
    with pytest.raises(ValueError, match="binds no train.model_fn"):
        trained_model.load_trained_model(run, gin_files=[os.path.join(run, "no_model.gin")])
    assert gin.config_str() == ""


def test_carry_weights_keeps_the_model_and_step_without_the_optimizer(tmp_path, clean_gin, capsys):
    run = str(tmp_path / "run")
    saved = _save_run(run, TINY_STUDENT + "train.trainer_fn = @SupervisedTrainer\n", 9, 4, True)
    tool = load_tool("carry_weights")
    assert tool.main([run]) == 0
    weights = os.path.join(run, "weights")
    assert sorted(os.listdir(weights)) == [
        "checkpoint", "ckpt-9.data-00000-of-00001", "ckpt-9.index"]  # fmt: skip
    assert f"ckpt-9 (step 9) -> {weights}/ckpt-9 (" in capsys.readouterr().out
    # Read like the run's own checkpoint, with the run's config.
    config_file = os.path.join(run, loop.OPERATIVE_CONFIG)
    restored = trained_model.load_trained_model(weights, gin_files=[config_file])
    assert restored.step == 9
    _assert_same_weights(restored.model, saved)

    # Adam's m and v are two more copies of every trainable weight.
    def size(d):
        return os.path.getsize(os.path.join(d, "ckpt-9.data-00000-of-00001"))

    assert size(weights) < 0.4 * size(run)
    assert tool.main([run, weights]) == 0  # again: still one checkpoint
    assert len(os.listdir(weights)) == 3


def test_carry_weights_of_a_run_without_a_checkpoint_is_one_message(tmp_path, capsys):
    from tfkd import cli

    tool = load_tool("carry_weights")
    assert cli.run(tool.main, "tools/carry_weights.py", [str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tools/carry_weights.py: gin config {tmp_path}/operative_config.gin "
                          "not found: train the model first")  # fmt: skip
