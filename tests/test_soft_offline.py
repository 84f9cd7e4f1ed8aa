"""Offline soft distillation (METHODS §3): stored collapsed teacher lattices instead of a teacher.

The targets are made by the project's own tools (`tfkd.pseudo_label`, `bin/pseudo_label
--soft_targets`) from the tiny teacher of `test_distillation_trainers`, read back through
`make_dataset`, and must give the online trainer's loss and gradients.
"""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
import test_distillation_trainers as tdt
from training_records import write_tiny_records

from tfkd import losses, pseudo_label
from tfkd.data import kd_batches, pipeline
from tfkd.training import distillation

SHIFT = 1


def _soft_targets_batch(teacher, batch):
    """`batch` with the stored-target fields as `bin/pseudo_label --soft_targets` makes them:
    the teacher's collapsed lattice per utterance, `[T_b, U_b+1, 3]`, zero padded again."""
    trainer = tdt.make_trainer(distillation.HardDistillationTrainer, batch)
    feats, lengths = trainer.frontend(batch["waveform"], batch["num_samples"])
    enc, enc_lengths = teacher.encode(feats, lengths, training=False)
    enc_lengths = tf.cast(enc_lengths, tf.int32)
    hyp, hyp_lengths = kd_batches.first_best(batch)
    lattice = pseudo_label.make_soft_target_fn(teacher)(enc, enc_lengths, hyp, hyp_lengths)
    stored = np.zeros(lattice.shape, np.float32)
    for b, (t, u) in enumerate(zip(enc_lengths.numpy(), hyp_lengths.numpy(), strict=True)):
        stored[b, :t, : u + 1] = lattice.numpy()[b, :t, : u + 1]
    return {**batch, "soft_targets": tf.constant(stored), "soft_target_frames": enc_lengths}


def _terms_and_grads(trainer, batch):
    variables = trainer.model.trainable_variables
    with tf.GradientTape() as tape:
        terms = trainer.loss_terms(batch, training=False)
        total = tf.reduce_sum(terms["hard"] + terms["soft"])
    grads = tape.gradient(total, variables)
    return {k: v.numpy() for k, v in terms.items()}, [
        tf.convert_to_tensor(g).numpy() for g in grads
    ]


def test_offline_soft_loss_and_gradients_equal_online():
    teacher = tdt.tiny_teacher()
    batch = tdt.offline_batch()
    student = tdt.tiny_student()
    online = tdt.make_trainer(
        distillation.SoftDistillationTrainer, batch, student=student, teacher=teacher, shift=SHIFT
    )
    stored = _soft_targets_batch(teacher, batch)
    offline = tdt.make_trainer(
        distillation.SoftDistillationTrainer, stored, student=student, shift=SHIFT
    )
    assert offline.teacher is None and online.teacher is teacher
    want_terms, want_grads = _terms_and_grads(online, batch)
    got_terms, got_grads = _terms_and_grads(offline, stored)
    assert want_terms["soft"][0] > 0.1
    for name in ("hard", "soft", "rnnt_gt"):
        np.testing.assert_allclose(got_terms[name], want_terms[name], rtol=1e-5, atol=1e-5)
    for got, want, v in zip(got_grads, want_grads, student.trainable_variables, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=v.path)
    # A teacher that is loaded is not run when the batch has stored targets.
    both = tdt.make_trainer(
        distillation.SoftDistillationTrainer, stored, student=student, teacher=teacher, shift=1
    )
    assert "teacher_logits" not in both.add_teacher_outputs(stored)
    np.testing.assert_allclose(
        both.loss_terms(stored, training=False)["soft"].numpy(), got_terms["soft"], rtol=1e-6
    )


def test_labelled_rows_without_soft_targets_get_zero():
    teacher = tdt.tiny_teacher()
    stored = _soft_targets_batch(teacher, tdt.offline_batch())
    # Row 1 as `mixed_label_dataset` makes a labelled row: no hypotheses, no stored frames.
    count = stored["nbest_count"].numpy().copy()
    count[1] = 0
    frames = stored["soft_target_frames"].numpy().copy()
    frames[1] = 0
    targets = stored["soft_targets"].numpy().copy()
    targets[1] = 0.0
    mixed = {
        **stored,
        "nbest_count": tf.constant(count),
        "soft_target_frames": tf.constant(frames),
        "soft_targets": tf.constant(targets),
        "labeled": tf.constant([False, True, False, False]),
    }
    trainer = tdt.make_trainer(distillation.SoftDistillationTrainer, mixed)
    terms = trainer.loss_terms(mixed, training=False)
    assert float(terms["soft"][1]) == 0.0 and float(terms["hard"][1]) == 0.0
    assert float(terms["soft"][0]) > 0.0


