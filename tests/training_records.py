"""Tiny TFRecords for training tests: seeded noise "utterances" with random token ids."""

import os

import numpy as np
import tensorflow as tf

from tfkd.data import records


def write_tiny_records(
    directory, split="train", num_files=2, per_file=8, vocab_size=16, seed=0
) -> str:
    """Writes `<split>-0000k-of-0000n.tfrecord` files and returns their glob pattern.

    Utterances are 0.5–1.5 s of low-level noise with 2–6 tokens in [1, vocab_size).
    """
    rng = np.random.default_rng(seed)
    os.makedirs(directory, exist_ok=True)
    for f in range(num_files):
        path = os.path.join(directory, f"{split}-{f:05d}-of-{num_files:05d}.tfrecord")
        with tf.io.TFRecordWriter(path) as writer:
            for i in range(per_file):
                n = int(rng.integers(8000, 24000))
                pcm = (rng.normal(size=n) * 1000).astype(np.int16)
                tokens = rng.integers(1, vocab_size, size=int(rng.integers(2, 7))).tolist()
                utt = records.Utterance(
                    utterance_id=f"{split}-{f}-{i}",
                    speaker_id="0",
                    text=" ".join(map(str, tokens)),
                    pcm16=pcm,
                    token_ids=tokens,
                )
                writer.write(records.serialize_utterance(utt))
    return os.path.join(directory, f"{split}-*.tfrecord")
