"""Distillation trainers (METHODS §2–§6): frozen teacher, offline records, terms, shared encoder."""

import glob
import json
import os
import subprocess
import sys

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf

from tfkd import config, decoding, losses, preflight
from tfkd.data import pipeline, records
from tfkd.models import presets
from tfkd.training import distillation, loop

VOCAB = 16
B = 4
N = 3
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_student(subsampling_factor=4, vocab=VOCAB):
    return presets.lstm_student(
        vocab,
        num_layers=1,
        units=24,
        subsampling_factor=subsampling_factor,
        frontend_units=24,
        prediction_units=24,
        prediction_embed_dim=8,
        joint_dim=24,
        dropout=0.0,
    )


def tiny_teacher(vocab=VOCAB):
    teacher = presets.lstm_student(
        vocab,
        num_layers=1,
        units=32,
        frontend_units=32,
        prediction_units=32,
        prediction_embed_dim=16,
        joint_dim=32,
        dropout=0.0,
        name="teacher",
    )
    return teacher.build_by_calling(num_features=80)


def audio_batch(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "waveform": tf.constant(rng.normal(size=(B, 8000)).astype("float32") * 0.1),
        "num_samples": tf.constant([8000, 7000, 6000, 8000], tf.int32),
        "token_ids": tf.constant(rng.integers(1, VOCAB, size=(B, 5)), tf.int32),
        "label_length": tf.constant([5, 4, 3, 5], tf.int32),
    }


def offline_batch(seed=0):
    """An audio batch with stored N-best fields; utterance 2 has only 2 real hypotheses."""
    rng = np.random.default_rng(seed + 1)
    batch = audio_batch(seed)
    lengths = np.array([[4, 3, 5], [2, 2, 3], [3, 1, 0], [0, 4, 2]], np.int32)
    scores = -rng.uniform(2.0, 9.0, size=(B, N)).astype(np.float32)
    scores[2, 2] = pipeline.NBEST_PAD_SCORE
    batch.update(
        nbest_token_ids=tf.constant(rng.integers(1, VOCAB, size=(B, N, 5)), tf.int32),
        nbest_lengths=tf.constant(lengths),
        teacher_scores=tf.constant(scores),
        nbest_count=tf.constant([3, 3, 2, 3], tf.int32),
    )
    return batch


def make_trainer(cls, batch, student=None, optimizer=None, **kwargs):
    student = student or tiny_student()
    optimizer = optimizer or keras.optimizers.Adam(1e-2)
    kwargs.setdefault("jit_compile", False)
    trainer = cls(
        student, optimizer, strategy=tf.distribute.get_strategy(), global_batch_size=B, **kwargs
    )
    trainer.loss_terms(batch, training=False)
    optimizer.build(trainer.trainable_variables)
    return trainer


def one_step(trainer, batch):
    return trainer.train_step(iter(tf.data.Dataset.from_tensors(batch).repeat()))


def snapshot(variables):
    return [v.numpy().copy() for v in variables]


@pytest.mark.parametrize(
    "cls, kwargs",
    [
        pytest.param(distillation.HardDistillationTrainer, {}, marks=pytest.mark.slow),
        (distillation.SoftDistillationTrainer, {"shift": 1}),
        # Full-sum compares no time index: a student at half the teacher's frame rate.
        (
            distillation.FullSumDistillationTrainer,
            {"nbest_size": 2, "beam_width": 2, "student_subsampling": 8},
        ),
    ],
)
def test_online_step_keeps_teacher_and_changes_student(cls, kwargs):
    teacher = tiny_teacher()
    batch = audio_batch()
    student = tiny_student(subsampling_factor=kwargs.pop("student_subsampling", 4))
    trainer = make_trainer(cls, batch, student=student, teacher=teacher, **kwargs)
    teacher_before = snapshot(teacher.weights)
    student_before = snapshot(trainer.model.trainable_variables)
    assert len(teacher_before) > 0 and not teacher.trainable
    assert {id(v) for v in trainer.trainable_variables}.isdisjoint(id(v) for v in teacher.weights)
    means = one_step(trainer, batch)
    for name in cls.term_names:
        assert np.isfinite(float(means[name])), name
    for before, v in zip(teacher_before, teacher.weights, strict=True):
        np.testing.assert_array_equal(before, v.numpy(), err_msg=v.path)
    changed = [
        not np.array_equal(b, v.numpy())
        for b, v in zip(student_before, trainer.model.trainable_variables, strict=True)
    ]
    assert all(changed), "every student variable takes part in the loss and must move"