# ----------------------------------------------------------------------------------------------
# From records written by tfkd.pseudo_label --soft_targets


@pytest.fixture(scope="module")
def soft_records(tmp_path_factory):
    """Tiny records pseudo-labelled with soft targets by the tiny teacher: (teacher, pattern)."""
    keras.utils.set_random_seed(0)
    teacher = tdt.tiny_teacher()
    # Favour blank, so that the random teacher's 1-best is a few labels, not 3 per frame.
    bias = teacher.joint.output_layer.bias
    bias.assign(bias + 1.5 * tf.one_hot(0, tdt.VOCAB))
    root = tmp_path_factory.mktemp("soft")
    inputs = write_tiny_records(
        str(root / "in"), "train-unlabeled", 1, 8, vocab_size=tdt.VOCAB, seed=2
    )
    settings = pseudo_label.Settings(beam_width=2, nbest=2, soft_targets=True, teacher="tiny")
    pseudo_label.pseudo_label(teacher, inputs, str(root / "out"), settings, progress=False)
    return teacher, str(root / "out" / "*.tfrecord")


def _record_batch(pattern, **kwargs):
    ds = pipeline.make_dataset(
        pattern, global_batch_size=tdt.B, with_nbest=True, deterministic=True, **kwargs
    )
    return next(iter(ds))


def test_offline_soft_from_records_matches_online_and_trains(soft_records):
    teacher, pattern = soft_records
    batch = _record_batch(
        pattern, static_shapes=True, max_duration_s=1.5, max_label_length=16, nbest_size=2
    )
    assert batch["soft_targets"].shape[2:] == (17, 3)
    student = tdt.tiny_student()
    offline = tdt.make_trainer(
        distillation.SoftDistillationTrainer,
        batch,
        student=student,
        shift=SHIFT,
        label_bucket=4,
        pseudo_label_records=pattern,
    )
    online = tdt.make_trainer(
        distillation.SoftDistillationTrainer,
        batch,
        student=student,
        teacher=teacher,
        shift=SHIFT,
        label_bucket=4,
    )
    prepared = offline.prepare_batch(batch)
    nodes = prepared["nbest_token_ids"].shape[-1] + 1
    assert nodes < 17 and prepared["soft_targets"].shape[2] == nodes  # trimmed with the labels
    want = online.loss_terms(online.prepare_batch(batch), training=False)
    got = offline.loss_terms(prepared, training=False)
    for name in ("hard", "soft"):
        # The teacher ran on other batches when labelling: padding changes float rounding only.
        np.testing.assert_allclose(got[name].numpy(), want[name].numpy(), rtol=1e-4, atol=1e-4)
    before = tdt.snapshot(student.trainable_variables)
    means = tdt.one_step(offline, batch)
    assert offline.teacher is None and np.isfinite(float(means["soft"]))
    assert float(means["soft"]) > 0
    changed = [
        not np.array_equal(b, v.numpy())
        for b, v in zip(before, student.trainable_variables, strict=True)
    ]
    unchanged = [v.path for v, c in zip(student.trainable_variables, changed, strict=True) if not c]
    assert not unchanged, unchanged


def test_offline_frame_rate_mismatch_fails_before_training(soft_records, tmp_path):
    _, pattern = soft_records
    common = {"strategy": tf.distribute.get_strategy(), "global_batch_size": tdt.B}
    fast = tdt.tiny_student(subsampling_factor=8)
    # The manifest names the teacher's 4x: a clear error when the trainer is built.
    with pytest.raises(ValueError, match="same frame rate.*manifest.json.*4x.*8x"):
        distillation.SoftDistillationTrainer(
            fast, keras.optimizers.Adam(), pseudo_label_records=pattern, **common
        )
    # Without the manifest, the stored frame counts fail the first batch (`trainer.build`).
    trainer = distillation.SoftDistillationTrainer(fast, keras.optimizers.Adam(), **common)
    with pytest.raises(tf.errors.InvalidArgumentError, match="frame counts differ"):
        trainer.build(_record_batch(pattern))
    # Records made without --soft_targets: the manifest says so.
    manifest = json.loads(open(os.path.join(os.path.dirname(pattern), "manifest.json")).read())
    (tmp_path / "manifest.json").write_text(json.dumps({**manifest, "soft_targets": False}))
    with pytest.raises(ValueError, match="no soft targets.*--soft_targets"):
        distillation.SoftDistillationTrainer(
            tdt.tiny_student(),
            keras.optimizers.Adam(),
            pseudo_label_records=str(tmp_path / "*.tfrecord"),
            **common,
        )
    with pytest.raises(ValueError, match=r"full_vocabulary=True\) needs an online teacher"):
        distillation.SoftDistillationTrainer(
            tdt.tiny_student(), keras.optimizers.Adam(), full_vocabulary=True, **common
        )


