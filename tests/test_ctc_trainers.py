"""The CTC auxiliary term (`ctc_weight`) in the supervised and distillation trainers: values
against `ctc_loss` of the head computed by hand, targets, weighting, XLA, gin, checkpoints."""

import glob
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
import test_distillation_trainers as tdt
import test_training as tt
from training_records import write_tiny_records

from tfkd import checkpoints, config, losses
from tfkd.data import pipeline
from tfkd.training import distillation, loop, trainers

W = 0.3


def hand_ctc(trainer, batch, labels, label_lengths):
    """`ctc_loss` `[B]` of the trainer's head on its model's encoder, computed directly."""
    feats, lengths = trainer.frontend(batch["waveform"], batch["num_samples"])
    enc, enc_lengths = trainer.model.encode(feats, lengths, training=False)
    logits = trainer.ctc_head(enc)
    assert logits.shape[-1] == trainer.model.vocab_size
    return losses.ctc_loss(logits, labels, enc_lengths, label_lengths).numpy()


def ids(variables):
    return [id(v) for v in variables]


def changed(before, variables):
    return [not np.array_equal(b, v.numpy()) for b, v in zip(before, variables, strict=True)]


# ----------------------------------------------------------------------------------------------
# Supervised


def test_supervised_ctc_term_total_and_head_gradients():
    trainer, batch, iterator = tt.make_trainer(keras.optimizers.SGD(0.1), ctc_weight=W)
    assert trainer.term_names == ("rnnt", "ctc") and trainers.SupervisedTrainer.term_names == (
        "rnnt",
    )
    assert trainer.loss_weights == {"rnnt": 1.0, "ctc": W}
    head = trainer.ctc_head.trainable_variables
    assert len(head) == 2 and ids(trainer.trainable_variables[-2:]) == ids(head)
    assert trainer.checkpoint_objects() == {"ctc_head": trainer.ctc_head}
    terms = {k: v.numpy() for k, v in trainer.loss_terms(batch, training=False).items()}
    assert set(terms) == {"rnnt", "ctc"}
    want = hand_ctc(trainer, batch, batch["token_ids"], batch["label_length"])
    np.testing.assert_allclose(terms["ctc"], want, rtol=1e-6)
    assert np.all(want > 0)
    # The RNN-T term from the shared encoder pass is that of the whole model call.
    feats, lengths = trainer.features(batch, training=False)
    out = trainer.model(
        {"features": feats, "feature_lengths": lengths, "labels": batch["token_ids"]}
    )
    rnnt = losses.rnnt_loss(
        out["logits"], batch["token_ids"], out["logit_lengths"], batch["label_length"]
    )
    np.testing.assert_allclose(terms["rnnt"], rnnt.numpy(), rtol=1e-6)
    with tf.GradientTape() as tape:
        ctc = tf.reduce_sum(trainer.loss_terms(batch, training=False)["ctc"])
    grads = tape.gradient(ctc, trainer.trainable_variables)
    assert all(np.any(g.numpy() != 0) for g in grads[-2:])  # the head's kernel and bias
    before = [v.numpy() for v in trainer.trainable_variables]
    means = trainer.train_step(iterator)
    assert set(means) == {"rnnt", "ctc", "loss", "grad_norm"}
    np.testing.assert_allclose(float(means["ctc"]), want.mean(), rtol=1e-5)
    np.testing.assert_allclose(
        float(means["loss"]), float(means["rnnt"]) + W * float(means["ctc"]), rtol=1e-6
    )
    assert all(changed(before, trainer.trainable_variables))


