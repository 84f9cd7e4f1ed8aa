"""Periodic dev evaluation: dev WER, and dev distillation loss from pseudo-labelled dev records."""

import logging
import os

import gin
import numpy as np
import pytest
import tensorflow as tf
from test_distillation_trainers import VOCAB, make_trainer
from training_records import write_tiny_records

from tfkd import config, pseudo_label
from tfkd.data import pipeline, tokenizer
from tfkd.training import distillation, periodic_wer

N = 3
DEV_BATCH = 4


@pytest.fixture(scope="module")
def dev(tmp_path_factory):
    """`(plain, pseudo_labelled, spm_model)`: 7 dev utterances, and the same with an N-best."""
    root = tmp_path_factory.mktemp("dev")
    plain = write_tiny_records(str(root / "records"), "dev", num_files=1, per_file=7, seed=5)
    rng = np.random.default_rng(1)
    os.makedirs(root / "pseudo-dev")
    # As bin/pseudo_label writes them: the same records plus N-best fields (a made-up teacher).
    for path in tf.io.gfile.glob(plain):
        out = os.path.join(root / "pseudo-dev", os.path.basename(path))
        with tf.io.TFRecordWriter(out) as writer:
            for serialized in tf.data.TFRecordDataset(path).as_numpy_iterator():
                count = int(rng.integers(1, N + 1))  # some utterances have fewer hypotheses
                hyps = [rng.integers(1, VOCAB, size=int(rng.integers(1, 6))) for _ in range(count)]
                scores = np.sort(-rng.uniform(2.0, 10.0, size=count))[::-1]
                writer.write(pseudo_label.add_nbest(serialized, hyps, scores))
    texts = [" ".join(map(str, rng.integers(1, VOCAB, size=5))) for _ in range(200)]
    spm = tokenizer.train_sentencepiece(texts, str(root / "spm" / "spm"), VOCAB)
    return plain, str(root / "pseudo-dev" / "dev-*.tfrecord"), spm


def dev_data(plain):
    """Like gin's `@dev_data/make_dataset`: the plain split unless called with overrides."""

    def dataset_fn(file_pattern=plain, **kwargs):
        return pipeline.make_dataset(file_pattern, global_batch_size=DEV_BATCH, **kwargs)

    return dataset_fn


@pytest.fixture(scope="module")
def trainer(dev):
    _, pseudo, _ = dev
    batch = next(iter(pipeline.make_dataset(pseudo, global_batch_size=7, with_nbest=True)))
    return make_trainer(distillation.FullSumDistillationTrainer, batch, nbest_size=N)


def test_pseudo_labelled_dev_reports_wer_and_the_trainers_dev_loss(dev, trainer):
    plain, pseudo, spm = dev
    evaluator = periodic_wer.WerEvaluator(dev_data(plain), spm, nbest_file_pattern=pseudo)
    out = evaluator(trainer)
    assert set(out) == {"dev/wer", "dev/fullsum", "dev/rnnt_gt", "dev/loss"}
    # The values of the trainer's own evaluate() on the pseudo-labelled records...
    ds = pipeline.make_dataset(pseudo, global_batch_size=DEV_BATCH, with_nbest=True)
    want = trainer.evaluate(trainer.strategy.experimental_distribute_dataset(ds))
    for name in ("fullsum", "rnnt_gt", "loss"):
        np.testing.assert_allclose(out[f"dev/{name}"], want[name], rtol=1e-6)
    # ... which are the means of the per-utterance terms over the whole split (7 utterances).
    whole = next(iter(pipeline.make_dataset(pseudo, global_batch_size=7, with_nbest=True)))
    terms = trainer.loss_terms(trainer.prepare_batch(whole), training=False)
    np.testing.assert_allclose(out["dev/fullsum"], terms["fullsum"].numpy().mean(), rtol=1e-5)
    assert out["dev/fullsum"] > 0 and out["dev/rnnt_gt"] == 0.0  # no `labeled` field
    # Same audio and transcripts: the WER equals that of the plain dev records.
    plain_only = periodic_wer.WerEvaluator(dev_data(plain), spm, with_loss=False)
    assert plain_only(trainer) == {"dev/wer": out["dev/wer"]}


def test_missing_dev_pseudo_labels_fall_back_to_wer_with_one_warning(dev, trainer, caplog):
    plain, _, spm = dev
    missing = os.path.join(os.path.dirname(plain), "nothing", "dev-*.tfrecord")
    evaluator = periodic_wer.WerEvaluator(dev_data(plain), spm, nbest_file_pattern=missing)
    with caplog.at_level(logging.WARNING, logger="tfkd.eval"):
        first = evaluator(trainer)
        second = evaluator(trainer)
    assert set(first) == {"dev/wer"} and first == second
    warnings = [r.getMessage() for r in caplog.records if r.name == "tfkd.eval"]
    assert len(warnings) == 1, warnings
    assert missing in warnings[0] and periodic_wer.PSEUDO_LABEL_DEV_COMMAND in warnings[0]


