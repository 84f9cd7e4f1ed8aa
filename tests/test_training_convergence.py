"""Slow: a tiny transducer learns real (synthetic-speech) utterances; its training WER falls."""

import functools
import os
import subprocess
import sys

import keras
import pytest
from fixtures_corpus import tiny_corpus  # noqa: F401

from tfkd import split_wer
from tfkd.data import pipeline, tokenizer
from tfkd.models import presets
from tfkd.training import loop, schedules, trainers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tool(*args):
    subprocess.run([sys.executable, *args], check=True, cwd=REPO, capture_output=True)


@pytest.mark.slow  # ~2-3 min on 2 cores
def test_training_wer_falls_on_tiny_corpus(tiny_corpus, tmp_path):  # noqa: F811
    corpus = str(tiny_corpus)
    spm_prefix = str(tmp_path / "spm" / "spm")
    _tool(
        "tools/train_spm.py",
        f"{corpus}/train-labeled",
        "--vocab_size",
        "64",
        "--output_prefix",
        spm_prefix,
    )
    records = str(tmp_path / "records")
    _tool(
        "tools/prepare_librispeech.py",
        f"{corpus}/train-labeled",
        records,
        "--spm_model",
        spm_prefix + ".model",
        "--num_shards",
        "1",
        "--no_progress",
    )
    tok = tokenizer.Tokenizer(spm_prefix + ".model")
    pattern = os.path.join(records, "train-labeled-*.tfrecord")

    def four_utterances(**kwargs):
        # Memorising four utterances is the quickest proof that the whole chain learns.
        return pipeline.make_dataset(pattern, global_batch_size=4, **kwargs).take(1).cache()

    def model_fn():
        return presets.lstm_student(
            tok.vocab_size,
            num_layers=1,
            units=128,
            frontend_units=128,
            prediction_units=64,
            prediction_embed_dim=32,
            joint_dim=64,
            dropout=0.0,
        )

    wers = []

    def train_wer(trainer):
        result = split_wer.evaluate_split(
            trainer.model, four_utterances(with_text=True), tok, frontend=trainer.frontend
        )
        wers.append(result["wer"])
        return {"train/wer": result["wer"]}

    common = dict(
        model_fn=model_fn,
        train_dataset_fn=lambda input_context, seed: four_utterances(
            input_context=input_context
        ).repeat(),
        global_batch_size=4,
        trainer_fn=functools.partial(trainers.SupervisedTrainer, jit_compile=False, clip_norm=5.0),
        optimizer_fn=lambda: keras.optimizers.Adam(schedules.WarmupDecay(3e-3, 10, "constant")),
        eval_fn=train_wer,
        progress=False,
    )
    model_dir = str(tmp_path / "run")
    loop.train(model_dir, num_steps=1, eval_every=1, **common)
    loop.train(model_dir, num_steps=250, eval_every=250, checkpoint_every=250, **common)
    assert wers[0] > 80.0, wers
    assert wers[-1] < 30.0, wers
