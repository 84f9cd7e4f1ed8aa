"""Issue 21: inconsistent inputs are refused before the first step, in one line naming the fix.

Records are made by tfkd's own tools (`librispeech.prepare`, as tools/prepare_librispeech.py
does, and `tests/training_records.py`); SentencePiece models by `train_sentencepiece`.
"""

import os
import shutil

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf
from audio_fixtures import signal, write_flac
from training_records import write_tiny_records

from tfkd import config, preflight
from tfkd.data import kd_batches, librispeech, pipeline, reading, records
from tfkd.data.tokenizer import Tokenizer, train_sentencepiece

TEXTS = {
    "19-198-0000": "THE QUICK BROWN FOX",
    "19-198-0001": "JUMPS OVER THE LAZY DOG",
    "19-198-0002": "AND GOD SAID LET THERE BE LIGHT",
    "26-495-0000": "A BIG CAT SAT ON THE MAT",
}
SENTENCES = [t.lower() for t in TEXTS.values()] * 5 + ["the mat ran on a dog"] * 5
V = 36  # both SentencePiece models' size


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Two SentencePiece models of one size (unigram `a`, bpe `b`) and records made from a tiny
    LibriSpeech-layout tree with `a` and without any model."""
    root = tmp_path_factory.mktemp("preflight")
    corpus = root / "corpus" / "train"
    lines = {}
    for i, (uid, text) in enumerate(TEXTS.items()):
        spk, chap, _ = uid.split("-")
        write_flac(str(corpus / spk / chap / f"{uid}.flac"), signal(i, 4000 + 500 * i))
        lines.setdefault((spk, chap), []).append(f"{uid} {text}")
    for (spk, chap), ls in lines.items():
        (corpus / spk / chap / f"{spk}-{chap}.trans.txt").write_text("\n".join(ls) + "\n")
    spm_a = train_sentencepiece(SENTENCES, str(root / "spm" / "a"), V, hard_vocab_limit=True)
    spm_b = train_sentencepiece(
        SENTENCES, str(root / "spm" / "b"), V, model_type="bpe", hard_vocab_limit=True
    )
    assert Tokenizer(spm_a).pieces != Tokenizer(spm_b).pieces
    for name, spm in (("plain", None), ("a", spm_a)):
        librispeech.prepare(
            str(corpus), str(root / name), spm_model=spm, num_shards=1, progress=False
        )
    return {
        "root": root,
        "spm_a": spm_a,
        "spm_b": spm_b,
        "plain": f"{root}/plain/train-*.tfrecord",
        "a": f"{root}/a/train-*.tfrecord",
    }


def _message(gin_file, bindings):
    gin.clear_config()
    try:
        config.parse_gin([gin_file], bindings)
        assert preflight.missing_inputs() is None
        return preflight.inconsistent_inputs()
    finally:
        gin.clear_config()


def _teacher_gin(data, spm, records, vocab=V):
    """gin/teacher.gin bindings on the fixture records (SPM_MODEL, VOCAB_SIZE, both splits)."""
    return [
        f"SPM_MODEL = '{spm}'",
        f"VOCAB_SIZE = {vocab}",
        f"TRAIN_RECORDS = '{records}'",
        f"DEV_RECORDS = '{records}'",
    ]


def test_records_without_token_ids_are_refused(data, tmp_path):
    # Item 1: the case, tiny.gin (no SPM_MODEL) on records made without --spm_model.
    message = _message("gin/test/tiny.gin", [f"TRAIN_RECORDS = '{data['plain']}'"])
    manifest = data["root"] / "plain" / "train.manifest.json"
    assert message.startswith(
        f"TRAIN_RECORDS = '{data['plain']}': {manifest} says these records were made without "
        "--spm_model, so they hold no token ids (training would fit empty labels); re-make them "
        "with python tools/prepare_librispeech.py "
    ), message
    assert "\n" not in message and message.endswith("--spm_model <SPM_MODEL>")
    # Without the manifest the records themselves are read: text, but no token ids.
    for f in tf.io.gfile.glob(data["plain"]):
        shutil.copy(f, tmp_path)
    pattern = f"{tmp_path}/train-*.tfrecord"
    message = _message("gin/test/tiny.gin", [f"TRAIN_RECORDS = '{pattern}'"])
    assert f"the first 4 records of {tmp_path}/train-00000-of-00001.tfrecord have text but no " in (
        message
    )
    assert "token ids (made without --spm_model?)" in message
    # The same corpus prepared with a model passes.
    assert _message("gin/teacher.gin", _teacher_gin(data, data["spm_a"], data["a"])) is None


def test_records_of_another_sentencepiece_model_are_refused(data):
    # Item 2: same size, other pieces (bpe instead of unigram): the vocabularies differ.
    message = _message("gin/teacher.gin", _teacher_gin(data, data["spm_b"], data["a"]))
    manifest = data["root"] / "a" / "train.manifest.json"
    assert message.startswith(
        f"TRAIN_RECORDS = '{data['a']}' were tokenised with {data['spm_a']} (per {manifest}), "
        f"whose vocabulary differs from SPM_MODEL = '{data['spm_b']}'; re-make the records with "
        f"python tools/prepare_librispeech.py "
    ), message
    assert message.endswith(f"--spm_model {data['spm_b']}, or set SPM_MODEL = '{data['spm_a']}'")


def test_records_model_compared_by_content_hash_when_the_manifest_has_one(data, tmp_path):
    # A manifest that stores the model's SHA-256: a rewritten model at the same path differs.
    import json

    shutil.copytree(data["root"] / "a", tmp_path / "a")
    spm = str(tmp_path / "a.model")
    shutil.copy(data["spm_a"], spm)
    manifest = tmp_path / "a" / "train.manifest.json"
    entries = json.loads(manifest.read_text())
    entries.update(spm_model=spm, spm_sha256="0" * 64)
    manifest.write_text(json.dumps(entries))
    records = f"{tmp_path}/a/train-*.tfrecord"
    message = _message("gin/teacher.gin", _teacher_gin(data, spm, records))
    assert f"whose content hash differs from SPM_MODEL = '{spm}'" in message, message


def test_vocab_size_is_checked_against_the_model_and_the_records(data, tmp_path):
    # Item 3: larger than the SentencePiece model.
    message = _message("gin/teacher.gin", _teacher_gin(data, data["spm_a"], data["a"], vocab=40))
    assert message == (
        f"VOCAB_SIZE = 40 but SPM_MODEL = '{data['spm_a']}' has {V} pieces (blank included); "
        f"set --gin_bindings='VOCAB_SIZE = {V}' (the model's output size must equal the "
        "SentencePiece model's)"
    )
    # Smaller than the records' ids, with no SentencePiece model named (tiny.gin).
    pattern = write_tiny_records(str(tmp_path), "train", num_files=1, per_file=8, vocab_size=16)
    message = _message("gin/test/tiny.gin", [f"TRAIN_RECORDS = '{pattern}'", "VOCAB_SIZE = 8"])
    assert message.startswith(f"{tmp_path}/train-00000-of-00001.tfrecord holds token id 1"), message
    assert "but VOCAB_SIZE = 8 allows ids below 8: set VOCAB_SIZE to the size" in message
    assert _message("gin/test/tiny.gin", [f"TRAIN_RECORDS = '{pattern}'"]) is None
    # Without SPM_MODEL, the manifest's vocabulary size still tells.
    message = _message("gin/test/tiny.gin", [f"TRAIN_RECORDS = '{data['a']}'", "VOCAB_SIZE = 30"])
    assert message.startswith(
        f"VOCAB_SIZE = 30 but TRAIN_RECORDS = '{data['a']}' were tokenised with a {V}-piece "
    ), message
    assert message.endswith(f"set --gin_bindings='VOCAB_SIZE = {V}'")


def test_plain_records_as_pseudo_labels_name_the_missing_fields(data, tmp_path):
    # Item 12.
    pattern = write_tiny_records(str(tmp_path / "pseudo"), "train-unlabeled", 1, 2)
    path = f"{tmp_path}/pseudo/train-unlabeled-00000-of-00001.tfrecord"
    bindings = _teacher_gin(data, data["spm_a"], data["a"])
    bindings += [f"PSEUDO_LABEL_RECORDS = '{pattern}'", f"TEACHER_DIR = '{tmp_path}/teacher'"]
    gin.clear_config()
    try:
        config.parse_gin(["gin/fullsum_kd.gin"], bindings)
        message = preflight.inconsistent_inputs()
    finally:
        gin.clear_config()
    fields = "nbest/token_ids, nbest/lengths, nbest/teacher_scores"
    assert message == (
        f"PSEUDO_LABEL_RECORDS = '{pattern}': {path}: record 0 lacks the N-best fields "
        f"{fields}: these are plain records, not pseudo-labels; make pseudo-labels with "
        f"bin/pseudo_label --teacher_dir={tmp_path}/teacher --output_dir={tmp_path}/pseudo"
    )
    # The pipeline says the same when called directly (no "parse error logged above").
    with pytest.raises(ValueError, match=f"lacks the N-best fields {fields}: these are plain"):
        pipeline.make_dataset(pattern, global_batch_size=2, with_nbest=True)
    with pytest.raises(ValueError, match="bin/pseudo_label --teacher_dir=runs/teacher --output"):
        kd_batches.pseudo_label_dataset(file_pattern=pattern, global_batch_size=2)


def _teacher_dir(data, tmp_path, bindings=()):
    """A teacher model dir: its gin config (gin/teacher.gin + `bindings`) and a checkpoint."""
    teacher_dir = tmp_path / "teacher"
    teacher_dir.mkdir()
    gin.clear_config()
    try:
        text = config.parse_gin(
            ["gin/teacher.gin"], _teacher_gin(data, data["spm_a"], data["a"]) + list(bindings)
        )
    finally:
        gin.clear_config()
    (teacher_dir / "operative_config.gin").write_text(text)
    # The checkpoint's contents do not matter to the preflight, only that they read back.
    weights = tf.Variable(np.arange(4096, dtype=np.float32))
    ckpt = tf.train.Checkpoint(model=keras.layers.Layer(), w=weights, step=tf.Variable(3))
    tf.train.CheckpointManager(ckpt, str(teacher_dir), 1, checkpoint_name="ckpt").save(3)
    return teacher_dir


def _soft_kd(data, teacher_dir, extra=()):
    # Item 11 runs with an online teacher: gin/soft_kd.gin (`teacher_fn = @conformer_teacher`).
    pseudo = teacher_dir.parent / "pseudo" / "train-unlabeled-00000-of-00001.tfrecord"
    if not pseudo.exists():
        pseudo.parent.mkdir()
        utt = records.Utterance(
            utterance_id="u",
            speaker_id="0",
            text="a",
            pcm16=np.zeros(8000, np.int16),
            nbest_token_ids=[[3, 4]],
            nbest_teacher_scores=[-1.0],
        )
        with tf.io.TFRecordWriter(str(pseudo)) as writer:
            writer.write(records.serialize_utterance(utt))
    return _message(
        "gin/soft_kd.gin",
        _teacher_gin(data, data["spm_a"], data["a"])
        + [f"TEACHER_DIR = '{teacher_dir}'", f"PSEUDO_LABEL_RECORDS = '{pseudo}'"]
        + list(extra),
    )


def test_teacher_checkpoint_is_read_and_matched_to_its_operative_config(data, tmp_path):
    # Item 11: the run builds its teacher with other bindings than the checkpoint was trained.
    teacher_dir = _teacher_dir(data, tmp_path, ["conformer_teacher.num_layers = 2"])
    gin.clear_config()
    path = f"{teacher_dir}/ckpt-3"
    message = _soft_kd(data, teacher_dir)
    assert message == (
        f"teacher checkpoint {path} does not fit this run's teacher: its "
        f"{teacher_dir}/operative_config.gin differs (conformer_teacher.num_layers = 2 there, "
        "4 here); bind them as the teacher was trained: "
        "--gin_bindings='conformer_teacher.num_layers = 2'"
    )
    assert _soft_kd(data, teacher_dir, ["conformer_teacher.num_layers = 2"]) is None
    # A corrupt checkpoint: the data file loses its tail.
    (data_file,) = tf.io.gfile.glob(f"{path}.data-*")
    with open(data_file, "r+b") as f:
        f.truncate(os.path.getsize(data_file) // 2)
    message = _soft_kd(data, teacher_dir, ["conformer_teacher.num_layers = 2"])
    assert message.startswith(f"teacher checkpoint {path} is unreadable ("), message
    assert message.endswith(
        f"restore its files ({path}.index, {path}.data-*) from a copy, point TEACHER_DIR "
        f"elsewhere, or retrain it with bin/train --gin_file=gin/teacher.gin "
        f"--model_dir={teacher_dir}"
    )
    assert "\n" not in message


def test_skipped_records_are_logged_and_counted(tmp_path, caplog):
    # Item 7 (the data side; the TensorBoard scalar is tested in test_training_skips below).
    pattern = write_tiny_records(str(tmp_path), "train", num_files=1, per_file=3)
    (path,) = tf.io.gfile.glob(pattern)
    with open(path, "ab") as f:
        f.write(b"\x07" * 40)  # a truncated record at the end
    reading.reset_skipped_records()
    assert reading.skipped_records() is None
    try:
        with caplog.at_level("INFO", logger="tfkd.data.reading"):
            ds = pipeline.make_dataset(pattern, global_batch_size=8, skip_bad_records=True)
            assert sum(int(b["num_samples"].shape[0]) for b in ds) == 3
        assert reading.skipped_records() == 1
    finally:
        reading.reset_skipped_records()
    assert f"skipped the corrupt or truncated rest of {path} from byte" in caplog.text


def test_training_skips_reach_the_log_and_tensorboard(clean_gin, tmp_path, caplog):
    # Item 7 under the gin root that bin/train calls, with skip_bad_records bound in gin.
    import glob

    pattern = write_tiny_records(str(tmp_path / "records"), num_files=2, per_file=6)
    first = sorted(tf.io.gfile.glob(pattern))[0]
    with open(first, "ab") as f:
        f.write(b"\x07" * 40)  # one corrupt tail
    model_dir = tmp_path / "run"
    config.parse_gin(
        ["gin/test/tiny.gin"],
        [
            f"TRAIN_RECORDS = '{pattern}'",
            # 4 steps of 4 read more than the 12 records: the corrupt tail is reached.
            "NUM_STEPS = 4",
            "train.progress = False",
            "make_dataset.skip_bad_records = True",
            "make_dataset.shuffle = False",
        ],
    )
    reading.reset_skipped_records()
    try:
        with caplog.at_level("INFO"):
            last = config.train(str(model_dir))
    finally:
        reading.reset_skipped_records()
    assert last["skipped_records"] >= 1
    assert f"skipped the corrupt or truncated rest of {first} from byte" in caplog.text
    assert f"skipped_records={last['skipped_records']:.4g}" in caplog.text
    values = []
    for path in glob.glob(str(model_dir / "train" / "events.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            values += [
                tf.make_ndarray(v.tensor) for v in event.summary.value if v.tag == "skipped_records"
            ]
    assert len(values) == 4 and values[-1] == last["skipped_records"]