def test_full_vocabulary_loss_refuses_collapsed_targets():
    rng = np.random.default_rng(0)
    student = rng.normal(size=(1, 3, 2, 5)).astype(np.float32)
    targets = losses.collapsed_lattice(student, [[1]], [1])
    with pytest.raises(ValueError, match="full_vocabulary=True needs the teacher's logits"):
        losses.collapsed_soft_distillation_loss(
            targets, student, [[1]], [3], [1], full_vocabulary=True
        )


def test_soft_kd_offline_gin_loads_no_teacher_and_names_soft_targets(tmp_path, clean_gin):
    import gin

    from tfkd import config, preflight

    pseudo = tmp_path / "pseudo-soft"
    config.parse_gin(
        ["gin/soft_kd_offline.gin"],
        [
            f"PSEUDO_LABEL_RECORDS = '{pseudo}/train-unlabeled-*.tfrecord'",
            f"SPM_MODEL = '{tmp_path}/spm.model'",
            f"DEV_RECORDS = '{tmp_path}/dev-*.tfrecord'",
        ],
    )
    assert gin.query_parameter("SoftDistillationTrainer.teacher_fn") is None
    assert gin.query_parameter("%TEACHER_DIR") is None
    (tmp_path / "spm.model").write_bytes(b"")
    (tmp_path / "dev-00000.tfrecord").write_bytes(b"")
    message = preflight.missing_inputs(default_teacher_dir=str(tmp_path / "teacher"))
    assert message.endswith(f"--output_dir={pseudo} --soft_targets"), message


@pytest.mark.parametrize("static", [False, True])
def test_mixed_labelled_rows_carry_empty_soft_targets(soft_records, tmp_path, static):
    import functools

    _, pattern = soft_records
    labeled = write_tiny_records(str(tmp_path), "train-labeled", 1, 8, vocab_size=tdt.VOCAB)
    options = {"max_duration_s": 1.5, "max_label_length": 16, "nbest_size": 2}
    dataset = kd_batches.mixed_label_dataset(
        file_pattern=pattern,
        labeled_file_pattern=labeled,
        labeled_share=0.5,
        global_batch_size=tdt.B,
        seed=1,
        dataset_fn=functools.partial(
            pipeline.make_dataset, static_shapes=static, **(options if static else {})
        ),
    )
    trainer = None
    seen_labeled = False
    for batch in dataset.take(3):
        flags = batch["labeled"].numpy()
        frames = batch["soft_target_frames"].numpy()
        assert (frames[flags] == 0).all() and (frames[~flags] > 0).all()
        if static:
            assert batch["soft_targets"].shape[2] == 17
        if trainer is None:
            trainer = tdt.make_trainer(distillation.SoftDistillationTrainer, batch)
        terms = trainer.loss_terms(trainer.prepare_batch(batch), training=False)
        assert (terms["soft"].numpy()[flags] == 0).all()
        assert (terms["soft"].numpy()[~flags] > 0).all()
        seen_labeled |= flags.any()
    assert seen_labeled


def test_other_trainers_drop_stored_soft_targets(soft_records):
    _, pattern = soft_records
    batch = _record_batch(pattern)
    trainer = tdt.make_trainer(distillation.HardDistillationTrainer, batch)
    prepared = trainer.prepare_batch(batch)
    assert "soft_targets" not in prepared and "soft_target_frames" not in prepared
    soft = tdt.make_trainer(distillation.SoftDistillationTrainer, batch)
    assert "soft_targets" in soft.prepare_batch(batch)
