"""Trainer steps, the LR schedule, strict gin parsing and the train() root (single device)."""

import glob
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from training_records import write_tiny_records

from tfkd import config, features
from tfkd.data import pipeline, tokenizer
from tfkd.models import presets
from tfkd.training import loop, periodic_wer, schedules, trainers
from tfkd.training import strategy as strategy_lib

VOCAB = 16
B = 4


def tiny_model():
    return presets.lstm_student(
        VOCAB,
        num_layers=1,
        units=32,
        frontend_units=32,
        prediction_units=32,
        prediction_embed_dim=16,
        joint_dim=32,
        dropout=0.0,
    )


def fixed_batch(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "waveform": tf.constant(rng.normal(size=(B, 8000)).astype("float32") * 0.1),
        "num_samples": tf.constant([8000, 7000, 6000, 8000], tf.int32),
        "token_ids": tf.constant(rng.integers(1, VOCAB, size=(B, 5)), tf.int32),
        "label_length": tf.constant([5, 4, 3, 5], tf.int32),
    }


def make_trainer(optimizer=None, trainer_cls=trainers.SupervisedTrainer, **kwargs):
    strategy = tf.distribute.get_strategy()
    model = tiny_model()
    optimizer = optimizer or keras.optimizers.Adam(1e-2)
    kwargs.setdefault("jit_compile", False)
    trainer = trainer_cls(model, optimizer, strategy=strategy, global_batch_size=B, **kwargs)
    batch = fixed_batch()
    trainer.build(batch)
    iterator = iter(tf.data.Dataset.from_tensors(batch).repeat())
    return trainer, batch, iterator


def test_train_step_reduces_loss_and_reports_true_means():
    trainer, batch, iterator = make_trainer(clip_norm=5.0)
    before = trainer.loss_terms(batch, training=False)["rnnt"].numpy()
    first = trainer.train_step(iterator)
    assert set(first) == {"rnnt", "loss", "grad_norm"}
    # The logged value is the mean over the batch, not sum / global batch of one replica's share.
    np.testing.assert_allclose(float(first["rnnt"]), before.mean(), rtol=1e-5)
    assert float(first["grad_norm"]) > 5.0  # clipping was active on this step
    for _ in range(24):
        last = trainer.train_step(iterator)
    assert float(last["rnnt"]) < 0.6 * float(first["rnnt"])


def test_jit_compiled_step_matches_eager_step():
    # SGD, not Adam: Adam's normalisation would magnify rounding differences in tiny gradients.
    keras.utils.set_random_seed(1)
    eager, _, it_e = make_trainer(keras.optimizers.SGD(0.1), jit_compile=False)
    keras.utils.set_random_seed(1)
    xla, _, it_x = make_trainer(keras.optimizers.SGD(0.1), jit_compile=True)
    for _ in range(2):
        m_e, m_x = eager.train_step(it_e), xla.train_step(it_x)
    np.testing.assert_allclose(float(m_x["rnnt"]), float(m_e["rnnt"]), rtol=1e-4)
    for a, b in zip(eager.model.trainable_variables, xla.model.trainable_variables, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)


def test_label_bucket_trims_supervised_labels_without_changing_the_step():
    padded = dict(fixed_batch())
    padded["token_ids"] = tf.pad(padded["token_ids"], [[0, 0], [0, 11]])  # U = 16, longest is 5
    trimmed = trainers.trim_labels(padded, 4)
    assert trimmed["token_ids"].shape == (B, 8)
    np.testing.assert_array_equal(trimmed["token_ids"][:, :5], fixed_batch()["token_ids"])
    assert trainers.trim_labels(padded, 64)["token_ids"].shape == (B, 16)  # never grows
    with pytest.raises(ValueError, match="label_bucket must be a positive int"):
        make_trainer(label_bucket=0)
    runs = []
    for bucket in (None, 4):
        keras.utils.set_random_seed(3)
        trainer, _, _ = make_trainer(keras.optimizers.SGD(0.1), label_bucket=bucket)
        assert trainer.prepare_batch(padded)["token_ids"].shape == (B, 16 if bucket is None else 8)
        iterator = iter(tf.data.Dataset.from_tensors(padded).repeat())
        runs.append([float(trainer.train_step(iterator)["rnnt"]) for _ in range(2)])
    np.testing.assert_allclose(runs[1], runs[0], rtol=1e-5)