def test_online_fullsum_teacher_scores_are_full_sum_of_its_nbest():
    teacher = tiny_teacher()
    batch = audio_batch()
    trainer = make_trainer(
        distillation.FullSumDistillationTrainer, batch, teacher=teacher, nbest_size=2, beam_width=3
    )
    out = trainer.add_teacher_outputs(batch)
    feats, lengths = trainer.frontend(batch["waveform"], batch["num_samples"])
    want = decoding.score(teacher, feats, lengths, out["nbest_token_ids"], out["nbest_lengths"])
    valid = np.arange(2)[None] < out["nbest_count"].numpy()[:, None]
    assert out["teacher_scores"].shape == (B, 2) and valid[:, 0].all()
    np.testing.assert_allclose(
        out["teacher_scores"].numpy()[valid], want.numpy()[valid], rtol=1e-5, atol=1e-4
    )
    assert (out["teacher_scores"].numpy()[~valid] == pipeline.NBEST_PAD_SCORE).all()


def test_terms_are_named_and_total_is_the_weighted_sum():
    batch = offline_batch()
    batch["labeled"] = tf.constant([True, False, True, False])
    weights = {"fullsum": 0.5, "disc": 2.0, "rnnt_gt": 0.3}
    trainer = make_trainer(
        distillation.DiscriminativeFullSumTrainer,
        batch,
        nbest_size=N,
        temperature=2.0,
        loss_weights=weights,
    )
    assert trainer.teacher is None
    assert not trainer.scorer._use_lean(tf.zeros([B * N, 20, 24]), tf.zeros([B * N, 6, 24]))
    assert trainer.scorer._use_lean(tf.zeros([B * N, 2**16, 24]), tf.zeros([B * N, 6, 24]))
    terms = {k: v.numpy() for k, v in trainer.loss_terms(batch, training=False).items()}
    assert set(terms) == {"fullsum", "disc", "rnnt_gt"}
    # rnnt_gt is the plain RNN-T loss on the labelled examples and exactly 0 on the others.
    out = trainer.model(
        {
            "features": trainer.frontend(batch["waveform"], batch["num_samples"])[0],
            "feature_lengths": trainer.frontend(batch["waveform"], batch["num_samples"])[1],
            "labels": batch["token_ids"],
        }
    )
    gt = losses.rnnt_loss(out["logits"], batch["token_ids"], out["logit_lengths"], [5, 4, 3, 5])
    np.testing.assert_allclose(terms["rnnt_gt"], gt.numpy() * [1, 0, 1, 0], rtol=1e-5)
    means = one_step(trainer, batch)
    for name in ("fullsum", "disc", "rnnt_gt"):
        np.testing.assert_allclose(float(means[name]), terms[name].mean(), rtol=1e-5)
    want = sum(weights[k] * float(means[k]) for k in weights)
    np.testing.assert_allclose(float(means["loss"]), want, rtol=1e-5)
    assert float(means["disc"]) > 0 and float(means["rnnt_gt"]) > 0


def test_fullsum_student_scores_share_the_encoder_and_match_plain_scoring():
    batch = offline_batch()
    trainer = make_trainer(distillation.FullSumDistillationTrainer, batch, nbest_size=N)
    student = trainer.model
    enc_side, enc_lengths = trainer.encode_student(batch, training=False)
    got = trainer.student_nbest_scores(
        enc_side, enc_lengths, batch["nbest_token_ids"], batch["nbest_lengths"], training=False
    ).numpy()
    feats, lengths = trainer.frontend(batch["waveform"], batch["num_samples"])
    via_decoding = decoding.score(
        student, feats, lengths, batch["nbest_token_ids"], batch["nbest_lengths"]
    )
    np.testing.assert_allclose(got, via_decoding.numpy(), rtol=1e-5)
    # The plain way: one full model call (encoder included) per hypothesis column.
    for n in range(N):
        out = student(
            {
                "features": feats,
                "feature_lengths": lengths,
                "labels": batch["nbest_token_ids"][:, n],
            }
        )
        plain = losses.rnnt_log_prob(
            out["logits"],
            batch["nbest_token_ids"][:, n],
            out["logit_lengths"],
            batch["nbest_lengths"][:, n],
        )
        np.testing.assert_allclose(got[:, n], plain.numpy(), rtol=1e-5)
    assert (got < 0).all()
    # The squared loss over the valid hypotheses only (utterance 2 has two).
    fullsum = trainer.loss_terms(batch, training=False)["fullsum"].numpy()
    teacher = batch["teacher_scores"].numpy()
    np.testing.assert_allclose(fullsum[2], ((teacher - got)[2, :2] ** 2).mean(), rtol=1e-5)
    np.testing.assert_allclose(fullsum[0], ((teacher - got)[0] ** 2).mean(), rtol=1e-5)