def test_ctc_weight_zero_keeps_the_terms_and_variables_of_before():
    trainer, batch, _ = tt.make_trainer(ctc_weight=0.0)
    assert trainer.term_names == ("rnnt",) and trainer.loss_weights == {"rnnt": 1.0}
    assert trainer.ctc_head is None and trainer.checkpoint_objects() == {}
    assert ids(trainer.trainable_variables) == ids(trainer.model.trainable_variables)
    assert set(trainer.loss_terms(batch, training=False)) == {"rnnt"}
    with pytest.raises(ValueError, match="ctc_weight must be >= 0, got -0.1"):
        tt.make_trainer(ctc_weight=-0.1)
    with pytest.raises(ValueError, match=r"ctc_weight, not loss_weights\['ctc'\]"):
        tt.make_trainer(loss_weights={"ctc": 1.0})


def test_jit_compiled_ctc_step_matches_eager_step():
    runs = []
    for jit in (False, True):
        keras.utils.set_random_seed(1)
        trainer, _, iterator = tt.make_trainer(
            keras.optimizers.SGD(0.1), jit_compile=jit, ctc_weight=W
        )
        means = [trainer.train_step(iterator) for _ in range(2)]
        runs.append((means, [v.numpy() for v in trainer.ctc_head.trainable_variables]))
    (eager, eager_head), (xla, xla_head) = runs
    for m_e, m_x in zip(eager, xla, strict=True):
        np.testing.assert_allclose(float(m_x["ctc"]), float(m_e["ctc"]), rtol=1e-4)
        np.testing.assert_allclose(float(m_x["loss"]), float(m_e["loss"]), rtol=1e-4)
    for a, b in zip(eager_head, xla_head, strict=True):
        np.testing.assert_allclose(b, a, atol=1e-5)


def test_mixed_bfloat16_head_gives_a_float32_term():
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    try:
        trainer, batch, iterator = tt.make_trainer(ctc_weight=W)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    assert trainer.ctc_head.compute_dtype == "bfloat16"
    assert all(v.dtype == "float32" for v in trainer.trainable_variables)
    terms = trainer.loss_terms(batch, training=False)
    assert terms["ctc"].dtype == tf.float32 and np.all(np.isfinite(terms["ctc"].numpy()))
    assert np.isfinite(float(trainer.train_step(iterator)["ctc"]))


# ----------------------------------------------------------------------------------------------
# Distillation: ground truth on labelled rows, the teacher's 1-best elsewhere


def ctc_batch():
    """`offline_batch` with `labeled = [T, F, T, F]`, row 3 without hypotheses (no target at
    all), and transcripts padded wider (7) than the N-best (5)."""
    batch = tdt.offline_batch()
    batch["token_ids"] = tf.pad(batch["token_ids"], [[0, 0], [0, 2]])
    batch["labeled"] = tf.constant([True, False, True, False])
    batch["nbest_count"] = tf.constant([3, 3, 2, 0], tf.int32)
    lengths = batch["nbest_lengths"].numpy()
    lengths[3] = 0
    batch["nbest_lengths"] = tf.constant(lengths)
    scores = batch["teacher_scores"].numpy()
    scores[3] = pipeline.NBEST_PAD_SCORE
    batch["teacher_scores"] = tf.constant(scores)
    return batch


def truth_and_best(trainer, batch):
    """Hand-computed ctc `[B]` against the transcripts and against the 1-best."""
    truth = hand_ctc(trainer, batch, batch["token_ids"], batch["label_length"])
    hyp, hyp_lengths = distillation.first_best(batch)
    return truth, hand_ctc(trainer, batch, hyp, hyp_lengths)


# (trainer, options, whether to run a step too: tracing a step costs ~15 s, and the step code
# is shared; Soft checks the online teacher stays frozen, Disc has the most terms).
KD_CASES = [
    (distillation.HardDistillationTrainer, {}, False),
    (distillation.SoftDistillationTrainer, {"shift": 1}, True),
    (distillation.FullSumDistillationTrainer, {"nbest_size": tdt.N}, False),
    (distillation.DiscriminativeFullSumTrainer, {"nbest_size": tdt.N}, True),
]


