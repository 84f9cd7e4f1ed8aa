"""bin/evaluate end to end: gin model, trainer-format checkpoint, records -> eval/<split>.json."""

import json
import os
import subprocess
import sys

import gin
import keras
import numpy as np
import tensorflow as tf

from tfkd import checkpoints, config, split_wer
from tfkd.data import pipeline, records
from tfkd.data.tokenizer import Tokenizer, train_sentencepiece
from tfkd.features import LogMel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXTS = {
    "dev": ["the cat sat", "a dog ran home"],
    "test": ["the dog sat on the mat", "a cat", "home"],
}


def _write_split(directory, split, tokenizer, rng):
    path = os.path.join(directory, f"{split}-00000.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        for i, text in enumerate(TEXTS[split]):
            utt = records.Utterance(
                utterance_id=f"{split}-{i}",
                speaker_id="1",
                text=text,
                pcm16=rng.integers(-3000, 3000, size=int(rng.integers(3000, 6000)), dtype=np.int16),
                token_ids=tokenizer.encode(text),
            )
            writer.write(records.serialize_utterance(utt))


def test_bin_evaluate_writes_reports_matching_an_in_process_evaluation(tmp_path):
    sentences = [t for ts in TEXTS.values() for t in ts] * 5 + ["the mat ran on a dog"] * 5
    spm = train_sentencepiece(sentences, str(tmp_path / "spm" / "sp"), 20)
    tokenizer = Tokenizer(spm)
    rng = np.random.default_rng(0)
    for split in TEXTS:
        _write_split(str(tmp_path), split, tokenizer, rng)
    model_dir = tmp_path / "run"
    model_dir.mkdir()
    # No DEV_RECORDS and no TEST_RECORDS: bin/evaluate finds both next to the training records.
    bindings = [
        f"TRAIN_RECORDS = '{tmp_path}/dev-*.tfrecord'",
        f"VOCAB_SIZE = {tokenizer.vocab_size}",
    ]

    # A model directory as bin/train leaves it: its gin config and a trainer-format checkpoint.
    try:
        text = config.parse_gin(["gin/test/tiny.gin"], bindings)
        keras.utils.set_random_seed(11)
        model = gin.query_parameter("train.model_fn").scoped_configurable_fn()
    finally:
        gin.clear_config()
    (model_dir / "operative_config.gin").write_text(text)
    model_dir = str(model_dir)
    model.build_by_calling(num_features=80)
    step = tf.Variable(7, dtype=tf.int64)
    ckpt = tf.train.Checkpoint(model=model, optimizer=keras.optimizers.Adam(), step=step)
    assert checkpoints.untracked_weights(ckpt, model) == []
    tf.train.CheckpointManager(ckpt, model_dir, 2, checkpoint_name="ckpt").save(checkpoint_number=7)

    argv = [sys.executable, os.path.join(ROOT, "bin", "evaluate"), f"--model_dir={model_dir}"]
    argv += [f"--spm_model={spm}", "--keep_hypotheses"]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "split" in proc.stdout and "dev" in proc.stdout and "test" in proc.stdout

    for split, texts in TEXTS.items():
        with open(os.path.join(model_dir, "eval", f"{split}.json")) as f:
            report = json.load(f)
        assert report["split"] == split and report["step"] == 7
        assert report["utterances"] == len(texts)
        assert report["reference_words"] == sum(len(t.split()) for t in texts)
        assert report["records"] == f"{tmp_path}/{split}-*.tfrecord"
        expected = split_wer.evaluate_split(
            model,
            pipeline.make_dataset(
                report["records"], global_batch_size=16, with_text=True, deterministic=True
            ),
            tokenizer,
            frontend=LogMel(),
            keep_hypotheses=True,
        )
        # The restored weights decode exactly as the in-process model does.
        detail = {d["utterance_id"]: d["hypothesis"] for d in report["utterances_detail"]}
        want = {d["utterance_id"]: d["hypothesis"] for d in expected["utterances_detail"]}
        assert detail == want
        assert report["wer"] == expected["wer"]