def test_memory_lean_path_matches_plain_loss_and_gradients():
    batch = offline_batch()
    student = tiny_student()
    plain = make_trainer(
        distillation.FullSumDistillationTrainer, batch, student=student, lean_joint_threshold=None
    )
    lean = make_trainer(
        distillation.FullSumDistillationTrainer,
        batch,
        student=student,
        joint_time_chunk=2,
        lean_joint_threshold=0,
    )
    results = []
    for trainer in (plain, lean):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(trainer.loss_terms(batch, training=False)["fullsum"])
        results.append((float(loss), tape.gradient(loss, student.trainable_variables)))
    np.testing.assert_allclose(results[1][0], results[0][0], rtol=1e-5)
    for g_plain, g_lean in zip(results[0][1], results[1][1], strict=True):
        np.testing.assert_allclose(
            tf.convert_to_tensor(g_lean).numpy(),
            tf.convert_to_tensor(g_plain).numpy(),
            rtol=1e-4,
            atol=1e-5,
        )


def shared_prefix_batch(seed=0):
    """`offline_batch` whose hypotheses share prefixes as a beam's do, with one duplicate."""
    batch = offline_batch(seed)
    ids = batch["nbest_token_ids"].numpy()
    ids[:, 1, :2] = ids[:, 0, :2]
    ids[:, 2, :1] = ids[:, 0, :1]
    ids[1, 1] = ids[1, 0]  # both of length 2
    batch["nbest_token_ids"] = tf.constant(ids)
    batch["labeled"] = tf.constant([True, False, True, False])
    return batch


@pytest.mark.parametrize(
    "cls",
    [
        distillation.HardDistillationTrainer,
        distillation.FullSumDistillationTrainer,
        distillation.DiscriminativeFullSumTrainer,
    ],
)
def test_shared_prefix_rows_give_the_terms_and_step_of_whole_lattices(cls):
    batch = shared_prefix_batch()
    student = tiny_student()
    nbest = 1 if cls is distillation.HardDistillationTrainer else N
    initial = None
    results = {}
    configs = {
        "lattice": {"share_prefixes": False, "lean_joint_threshold": None},
        "shared": {"share_prefixes": True, "lean_joint_threshold": None},
        # Threshold 0: every step takes the memory-lean chunked path of the rows.
        "lean": {"share_prefixes": True, "lean_joint_threshold": 0, "joint_time_chunk": 2},
    }
    for name, kwargs in configs.items():
        trainer = make_trainer(
            cls,
            batch,
            student=student,
            optimizer=keras.optimizers.SGD(0.01),
            nbest_size=nbest,
            ground_truth="flag",
            loss_weights={"rnnt_gt": 0.5},
            **kwargs,
        )
        if initial is None:
            initial = snapshot(student.trainable_variables)
        for v, w in zip(student.trainable_variables, initial, strict=True):
            v.assign(w)
        terms = {k: v.numpy() for k, v in trainer.loss_terms(batch, training=False).items()}
        means = {k: float(v) for k, v in one_step(trainer, batch).items()}
        results[name] = (terms, means, snapshot(student.trainable_variables))
        assert trainer.share_prefixes == kwargs["share_prefixes"]
    want_terms, want_means, want_weights = results["lattice"]
    assert want_terms["rnnt_gt"][1] == 0 and want_terms["rnnt_gt"][0] > 0
    for name in ("shared", "lean"):
        terms, means, weights = results[name]
        for term in cls.term_names:
            np.testing.assert_allclose(terms[term], want_terms[term], rtol=1e-5, err_msg=name)
        for key, value in want_means.items():
            np.testing.assert_allclose(means[key], value, rtol=1e-5, err_msg=f"{name} {key}")
        for got, want, v in zip(weights, want_weights, student.trainable_variables, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=f"{name} {v.path}")
    assert not np.array_equal(want_weights[-1], initial[-1])