@pytest.mark.parametrize("cls, kwargs, step", KD_CASES, ids=[c.__name__ for c, *_ in KD_CASES])
def test_distillation_ctc_targets_are_truth_on_labelled_rows_and_1best_elsewhere(cls, kwargs, step):
    batch = ctc_batch()
    teacher = tdt.tiny_teacher() if cls is distillation.SoftDistillationTrainer else None
    weights = {"rnnt_gt": 0.5}
    trainer = tdt.make_trainer(
        cls,
        batch,
        optimizer=keras.optimizers.SGD(0.1),
        teacher=teacher,
        loss_weights=weights,
        ctc_weight=W,
        **kwargs,
    )
    assert trainer.term_names == (*cls.term_names, "ctc")
    terms = {k: v.numpy() for k, v in trainer.loss_terms(batch, training=False).items()}
    assert set(terms) == set(trainer.term_names)
    truth, best = truth_and_best(trainer, batch)
    # rtol 1e-6 below tells the two targets apart (values ~20, differences >= 5e-3).
    assert np.all(np.abs(truth[:3] - best[:3]) > 1e-3)
    np.testing.assert_allclose(terms["ctc"], [truth[0], best[1], truth[2], 0.0], rtol=1e-6)
    assert terms["ctc"][3] == 0.0
    if not step:
        return
    # The head trains, the teacher (if any) does not; the total is the weighted sum.
    head_before = [v.numpy() for v in trainer.ctc_head.trainable_variables]
    teacher_before = [v.numpy() for v in teacher.weights] if teacher else []
    means = {k: float(v) for k, v in tdt.one_step(trainer, batch).items()}
    np.testing.assert_allclose(means["ctc"], terms["ctc"].mean(), rtol=1e-5)
    want = sum(weights.get(k, 1.0) * means[k] for k in cls.term_names) + W * means["ctc"]
    np.testing.assert_allclose(means["loss"], want, rtol=1e-5)
    assert all(changed(head_before, trainer.ctc_head.trainable_variables))
    if teacher is not None:
        assert not any(changed(teacher_before, teacher.weights))
        ids = {id(v) for v in trainer.trainable_variables}
        assert ids.isdisjoint(id(v) for v in teacher.weights)


@pytest.mark.parametrize(
    "ground_truth, labeled, rows",
    [
        ("all", True, "TTTT"),
        ("none", True, "BBB0"),
        ("flag", False, "BBB0"),  # no `labeled` field: transcripts are not read
    ],
)
def test_ground_truth_mode_chooses_the_ctc_targets(ground_truth, labeled, rows):
    batch = ctc_batch()
    if not labeled:
        del batch["labeled"]
        batch["token_ids"] = tf.fill(tf.shape(batch["token_ids"]), 99)  # out of range: unread
    trainer = tdt.make_trainer(
        distillation.HardDistillationTrainer, batch, ground_truth=ground_truth, ctc_weight=W
    )
    got = trainer.loss_terms(batch, training=False)["ctc"].numpy()
    best = hand_ctc(trainer, batch, *distillation.first_best(batch))
    truth = hand_ctc(trainer, batch, batch["token_ids"], batch["label_length"]) if labeled else None
    want = [{"T": truth, "B": best}[r][b] if r != "0" else 0.0 for b, r in enumerate(rows)]
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_distillation_ctc_weight_zero_and_one_encoder_pass(monkeypatch):
    batch = ctc_batch()
    off = tdt.make_trainer(distillation.FullSumDistillationTrainer, batch, nbest_size=tdt.N)
    assert off.term_names == ("fullsum", "rnnt_gt") and off.ctc_head is None
    assert ids(off.trainable_variables) == ids(off.model.trainable_variables)
    assert set(off.loss_terms(batch, training=False)) == {"fullsum", "rnnt_gt"}
    on = tdt.make_trainer(
        distillation.FullSumDistillationTrainer, batch, nbest_size=tdt.N, ctc_weight=W
    )
    calls = []
    encode = on.model.encode

    def counting_encode(*args, **kwargs):
        calls.append(1)
        return encode(*args, **kwargs)

    monkeypatch.setattr(on.model, "encode", counting_encode)
    assert set(on.loss_terms(batch, training=False)) == {"fullsum", "rnnt_gt", "ctc"}
    assert len(calls) == 1