def test_clipping_bounds_the_update_to_clip_norm():
    # With SGD(lr=1) the update is the clipped gradient itself.
    trainer, _, iterator = make_trainer(keras.optimizers.SGD(1.0), clip_norm=0.01)
    before = [v.numpy() for v in trainer.trainable_variables]
    metrics = trainer.train_step(iterator)
    after = [v.numpy() for v in trainer.trainable_variables]
    update = np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(after, before, strict=True)))
    assert float(metrics["grad_norm"]) > 1.0
    np.testing.assert_allclose(update, 0.01, rtol=1e-3)


class HeadsModel(keras.Model):
    """Two heads on one input; the `unused` head gets None gradients."""

    def __init__(self):
        super().__init__(name="heads")
        self.used = keras.layers.Dense(1)
        self.unused = keras.layers.Dense(1)

    def call(self, x):
        return self.used(x), self.unused(x)


class _TwoTermTrainer(trainers.LossTermsTrainer):
    term_names = ("a", "b")

    def loss_terms(self, batch, training):
        used, _ = self.model(batch["x"])
        err = tf.squeeze(used, -1) - batch["y"]
        return {"a": err**2, "b": tf.abs(err)}


def test_weighted_terms_and_none_gradients_are_filtered():
    strategy = tf.distribute.get_strategy()
    model = HeadsModel()
    optimizer = keras.optimizers.SGD(0.1)
    trainer = _TwoTermTrainer(
        model,
        optimizer,
        strategy=strategy,
        global_batch_size=2,
        loss_weights={"b": 0.5},
        jit_compile=False,
    )
    batch = {"x": tf.constant([[1.0, 2.0], [3.0, 4.0]]), "y": tf.constant([1.0, -1.0])}
    model(batch["x"])
    optimizer.build(model.trainable_variables)
    terms = {k: v.numpy() for k, v in trainer.loss_terms(batch, False).items()}
    unused_before = [v.numpy() for v in model.unused.trainable_variables]
    metrics = trainer.train_step(iter(tf.data.Dataset.from_tensors(batch).repeat()))
    np.testing.assert_allclose(float(metrics["a"]), terms["a"].mean(), rtol=1e-6)
    np.testing.assert_allclose(float(metrics["b"]), terms["b"].mean(), rtol=1e-6)
    np.testing.assert_allclose(
        float(metrics["loss"]), (terms["a"] + 0.5 * terms["b"]).mean(), rtol=1e-6
    )
    for a, b in zip(unused_before, model.unused.trainable_variables, strict=True):
        np.testing.assert_array_equal(a, b.numpy())
    with pytest.raises(ValueError, match="unknown terms"):
        _TwoTermTrainer(
            model, optimizer, strategy=strategy, global_batch_size=2, loss_weights={"c": 1.0}
        )


def test_mixed_float16_step_keeps_float32_loss_and_variables():
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    try:
        optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam(1e-2))
        trainer, _, iterator = make_trainer(optimizer, clip_norm=5.0)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    first = trainer.train_step(iterator)
    # The first steps overflow at the initial scale 2^15 and are skipped while the scale halves.
    for _ in range(15):
        last = trainer.train_step(iterator)
    assert float(optimizer.dynamic_scale) < 2.0**15
    assert first["rnnt"].dtype == tf.float32
    assert all(v.dtype == "float32" for v in trainer.trainable_variables)
    assert np.isfinite(float(last["rnnt"])) and float(last["rnnt"]) < float(first["rnnt"])


def test_mixed_bfloat16_computes_in_bfloat16_and_learns():
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    try:
        trainer, batch, iterator = make_trainer(clip_norm=5.0)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    features, lengths = trainer.features(batch, training=False)
    logits = trainer.model(
        {"features": features, "feature_lengths": lengths, "labels": batch["token_ids"]}
    )["logits"]
    assert trainer.model.compute_dtype == "bfloat16"
    assert all(v.dtype == "float32" for v in trainer.trainable_variables)
    first = trainer.train_step(iterator)
    for _ in range(10):
        last = trainer.train_step(iterator)
    assert first["rnnt"].dtype == tf.float32 and logits.dtype in (tf.bfloat16, tf.float32)
    assert float(last["rnnt"]) < 0.8 * float(first["rnnt"])