def test_shared_prefix_scores_mask_padding_hypotheses_and_need_no_xla():
    batch = shared_prefix_batch()
    trainer = make_trainer(distillation.FullSumDistillationTrainer, batch, nbest_size=N)
    assert trainer.share_prefixes  # the default without XLA
    enc_side, enc_lengths = trainer.encode_student(batch, training=False)
    args = (enc_side, enc_lengths, batch["nbest_token_ids"], batch["nbest_lengths"], False)
    counted = trainer.student_nbest_scores(*args, nbest_count=batch["nbest_count"]).numpy()
    everything = trainer.student_nbest_scores(*args).numpy()
    assert counted[2, 2] == np.float32(pipeline.NBEST_PAD_SCORE)  # utterance 2 has 2 hypotheses
    valid = np.arange(N)[None] < batch["nbest_count"].numpy()[:, None]
    np.testing.assert_array_equal(counted[valid], everything[valid])
    np.testing.assert_allclose(everything[1, 0], everything[1, 1], rtol=1e-6)  # the duplicate
    with pytest.raises(ValueError, match="share_prefixes=True needs jit_compile=False"):
        make_trainer(
            distillation.FullSumDistillationTrainer, batch, jit_compile=True, share_prefixes=True
        )
    xla = distillation.FullSumDistillationTrainer(
        tiny_student(),
        keras.optimizers.Adam(),
        strategy=tf.distribute.get_strategy(),
        global_batch_size=B,
        jit_compile=True,
    )
    assert not xla.share_prefixes


def test_label_bucket_trims_padding_without_changing_the_terms():
    batch = offline_batch()
    pad = [[0, 0], [0, 0], [0, 7]]
    batch["nbest_token_ids"] = tf.pad(batch["nbest_token_ids"], pad)  # U = 12, longest is 5
    batch["token_ids"] = tf.pad(batch["token_ids"], pad[1:])
    batch["labeled"] = tf.constant([True, True, False, True])
    trimmed = distillation.trim_labels(batch, 4)
    assert trimmed["nbest_token_ids"].shape == (B, N, 8)
    assert trimmed["token_ids"].shape == (B, 8)
    trainer = make_trainer(
        distillation.DiscriminativeFullSumTrainer, batch, nbest_size=N, label_bucket=4
    )
    full = trainer.loss_terms(batch, training=False)
    cut = trainer.loss_terms(trimmed, training=False)
    for name in ("fullsum", "disc", "rnnt_gt"):
        np.testing.assert_allclose(cut[name].numpy(), full[name].numpy(), rtol=1e-5)
    means = one_step(trainer, batch)
    np.testing.assert_allclose(float(means["fullsum"]), full["fullsum"].numpy().mean(), rtol=1e-5)


def test_soft_with_different_frame_rates_fails_at_start_up():
    with pytest.raises(ValueError, match="same frame rate.*4x.*8x"):
        distillation.SoftDistillationTrainer(
            tiny_student(subsampling_factor=8),
            keras.optimizers.Adam(),
            teacher=tiny_teacher(),
            strategy=tf.distribute.get_strategy(),
            global_batch_size=B,
        )


def test_soft_without_teacher_or_soft_targets_and_disc_with_one_hypothesis_raise():
    common = {"strategy": tf.distribute.get_strategy(), "global_batch_size": B}
    # No teacher: offline mode, which needs the stored soft targets in the batch.
    trainer = distillation.SoftDistillationTrainer(
        tiny_student(), keras.optimizers.Adam(), **common
    )
    with pytest.raises(ValueError, match="(?s)no stored soft targets.*--soft_targets"):
        trainer.loss_terms(offline_batch(), training=False)
    with pytest.raises(ValueError, match=r"full_vocabulary=True\) needs an online teacher"):
        distillation.SoftDistillationTrainer(
            tiny_student(), keras.optimizers.Adam(), full_vocabulary=True, **common
        )
    with pytest.raises(ValueError, match="N >= 2"):
        distillation.DiscriminativeFullSumTrainer(
            tiny_student(), keras.optimizers.Adam(), nbest_size=1, **common
        )