def test_evaluation_reports_ctc_on_batches_of_other_label_widths():
    """The eval step is a plain graph that retraces with unknown shapes (`reduce_retracing`)."""
    batches = [ctc_batch()]
    wider = ctc_batch()
    wider["token_ids"] = tf.pad(wider["token_ids"], [[0, 0], [0, 3]])
    wider["nbest_token_ids"] = tf.pad(wider["nbest_token_ids"], [[0, 0], [0, 0], [0, 9]])
    batches += [wider, {k: v[:3] for k, v in wider.items()}]
    trainer = tdt.make_trainer(
        distillation.HardDistillationTrainer, batches[0], ctc_weight=W, loss_weights={"hard": 0.5}
    )
    ctc = np.concatenate([trainer.loss_terms(b, training=False)["ctc"].numpy() for b in batches])
    results = trainer.evaluate(batches)
    np.testing.assert_allclose(results["ctc"], ctc.mean(), rtol=1e-5)
    want = 0.5 * results["hard"] + results["rnnt_gt"] + W * results["ctc"]
    np.testing.assert_allclose(results["loss"], want, rtol=1e-5)


def test_xla_distillation_step_with_ctc_matches_eager():
    batch = ctc_batch()
    runs = []
    for jit in (False, True):
        keras.utils.set_random_seed(2)
        trainer = tdt.make_trainer(
            distillation.FullSumDistillationTrainer,
            batch,
            optimizer=keras.optimizers.SGD(0.05),
            nbest_size=tdt.N,
            share_prefixes=False,
            jit_compile=jit,
            ctc_weight=W,
        )
        runs.append([{k: float(v) for k, v in tdt.one_step(trainer, batch).items()}])
        runs[-1].append([v.numpy() for v in trainer.ctc_head.trainable_variables])
    (eager, eager_head), (xla, xla_head) = runs
    for name in ("ctc", "fullsum", "rnnt_gt", "loss"):
        np.testing.assert_allclose(xla[name], eager[name], rtol=1e-4, err_msg=name)
    for a, b in zip(eager_head, xla_head, strict=True):
        np.testing.assert_allclose(b, a, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# gin, TensorBoard, checkpoints


def test_gin_binding_logs_ctc_and_the_checkpoint_restores_into_a_plain_model(clean_gin, tmp_path):
    pattern = write_tiny_records(str(tmp_path / "records"), vocab_size=tt.VOCAB)
    model_dir = tmp_path / "run"
    config.parse_gin(
        ["gin/test/tiny.gin"],
        [
            f"TRAIN_RECORDS = '{pattern}'",
            "NUM_STEPS = 2",
            "train.progress = False",
            f"SupervisedTrainer.ctc_weight = {W}",
        ],
    )
    last = config.train(str(model_dir))
    assert set(last) >= {"rnnt", "ctc", "loss"} and last["ctc"] > 0
    assert f"SupervisedTrainer.ctc_weight = {W}" in (model_dir / loop.OPERATIVE_CONFIG).read_text()
    tags = set()
    for path in glob.glob(str(model_dir / "train" / "events.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags.update(v.tag for v in event.summary.value)
    assert {"rnnt", "ctc", "loss"} <= tags
    latest = tf.train.latest_checkpoint(str(model_dir))
    keys = tf.train.load_checkpoint(latest).get_variable_to_shape_map()
    assert sorted(k for k in keys if k.startswith("ctc_head/")) == [
        "ctc_head/_kernel/.ATTRIBUTES/VARIABLE_VALUE",
        "ctc_head/bias/.ATTRIBUTES/VARIABLE_VALUE",
    ]
    assert keys["ctc_head/_kernel/.ATTRIBUTES/VARIABLE_VALUE"] == [32, tt.VOCAB]
    # Evaluation and export read only `model`: the same model as a run without the head.
    model = tt.tiny_model().build_by_calling(num_features=80)
    assert checkpoints.load_checkpoint(model, str(model_dir)) == (latest, 2)
    assert len(model.weights) > 0 and not any("ctc" in w.path for w in model.weights)


def test_resume_restores_the_ctc_head(tmp_path):
    pattern = write_tiny_records(str(tmp_path / "records"), vocab_size=tt.VOCAB)
    made = []

    def trainer_fn(*args, **kwargs):
        made.append(trainers.SupervisedTrainer(*args, jit_compile=False, ctc_weight=W, **kwargs))
        return made[-1]

    def dataset_fn(input_context, seed):
        return pipeline.make_dataset(
            pattern, global_batch_size=tt.B, shuffle=True, seed=seed, repeat=True
        )

    kwargs = dict(
        model_fn=tt.tiny_model,
        train_dataset_fn=dataset_fn,
        global_batch_size=tt.B,
        trainer_fn=trainer_fn,
        checkpoint_every=2,
        progress=False,
    )
    model_dir = str(tmp_path / "run")
    loop.train(model_dir, num_steps=2, **kwargs)
    trained = [v.numpy() for v in made[0].ctc_head.weights]
    # Same seed: a fresh head starts from the first run's initial weights, not the trained ones.
    assert loop.train(model_dir, num_steps=2, **kwargs) == {}
    assert len(made) == 2 and made[1].ctc_head is not made[0].ctc_head
    for want, got in zip(trained, made[1].ctc_head.weights, strict=True):
        np.testing.assert_array_equal(got.numpy(), want)
    last = loop.train(model_dir, num_steps=3, **kwargs)  # and training continues from there
    assert last["ctc"] > 0 and tf.train.latest_checkpoint(model_dir).endswith("ckpt-3")
    assert os.path.exists(os.path.join(model_dir, "ckpt-3.index"))


_MIRRORED_KD = """
import json, sys
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
sys.path.insert(0, "tests")
import test_ctc_trainers as c
import test_distillation_trainers as t
from tfkd.training import distillation

# Replica 0 gets a labelled row and a 1-best row, replica 1 a labelled row and one without target.
batch = {k: v.numpy() for k, v in c.ctc_batch().items()}

def run(strategy):
    keras.utils.set_random_seed(0)
    with strategy.scope():
        trainer = distillation.HardDistillationTrainer(
            t.tiny_student(), keras.optimizers.Adam(1e-2), strategy=strategy,
            global_batch_size=t.B, clip_norm=1.0, jit_compile=False, ctc_weight=c.W)
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
    head = [v.numpy().tolist() for v in trainer.ctc_head.trainable_variables]
    return means, head

one = run(tf.distribute.OneDeviceStrategy("/cpu:0"))
two = run(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
print(json.dumps({"one": one, "two": two}))
"""


@pytest.mark.slow  # ~60 s: a subprocess with two logical CPUs, two strategies
def test_distillation_ctc_under_two_replica_mirrored_equals_one_device():
    out = subprocess.run(
        [sys.executable, "-c", _MIRRORED_KD],
        cwd=tdt.REPO,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": tdt.REPO},
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    (means_one, head_one), (means_two, head_two) = result["one"], result["two"]
    for step_one, step_two in zip(means_one, means_two, strict=True):
        for name in ("ctc", "hard", "rnnt_gt", "loss"):
            np.testing.assert_allclose(step_two[name], step_one[name], rtol=1e-4, err_msg=name)
        assert step_one["ctc"] > 0
    for w_one, w_two in zip(head_one, head_two, strict=True):
        np.testing.assert_allclose(np.array(w_two), np.array(w_one), rtol=1e-4, atol=1e-6)