def test_warmup_decay_values():
    rsqrt = schedules.WarmupDecay(1e-3, warmup_steps=100, decay="rsqrt")
    np.testing.assert_allclose(float(rsqrt(0)), 1e-5, rtol=1e-6)
    np.testing.assert_allclose(float(rsqrt(49)), 5e-4, rtol=1e-6)
    np.testing.assert_allclose(float(rsqrt(100)), 1e-3, rtol=1e-6)
    np.testing.assert_allclose(float(rsqrt(400)), 5e-4, rtol=1e-6)
    cosine = schedules.WarmupDecay(
        1e-3, warmup_steps=10, decay="cosine", decay_steps=110, final_learning_rate=1e-4
    )
    np.testing.assert_allclose(float(cosine(10)), 1e-3, rtol=1e-6)
    np.testing.assert_allclose(float(cosine(60)), 5.5e-4, rtol=1e-5)
    np.testing.assert_allclose(float(cosine(110)), 1e-4, rtol=1e-5)
    np.testing.assert_allclose(float(cosine(10_000)), 1e-4, rtol=1e-5)
    with pytest.raises(ValueError, match="unknown decay"):
        schedules.WarmupDecay(decay="linear")


@pytest.mark.parametrize(
    "binding, message",
    [
        ("train.num_stepz = 3", "num_stepz"),
        ("trian.num_steps = 3", "trian"),
        ("WarmupDecay.peak_lr = 1e-3", "peak_lr"),
    ],
)
def test_gin_typos_raise(clean_gin, binding, message):
    with pytest.raises((ValueError, KeyError), match=message):
        config.parse_gin(["gin/test/tiny.gin"], [binding])


@pytest.mark.parametrize(
    "gin_file",
    sorted(glob.glob(os.path.join(config.GIN_DIR, "*.gin")))
    + sorted(glob.glob(os.path.join(config.GIN_DIR, "*", "*.gin"))),
)
def test_every_gin_file_parses_strictly(clean_gin, gin_file):
    text = config.parse_gin([gin_file])
    assert text.strip()