def test_teacher_fn_restores_the_teacher_checkpoint(tmp_path):
    trained = tiny_teacher()
    step = tf.Variable(7, dtype=tf.int64)
    manager = tf.train.CheckpointManager(
        tf.train.Checkpoint(model=trained, step=step), str(tmp_path), 1, checkpoint_name="ckpt"
    )
    manager.save(checkpoint_number=7)
    common = {"strategy": tf.distribute.get_strategy(), "global_batch_size": B}

    def builder():
        return presets.lstm_student(
            VOCAB,
            num_layers=1,
            units=32,
            frontend_units=32,
            prediction_units=32,
            prediction_embed_dim=16,
            joint_dim=32,
            dropout=0.0,
            name="teacher",
        )

    trainer = distillation.HardDistillationTrainer(
        tiny_student(),
        keras.optimizers.Adam(),
        teacher_fn=builder,
        teacher_dir=str(tmp_path),
        **common,
    )
    assert trainer.teacher is not trained and not trainer.teacher.trainable
    for want, got in zip(trained.weights, trainer.teacher.weights, strict=True):
        np.testing.assert_array_equal(got.numpy(), want.numpy())
    with pytest.raises(FileNotFoundError, match="bin/train --gin_file=gin/teacher.gin"):
        distillation.HardDistillationTrainer(
            tiny_student(),
            keras.optimizers.Adam(),
            teacher_fn=builder,
            teacher_dir=str(tmp_path / "none"),
            **common,
        )


def test_vocabulary_mismatch_fails_before_training():
    with pytest.raises(ValueError, match="vocabularies differ: 17 vs 16"):
        distillation.HardDistillationTrainer(
            tiny_student(),
            keras.optimizers.Adam(),
            teacher=tiny_teacher(vocab=17),
            strategy=tf.distribute.get_strategy(),
            global_batch_size=B,
        )


def test_offline_hard_without_nbest_fields_names_the_fix():
    trainer = distillation.HardDistillationTrainer(
        tiny_student(),
        keras.optimizers.Adam(),
        strategy=tf.distribute.get_strategy(),
        global_batch_size=B,
    )
    with pytest.raises(ValueError, match="with_nbest=True"):
        trainer.loss_terms(audio_batch(), training=False)


def write_pseudo_label_records(directory, num_files=2, per_file=6, nbest=N, seed=0):
    """Tiny `bin/pseudo_label`-style records: noise audio, N-best ids, full-sum-like scores."""
    rng = np.random.default_rng(seed)
    os.makedirs(directory, exist_ok=True)
    for f in range(num_files):
        path = os.path.join(directory, f"train-unlabeled-{f:05d}-of-{num_files:05d}.tfrecord")
        with tf.io.TFRecordWriter(path) as writer:
            for i in range(per_file):
                pcm = (rng.normal(size=int(rng.integers(8000, 20000))) * 1000).astype(np.int16)
                hyps = [rng.integers(1, VOCAB, size=int(rng.integers(1, 6))).tolist()]
                hyps += [
                    rng.integers(1, VOCAB, size=len(hyps[0])).tolist() for _ in range(nbest - 1)
                ]
                scores = np.sort(-rng.uniform(3.0, 12.0, size=nbest))[::-1]
                utt = records.Utterance(
                    utterance_id=f"u-{f}-{i}",
                    speaker_id="0",
                    text="",
                    pcm16=pcm,
                    token_ids=hyps[0],
                    nbest_token_ids=hyps,
                    nbest_teacher_scores=scores.tolist(),
                )
                writer.write(records.serialize_utterance(utt))
    return os.path.join(directory, "train-unlabeled-*.tfrecord")


def test_offline_fullsum_trains_from_pseudo_label_records_without_teacher(tmp_path):
    pattern = write_pseudo_label_records(str(tmp_path / "pseudo"))
    ds = pipeline.make_dataset(
        pattern,
        global_batch_size=B,
        with_nbest=True,
        nbest_size=N,
        static_shapes=True,
        max_duration_s=1.5,
        max_label_length=6,
        repeat=True,
    )
    batch = next(iter(ds))
    assert batch["nbest_token_ids"].shape == (B, N, 6)
    trainer = make_trainer(distillation.FullSumDistillationTrainer, batch, nbest_size=N)
    assert trainer.teacher is None
    before = float(tf.reduce_mean(trainer.loss_terms(batch, training=False)["fullsum"]))
    iterator = iter(ds.take(1).repeat())
    for _ in range(5):
        means = trainer.train_step(iterator)
    after = float(tf.reduce_mean(trainer.loss_terms(batch, training=False)["fullsum"]))
    assert set(means) >= {"fullsum", "rnnt_gt", "loss", "grad_norm"}
    assert float(means["rnnt_gt"]) == 0.0  # no `labeled` field: transcripts are not used
    assert after < 0.5 * before, (before, after)


