"""Ground truth mixed into distillation (METHODS §6): `mixed_label_dataset`, trainer terms."""

import gin
import numpy as np
import pytest
import tensorflow as tf
from test_distillation_trainers import (
    make_trainer,
    one_step,
    tiny_teacher,
    write_pseudo_label_records,
)
from training_records import write_tiny_records

from tfkd import config, preflight
from tfkd.data import kd_batches, pipeline
from tfkd.training import distillation, trainers

N = 3  # hypotheses in the pseudo-label records
STATIC = {
    "static_shapes": True,
    "max_duration_s": 1.5,
    "bucket_boundaries": [1.0],
    "max_label_length": 6,
    "nbest_size": N,
}
KD_TERMS = {
    distillation.HardDistillationTrainer: ("hard",),
    distillation.SoftDistillationTrainer: ("hard", "soft"),
    distillation.FullSumDistillationTrainer: ("fullsum",),
    distillation.DiscriminativeFullSumTrainer: ("fullsum", "disc"),
}


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """`(pseudo, labelled)` patterns: 2 files of 20 utterances each; vocabulary 16."""
    root = tmp_path_factory.mktemp("kd_batches")
    pseudo = write_pseudo_label_records(str(root / "pseudo"), num_files=2, per_file=20, nbest=N)
    labeled = write_tiny_records(str(root / "records"), "train-labeled", per_file=20)
    return pseudo, labeled


def mixed(records, share=0.25, batch_size=8, seed=3, **kwargs):
    pseudo, labeled = records
    return kd_batches.mixed_label_dataset(
        file_pattern=pseudo,
        labeled_file_pattern=labeled,
        labeled_share=share,
        global_batch_size=batch_size,
        seed=seed,
        **kwargs,
    )


def labeled_flags(dataset, num_batches):
    return np.concatenate([b["labeled"].numpy() for b in dataset.take(num_batches)])


def test_share_of_labelled_examples_is_seeded_and_right(records):
    flags = labeled_flags(mixed(records, repeat=True, shuffle=True), 100)
    assert flags.shape == (800,)
    # Binomial(800, 0.25): mean 200, standard deviation 12.2; the bounds are 3 of them.
    assert 163 <= flags.sum() <= 237, flags.sum()
    # The draw depends on the seed only, not on the (parallel, unordered) reading of the files.
    np.testing.assert_array_equal(labeled_flags(mixed(records, repeat=True), 100), flags)
    assert not np.array_equal(labeled_flags(mixed(records, repeat=True, seed=4), 100), flags)
    half = labeled_flags(mixed(records, share=0.5, repeat=True), 100)
    assert 358 <= half.sum() <= 442, half.sum()  # 400 ± 3 · 14.1


def test_labelled_rows_hold_their_transcript_and_no_hypotheses(records):
    pseudo, labeled = records
    transcripts = {}
    for pattern in (pseudo, labeled):
        for batch in pipeline.make_dataset(pattern, global_batch_size=40, with_text=True):
            for utt, ids, n in zip(
                batch["utterance_id"].numpy(),
                batch["token_ids"].numpy(),
                batch["label_length"].numpy(),
                strict=True,
            ):
                transcripts[utt.decode()] = ids[:n].tolist()
    seen = {True: 0, False: 0}
    for batch in mixed(records, with_text=True):
        b = {k: v.numpy() for k, v in batch.items()}
        for i, utt in enumerate(b["utterance_id"]):
            utt = utt.decode()
            is_labeled = bool(b["labeled"][i])
            seen[is_labeled] += 1
            assert utt.startswith("train-labeled") == is_labeled, utt
            assert b["token_ids"][i, : b["label_length"][i]].tolist() == transcripts[utt]
            if is_labeled:
                assert b["nbest_count"][i] == 0
                assert (b["nbest_lengths"][i] == 0).all() and (b["nbest_token_ids"][i] == 0).all()
                assert (b["teacher_scores"][i] == pipeline.NBEST_PAD_SCORE).all()
            else:
                assert b["nbest_count"][i] == N and (b["nbest_lengths"][i] > 0).all()
                assert (b["teacher_scores"][i] < 0).all() and (b["teacher_scores"][i] > -13).all()
    # One pass stops when a drawn stream is empty: here after all 40 pseudo-label examples (the
    # last, partial batch is kept in dynamic mode).
    assert seen[False] == 40 and 0 < seen[True] < 40, seen