def test_gin_train_root_writes_operative_config_and_summaries(clean_gin, tmp_path):
    pattern = write_tiny_records(str(tmp_path / "records"), vocab_size=VOCAB)
    model_dir = tmp_path / "run"
    config.parse_gin(
        ["gin/test/tiny.gin"],
        [f"TRAIN_RECORDS = '{pattern}'", "NUM_STEPS = 3", "train.progress = False"],
    )
    last = config.train(str(model_dir))
    assert set(last) >= {"rnnt", "loss", "grad_norm", "learning_rate"}
    operative = (model_dir / loop.OPERATIVE_CONFIG).read_text()
    assert "lstm_student.units = 32" in operative
    assert "NUM_STEPS = 3" in operative and "train.num_steps = %NUM_STEPS" in operative
    assert tf.train.latest_checkpoint(str(model_dir)).endswith("ckpt-3")
    tags = set()
    for path in glob.glob(str(model_dir / "train" / "events.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags.update(v.tag for v in event.summary.value)
    assert {"rnnt", "loss", "learning_rate", "operative_config"} <= tags


def test_empty_training_dataset_is_a_clear_error(clean_gin, tmp_path):
    pattern = write_tiny_records(str(tmp_path / "records"), vocab_size=VOCAB)
    config.parse_gin(
        ["gin/test/tiny.gin"],
        [f"TRAIN_RECORDS = '{pattern}'", "make_dataset.max_label_length = 0"],
    )
    with pytest.raises(loop.EmptyDatasetError, match="max_label_length"):
        config.train(str(tmp_path / "run"))


def eager_trainer(*args, **kwargs):
    """`train.trainer_fn`: a SupervisedTrainer without XLA (the CPU setting)."""
    return trainers.SupervisedTrainer(*args, jit_compile=False, **kwargs)


def shuffled_data(pattern, seeds=None, **options):
    """`train.train_dataset_fn`: `pattern`'s records shuffled with the loop's seed, repeating;
    each seed it is called with is appended to `seeds` when given; `options` to make_dataset."""

    def dataset_fn(input_context, seed):
        if seeds is not None:
            seeds.append(seed)
        return pipeline.make_dataset(
            pattern,
            global_batch_size=B,
            shuffle=True,
            seed=seed,
            repeat=True,
            input_context=input_context,
            **options,
        )

    return dataset_fn


@pytest.mark.slow  # ~50 s: two train() calls, each tracing a step and a greedy decoder
def test_train_resumes_and_reports_dev_wer(tmp_path):
    pattern = write_tiny_records(str(tmp_path / "records"), vocab_size=VOCAB)
    rng = np.random.default_rng(0)
    texts = [" ".join(map(str, rng.integers(1, VOCAB, size=5))) for _ in range(200)]
    spm = tokenizer.train_sentencepiece(texts, str(tmp_path / "spm" / "spm"), VOCAB)
    evaluator = periodic_wer.WerEvaluator(
        lambda: pipeline.make_dataset(pattern, global_batch_size=4, with_text=True),
        spm,
        max_batches=2,
    )

    kwargs = dict(
        model_fn=tiny_model,
        train_dataset_fn=shuffled_data(pattern),
        global_batch_size=B,
        trainer_fn=eager_trainer,
        checkpoint_every=2,
        summary_every=1,
        eval_every=2,
        eval_fn=evaluator,
        progress=False,
    )
    model_dir = str(tmp_path / "run")
    loop.train(model_dir, num_steps=2, **kwargs)
    # A second call with a larger target resumes at step 2 and trains 2 more steps.
    loop.train(model_dir, num_steps=4, **kwargs)
    assert tf.train.latest_checkpoint(model_dir).endswith("ckpt-4")
    values = {}
    for path in sorted(glob.glob(os.path.join(model_dir, "eval", "events.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for v in event.summary.value:
                values.setdefault(v.tag, []).append(event.step)
    assert values["dev/wer"] == [2, 4]
    assert values["dev/rnnt"] == [2, 4]


def test_train_resumes_step_and_reseeds_data(tmp_path):
    pattern = write_tiny_records(str(tmp_path / "records"), vocab_size=VOCAB)
    seeds = []
    kwargs = dict(
        model_fn=tiny_model,
        train_dataset_fn=shuffled_data(pattern, seeds),
        global_batch_size=B,
        trainer_fn=eager_trainer,
        checkpoint_every=2,
        seed=7,
        progress=False,
    )
    model_dir = str(tmp_path / "run")
    loop.train(model_dir, num_steps=2, **kwargs)
    loop.train(model_dir, num_steps=3, **kwargs)
    # The resumed run reshuffles with seed + resume step rather than replaying the first batches.
    assert seeds == [7, 9]
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(model_dir))
    assert tf.train.latest_checkpoint(model_dir).endswith("ckpt-3")
    assert reader.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE") == 3
    # Already at the target: a third call trains nothing and keeps the checkpoint.
    assert loop.train(model_dir, num_steps=3, **kwargs) == {}
    assert seeds == [7, 9, 10]


def _weights_after(tmp_path, name, stops, resume_data):
    """Trains the tiny model to each step of `stops` in turn (a resume at each) with shuffled,
    deterministic data; returns the final weights."""
    pattern = write_tiny_records(str(tmp_path / "records"), vocab_size=VOCAB)
    dataset_fn = shuffled_data(pattern, shuffle_buffer_size=64, deterministic=True)
    model_dir = str(tmp_path / name)
    for num_steps in stops:
        loop.train(
            model_dir,
            model_fn=tiny_model,
            train_dataset_fn=dataset_fn,
            global_batch_size=B,
            num_steps=num_steps,
            trainer_fn=eager_trainer,
            checkpoint_every=1,
            seed=3,
            resume_data=resume_data,
            progress=False,
        )
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(model_dir))
    return {
        k: reader.get_tensor(k)
        for k in reader.get_variable_to_shape_map()
        if k.startswith("optimizer/_trainable_variables/")  # the model's weights
    }


def test_replayed_resume_trains_on_the_uninterrupted_runs_batches(tmp_path, caplog):
    whole = _weights_after(tmp_path, "whole", [6], "replay")
    with caplog.at_level("INFO", logger="tfkd.train"):
        stopped = _weights_after(tmp_path, "stopped", [2, 5, 6], "replay")
    reseeded = _weights_after(tmp_path, "reseeded", [2, 5, 6], "reseed")
    assert sorted(whole) == sorted(stopped) and len(whole) > 4
    # Same batches in the same order: the same weights, to float32 rounding of the same ops.
    for k in whole:
        np.testing.assert_allclose(stopped[k], whole[k], rtol=1e-6, atol=1e-7, err_msg=k)
    # Reseeding at the resumes trains on other batches: the weights differ.
    assert max(float(np.max(np.abs(reseeded[k] - whole[k]))) for k in whole) > 1e-3
    replays = [r.getMessage() for r in caplog.records if r.getMessage().startswith("replayed")]
    assert [m.split(" in ")[0] for m in replays] == [
        "replayed the data of steps 1-2",
        "replayed the data of steps 1-5",
    ]


def test_replay_past_the_end_of_a_finite_dataset_says_so(tmp_path):
    pattern = write_tiny_records(str(tmp_path / "records"), vocab_size=VOCAB)
    batches = {"count": 3}
    kwargs = dict(
        model_fn=tiny_model,
        train_dataset_fn=lambda input_context, seed: pipeline.make_dataset(
            pattern, global_batch_size=B, repeat=True, input_context=input_context
        ).take(batches["count"]),
        global_batch_size=B,
        trainer_fn=eager_trainer,
        checkpoint_every=1,
        resume_data="replay",
        progress=False,
    )
    model_dir = str(tmp_path / "run")
    loop.train(model_dir, num_steps=2, **kwargs)  # batch 0 builds, batches 1 and 2 train
    batches["count"] = 2  # the data changed: it now ends before the resume point
    with pytest.raises(loop.EmptyDatasetError) as err:
        loop.train(model_dir, num_steps=4, **kwargs)
    assert str(err.value) == (
        f"the training dataset ends before step 3, where train.resume_data = 'replay' resumes "
        f"{model_dir}: make it repeat (make_dataset.repeat = True)"
    )


def test_resume_data_must_be_a_known_policy(tmp_path):
    with pytest.raises(
        ValueError, match=r"train.resume_data must be one of \('reseed', 'replay'\), got 'rewind'"
    ):
        loop.train(
            str(tmp_path / "run"),
            model_fn=tiny_model,
            train_dataset_fn=None,
            global_batch_size=B,
            num_steps=1,
            resume_data="rewind",
        )


def test_make_strategy_kinds_and_errors(monkeypatch):
    assert strategy_lib.make_strategy("default") is tf.distribute.get_strategy()
    with pytest.raises(ValueError, match="unknown strategy kind"):
        strategy_lib.make_strategy("mirored")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="TF_CONFIG"):
        strategy_lib.make_strategy("multi_worker")
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {}}')
    with pytest.raises(ValueError, match="not a usable cluster spec"):
        strategy_lib.make_strategy("multi_worker")
    assert strategy_lib.is_chief(tf.distribute.get_strategy())


def test_bin_train_stops_on_a_gin_typo_with_a_message(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(config.REPO_DIR, "bin", "train"),
            "--gin_file=gin/test/tiny.gin",
            "--gin_bindings=train.num_stepz = 3",
            f"--model_dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        cwd=config.REPO_DIR,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "gin configuration error" in proc.stderr and "num_stepz" in proc.stderr
    assert not os.listdir(tmp_path)  # nothing was started


def test_spec_augment_starts_at_its_step():
    augment = features.SpecAugment(num_freq_masks=2, max_freq_mask_width=20, max_time_masks=4)
    trainer, batch, _ = make_trainer(spec_augment=augment, spec_augment_start=3)
    plain, lengths = trainer.features(batch, training=False)
    for step, masked in ((0, False), (2, False), (3, True), (7, True)):
        trainer.optimizer.iterations.assign(step)
        feats, _ = trainer.features(batch, training=True)
        seed = tf.constant([step, 0], tf.int64)  # augment_seed 0 + step, replica 0
        want = augment(plain, lengths, training=True, seed=seed) if masked else plain
        np.testing.assert_array_equal(feats.numpy(), want.numpy())
        assert masked == bool(np.any(feats.numpy() != plain.numpy()))
    with pytest.raises(ValueError, match="spec_augment_start must be >= 0, got -1"):
        make_trainer(spec_augment=augment, spec_augment_start=-1)