@pytest.mark.parametrize(
    "gin_file",
    ["gin/hard_kd.gin", "gin/soft_kd.gin", "gin/fullsum_kd.gin", "gin/fullsum_disc_kd.gin"],
)
def test_kd_configs_evaluate_on_pseudo_labelled_dev(clean_gin, gin_file):
    config.parse_gin([gin_file])
    assert gin.query_parameter("%PSEUDO_LABEL_DEV_RECORDS") == "data/pseudo-dev/dev-*.tfrecord"
    assert gin.query_parameter("WerEvaluator.nbest_file_pattern").selector == "gin.macro"
    with pytest.raises(ValueError):
        gin.query_parameter("WerEvaluator.with_loss")  # unbound: the default, True


def test_gin_evaluator_reads_pseudo_labelled_dev_through_dev_data(clean_gin, dev, trainer):
    plain, pseudo, spm = dev
    bindings = [
        f"SPM_MODEL = '{spm}'",
        f"DEV_RECORDS = '{plain}'",
        f"PSEUDO_LABEL_DEV_RECORDS = '{pseudo}'",
        "BATCH_SIZE = 4",
    ]
    config.parse_gin(["gin/fullsum_kd.gin"], bindings)
    evaluator = gin.query_parameter("train.eval_fn").scoped_configurable_fn()
    out = evaluator(trainer)
    whole = next(iter(pipeline.make_dataset(pseudo, global_batch_size=7, with_nbest=True)))
    terms = trainer.loss_terms(trainer.prepare_batch(whole), training=False)
    np.testing.assert_allclose(out["dev/fullsum"], terms["fullsum"].numpy().mean(), rtol=1e-5)
    assert set(out) == {"dev/wer", "dev/fullsum", "dev/rnnt_gt", "dev/loss"}


def test_eval_suite_merges_its_evaluators_and_names_a_duplicate(dev):
    plain, _, spm = dev
    suite = periodic_wer.EvalSuite([lambda t: {"dev/wer": 1.0}, lambda t: {"train/wer": 2.0}])
    assert suite(None) == {"dev/wer": 1.0, "train/wer": 2.0}
    clash = periodic_wer.EvalSuite([lambda t: {"dev/wer": 1.0}, lambda t: {"dev/wer": 2.0}])
    with pytest.raises(ValueError, match="report 'dev/wer'"):
        clash(None)
    # Two WerEvaluators of one split are refused when the suite is built, before any training.
    twins = [periodic_wer.WerEvaluator(dev_data(plain), spm) for _ in range(2)]
    with pytest.raises(ValueError, match="split 'dev'"):
        periodic_wer.EvalSuite(twins)
    with pytest.raises(ValueError, match="at least one evaluator"):
        periodic_wer.EvalSuite([])


def _labels(dataset):
    return sorted(
        tuple(ids[:n])
        for batch in dataset
        for ids, n in zip(
            batch["token_ids"].numpy().tolist(), batch["label_length"].numpy(), strict=True
        )
    )


def test_train_subset_gin_adds_train_wer_beside_dev_on_top_of_teacher_gin(clean_gin, dev, tmp_path):
    plain, _, spm = dev
    train = write_tiny_records(str(tmp_path), "train", num_files=2, per_file=5, seed=9)
    bindings = [f"SPM_MODEL = '{spm}'", f"DEV_RECORDS = '{plain}'", f"TRAIN_RECORDS = '{train}'"]
    config.parse_gin(["gin/teacher.gin", "gin/eval/train_subset.gin"], bindings)
    suite = gin.query_parameter("train.eval_fn").scoped_configurable_fn()
    assert isinstance(suite, periodic_wer.EvalSuite)
    dev_eval, train_eval = suite.evaluators
    assert (dev_eval.split, dev_eval.max_batches, dev_eval.with_loss) == ("dev", 8, True)
    assert (train_eval.split, train_eval.max_batches, train_eval.with_loss) == ("train", 16, False)
    assert train_eval.nbest_file_pattern is None and train_eval.decoder == "greedy"
    # The training records, once (finite), unshuffled: the same utterances at every evaluation.
    subset = train_eval.dataset_fn()
    want = _labels(pipeline.make_dataset(train, global_batch_size=16))
    assert len(want) == 10 and _labels(subset) == want == _labels(train_eval.dataset_fn())
    assert _labels(dev_eval.dataset_fn()) == _labels(
        pipeline.make_dataset(plain, global_batch_size=16)
    )


def test_train_subset_gin_reports_train_wer_beside_the_kd_dev_terms(clean_gin, dev, trainer):
    plain, pseudo, spm = dev
    bindings = [
        f"SPM_MODEL = '{spm}'",
        f"DEV_RECORDS = '{plain}'",
        f"PSEUDO_LABEL_DEV_RECORDS = '{pseudo}'",
        f"TRAIN_RECORDS = '{plain}'",
        "BATCH_SIZE = 4",
    ]
    config.parse_gin(["gin/fullsum_kd.gin", "gin/eval/train_subset.gin"], bindings)
    suite = gin.query_parameter("train.eval_fn").scoped_configurable_fn()
    assert suite.evaluators[0].nbest_file_pattern == pseudo  # the dev evaluator's, unscoped
    out = suite(trainer)
    assert set(out) == {"dev/wer", "dev/fullsum", "dev/rnnt_gt", "dev/loss", "train/wer"}
    # Both read the same audio here: the same greedy WER.
    assert out["train/wer"] == out["dev/wer"]