def test_static_shapes_hold_and_rows_stay_in_their_bucket(records):
    ds = mixed(records, share=0.5, batch_size=4, repeat=True, **STATIC)
    spec = ds.element_spec
    assert spec["waveform"].shape.as_list() == [4, None]
    assert spec["token_ids"].shape == (4, 6) and spec["labeled"].shape == (4,)
    assert spec["nbest_token_ids"].shape == (4, N, 6)
    assert spec["nbest_lengths"].shape == spec["teacher_scores"].shape == (4, N)
    widths = set()
    for batch in ds.take(30):
        width = batch["waveform"].shape[1]
        widths.add(width)
        num_samples = batch["num_samples"].numpy()
        # 1.0 s and 1.5 s bucket edges: a batch holds the rows of one bucket.
        assert (num_samples <= width).all() and (num_samples > width - 8000).all()
        assert batch["nbest_token_ids"].shape == (4, N, 6)
    assert widths == {16000, 24000}


def test_input_pipelines_read_disjoint_shares(records):
    def context(i):
        return tf.distribute.InputContext(
            num_input_pipelines=2, input_pipeline_id=i, num_replicas_in_sync=2
        )

    seen = []
    for i in range(2):
        ds = mixed(records, share=0.5, input_context=context(i), with_text=True)
        ids = [u.decode() for b in ds for u in b["utterance_id"].numpy()]
        assert max(b["waveform"].shape[0] for b in ds) == 4  # 8 over two replicas
        seen.append(set(ids))
    assert seen[0] and seen[1] and not seen[0] & seen[1]


def test_bad_share_and_missing_records_raise(records, tmp_path):
    pseudo, labeled = records
    for share in (0.0, 1.0):
        with pytest.raises(ValueError, match="labeled_share"):
            mixed(records, share=share)
    with pytest.raises(FileNotFoundError, match="bin/pseudo_label"):
        mixed((str(tmp_path / "none-*.tfrecord"), labeled))
    with pytest.raises(FileNotFoundError, match="no labelled records"):
        mixed((pseudo, str(tmp_path / "none-*.tfrecord")))


@pytest.fixture(scope="module")
def mixed_batch(records):
    """A dynamic-shape batch of 4 with labelled and pseudo-label rows."""
    for batch in mixed(records, share=0.5, batch_size=4):
        if 0 < int(tf.reduce_sum(tf.cast(batch["labeled"], tf.int32))) < 4:
            return {k: v.numpy() for k, v in batch.items()}
    raise AssertionError("no mixed batch")


def rows(batch, keep):
    return {k: tf.constant(v[keep]) for k, v in batch.items()}


@pytest.mark.parametrize("cls", list(KD_TERMS))
def test_trainer_terms_on_a_mixed_batch(cls, mixed_batch):
    kwargs = {"loss_weights": {"rnnt_gt": 0.5}}
    if cls is distillation.SoftDistillationTrainer:
        kwargs["teacher"] = tiny_teacher()
    else:
        kwargs["nbest_size"] = N
    batch = {k: tf.constant(v) for k, v in mixed_batch.items()}
    trainer = make_trainer(cls, batch, **kwargs)
    labeled = mixed_batch["labeled"]
    terms = {k: v.numpy() for k, v in trainer.loss_terms(batch, training=False).items()}
    for name in KD_TERMS[cls]:
        assert (terms[name][labeled] == 0.0).all(), name
        assert (terms[name][~labeled] > 0.0).all(), name
    # rnnt_gt is the supervised RNN-T loss of the labelled rows, computed directly, and 0 elsewhere.
    feats, lengths = trainer.frontend(batch["waveform"], batch["num_samples"])
    supervised = trainers.rnnt_per_example(
        trainer.model, feats, lengths, batch["token_ids"], batch["label_length"], training=False
    ).numpy()
    np.testing.assert_allclose(terms["rnnt_gt"], np.where(labeled, supervised, 0.0), rtol=1e-5)

    # No gradient from the distillation terms of labelled-only rows.
    only_labeled = rows(mixed_batch, labeled)
    with tf.GradientTape() as tape:
        kd = trainer.loss_terms(only_labeled, training=False)
        kd_sum = tf.add_n([tf.reduce_sum(kd[name]) for name in KD_TERMS[cls]])
    assert float(kd_sum) == 0.0
    for grad in tape.gradient(kd_sum, trainer.trainable_variables):
        assert grad is None or not np.any(tf.convert_to_tensor(grad).numpy()), grad

    means = one_step(trainer, batch)
    np.testing.assert_allclose(
        float(means["rnnt_gt"]), supervised[labeled].sum() / len(labeled), rtol=1e-5
    )
    want = sum(float(means[name]) for name in KD_TERMS[cls]) + 0.5 * float(means["rnnt_gt"])
    np.testing.assert_allclose(float(means["loss"]), want, rtol=1e-5)