@pytest.mark.slow  # ~40 s: a subprocess importing TF and tracing the step
def test_bin_train_tiny_fullsum_kd_end_to_end(tmp_path):
    pattern = write_pseudo_label_records(str(tmp_path / "pseudo"), nbest=4)
    model_dir = tmp_path / "run"
    subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "bin", "train"),
            "--gin_file=gin/test/tiny_fullsum_kd.gin",
            f"--gin_bindings=PSEUDO_LABEL_RECORDS = '{pattern}'",
            "--gin_bindings=train.progress = False",
            f"--model_dir={model_dir}",
        ],
        cwd=REPO,
        check=True,
        timeout=300,
    )
    operative = (model_dir / loop.OPERATIVE_CONFIG).read_text()
    assert "train.trainer_fn = @FullSumDistillationTrainer" in operative
    assert "FullSumDistillationTrainer.distance = 'squared'" in operative
    assert tf.train.latest_checkpoint(str(model_dir)).endswith("ckpt-6")
    tags = set()
    for path in glob.glob(str(model_dir / "train" / "events.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags.update(v.tag for v in event.summary.value)
    assert {"fullsum", "rnnt_gt", "loss"} <= tags


_MIRRORED_FULLSUM = """
import json, sys
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
sys.path.insert(0, "tests")
import test_distillation_trainers as t
from tfkd.training import distillation

batch = {k: v.numpy() for k, v in t.offline_batch().items()}

def run(strategy):
    keras.utils.set_random_seed(0)
    with strategy.scope():
        trainer = distillation.DiscriminativeFullSumTrainer(
            t.tiny_student(), keras.optimizers.Adam(1e-2), strategy=strategy,
            global_batch_size=t.B, nbest_size=t.N, clip_norm=1.0, jit_compile=False)
    def dataset_fn(ctx):
        return tf.data.Dataset.from_tensor_slices(batch).batch(
            ctx.get_per_replica_batch_size(t.B)).repeat()
    iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))
    first = strategy.experimental_local_results(next(iterator))[0]
    with strategy.scope():
        trainer.loss_terms(first, training=False)
        trainer.optimizer.build(trainer.trainable_variables)
    iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))
    means = [{k: float(v) for k, v in trainer.train_step(iterator).items()} for _ in range(2)]
    weights = [v.numpy().tolist() for v in trainer.model.trainable_variables[:3]]
    return means, weights

one = run(tf.distribute.OneDeviceStrategy("/cpu:0"))
two = run(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
print(json.dumps({"one": one, "two": two}))
"""


@pytest.mark.slow  # ~60 s: a subprocess with two logical CPUs, two strategies
def test_mirrored_two_cpus_matches_one_device():
    out = subprocess.run(
        [sys.executable, "-c", _MIRRORED_FULLSUM],
        cwd=REPO,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": REPO},
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    (means_one, weights_one), (means_two, weights_two) = result["one"], result["two"]
    for step_one, step_two in zip(means_one, means_two, strict=True):
        for name in ("fullsum", "disc", "loss"):
            np.testing.assert_allclose(step_two[name], step_one[name], rtol=1e-4)
    for w_one, w_two in zip(weights_one, weights_two, strict=True):
        np.testing.assert_allclose(np.array(w_two), np.array(w_one), rtol=1e-4, atol=1e-6)


def test_preflight_names_the_first_missing_step(tmp_path):
    pseudo = tmp_path / "pseudo"
    bindings = [
        f"SPM_MODEL = '{tmp_path}/spm.model'",
        f"DEV_RECORDS = '{tmp_path}/dev-*.tfrecord'",
        f"PSEUDO_LABEL_RECORDS = '{pseudo}/train-unlabeled-*.tfrecord'",
    ]

    def message():
        gin.clear_config()
        try:
            config.parse_gin(["gin/fullsum_kd.gin"], bindings)
            return preflight.missing_inputs(default_teacher_dir=str(tmp_path / "teacher"))
        finally:
            gin.clear_config()

    assert "SPM_MODEL" in message() and "tools/make_corpus.py" in message()
    (tmp_path / "spm.model").write_bytes(b"")
    (tmp_path / "dev-00000.tfrecord").write_bytes(b"")
    assert message().endswith(
        f"bin/pseudo_label --teacher_dir={tmp_path}/teacher --output_dir={pseudo}"
    )
    assert "bin/train --gin_file=gin/teacher.gin" in message()
    write_pseudo_label_records(str(pseudo), num_files=1, per_file=1)
    assert message() is None