def test_a_batch_of_labelled_rows_only_has_an_empty_nbest(records):
    """Dynamic shapes: such a batch has one empty hypothesis slot of zero tokens."""
    for batch in mixed(records, share=0.5, batch_size=2, seed=0, repeat=True):
        if batch["labeled"].numpy().all():
            break
    assert batch["nbest_token_ids"].shape == (2, 1, 0)
    trainer = make_trainer(distillation.DiscriminativeFullSumTrainer, batch, nbest_size=N)
    terms = trainer.loss_terms(trainer.prepare_batch(batch), training=False)
    assert terms["fullsum"].numpy().tolist() == terms["disc"].numpy().tolist() == [0.0, 0.0]
    assert (terms["rnnt_gt"].numpy() > 0).all()


def test_gin_mixed_labeled_config_builds_static_mixed_batches(clean_gin, records, tmp_path):
    pseudo, labeled = records
    (tmp_path / "spm.model").write_bytes(b"")
    (tmp_path / "dev-00000.tfrecord").write_bytes(b"")
    bindings = [
        f"PSEUDO_LABEL_RECORDS = '{pseudo}'",
        f"SPM_MODEL = '{tmp_path}/spm.model'",
        f"DEV_RECORDS = '{tmp_path}/dev-*.tfrecord'",
        "BATCH_SIZE = 4",
        "LABELED_SHARE = 0.5",
    ]
    missing = bindings + [f"TRAIN_RECORDS = '{tmp_path}/none-*.tfrecord'"]
    config.parse_gin(["gin/fullsum_kd.gin", "gin/data/mixed_labeled.gin"], missing)
    message = preflight.missing_inputs(default_teacher_dir=str(tmp_path / "teacher"))
    assert message.startswith(f"LABELED_RECORDS = '{tmp_path}/none-*.tfrecord' matches nothing")
    gin.clear_config()
    config.parse_gin(
        ["gin/fullsum_kd.gin", "gin/data/mixed_labeled.gin"],
        bindings + [f"TRAIN_RECORDS = '{labeled}'"],
    )
    assert preflight.missing_inputs() is None
    assert gin.query_parameter("%GT_WEIGHT") == 1.0
    dataset_fn = gin.query_parameter("train.train_dataset_fn").scoped_configurable_fn
    batch = next(iter(dataset_fn(input_context=None, seed=0)))
    # gin/data/synthetic_small.gin: static shapes, MAX_LABEL_LENGTH 64, first bucket edge 2.5 s;
    # gin/data/pseudo_labels.gin: NBEST = 4 (the records hold 3).
    assert batch["nbest_token_ids"].shape == (4, 4, 64)
    assert batch["waveform"].shape == (4, 40000) and batch["labeled"].shape == (4,)
    assert gin.query_parameter("train.trainer_fn").selector == "FullSumDistillationTrainer"


def test_cut_nbest_cuts_or_pads_to_exactly_n_slots():
    batch = {
        "nbest_token_ids": tf.constant([[[5, 6]], [[7, 0]]]),
        "nbest_lengths": tf.constant([[2], [1]]),
        "teacher_scores": tf.constant([[-1.5], [-2.5]]),
        "nbest_count": tf.constant([1, 1]),
    }
    out = kd_batches.cut_nbest(batch, 3)
    assert out["nbest_token_ids"].numpy().tolist() == [
        [[5, 6], [0, 0], [0, 0]],
        [[7, 0], [0, 0], [0, 0]],
    ]
    assert out["nbest_lengths"].numpy().tolist() == [[2, 0, 0], [1, 0, 0]]
    pad = pipeline.NBEST_PAD_SCORE
    want = np.array([[-1.5, pad, pad], [-2.5, pad, pad]], np.float32)
    np.testing.assert_array_equal(out["teacher_scores"].numpy(), want)
    assert out["nbest_count"].numpy().tolist() == [1, 1]
    cut = kd_batches.cut_nbest(out, 2)
    assert cut["nbest_lengths"].numpy().tolist() == [[2, 0], [1, 0]]
