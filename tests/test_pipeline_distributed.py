"""The per-replica split under a two-device MirroredStrategy.

Logical devices must be configured before TensorFlow initialises its devices, and
pytest runs every test module in one process, so the check runs in a subprocess.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import tensorflow as tf

from tfkd.data import records

_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    from tfkd import features
    from tfkd.data import pipeline

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        log_mel = features.LogMel()
        augment = features.SpecAugment(seed=3)
    dist = pipeline.distribute_dataset(
        strategy,
        sys.argv[1],
        global_batch_size=4,
        static_shapes=True,
        max_duration_s=0.5,
        max_label_length=5,
        deterministic=True,
        with_text=True,
    )

    @tf.function
    def step(batch):
        def replica_fn(batch):
            feats, lengths = log_mel(batch["waveform"], batch["num_samples"])
            masked = augment(feats, lengths, training=True)
            ctx = tf.distribute.get_replica_context()
            return ctx.replica_id_in_sync_group, tf.shape(feats), masked
        return strategy.run(replica_fn, args=(batch,))

    out = {"replicas": strategy.num_replicas_in_sync, "batches": []}
    for batch in dist:
        ids = strategy.experimental_local_results(batch["utterance_id"])
        waves = strategy.experimental_local_results(batch["waveform"])
        replica_ids, shapes, masked = (strategy.experimental_local_results(t) for t in step(batch))
        out["batches"].append({
            "ids": [[x.decode() for x in r.numpy()] for r in ids],
            "wave_shapes": [r.shape.as_list() for r in waves],
            "devices": [r.device for r in waves],
            "replica_ids": [int(r) for r in replica_ids],
            "feat_shapes": [r.numpy().tolist() for r in shapes],
            "zero_cells": [int(tf.reduce_sum(tf.cast(m == 0.0, tf.int32))) for m in masked],
        })
    print("RESULT " + json.dumps(out))
    """
)


def _write_records(path, n=9):
    rng = np.random.default_rng(11)
    with tf.io.TFRecordWriter(str(path)) as w:
        for i in range(n):
            utt = records.Utterance(
                utterance_id=f"7-1-{i:04d}",
                speaker_id="7",
                text="x",
                pcm16=rng.integers(
                    -20000, 20000, size=int(rng.integers(1000, 8001)), dtype=np.int16
                ),
                token_ids=list(rng.integers(1, 9, size=int(rng.integers(1, 6)))),
            )
            w.write(records.serialize_utterance(utt))


def test_per_replica_split_under_two_device_mirrored_strategy(tmp_path):
    _write_records(tmp_path / "d.tfrecord")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(tmp_path / "*.tfrecord")],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    out = json.loads(lines[0][len("RESULT ") :])
    assert out["replicas"] == 2
    # 9 utterances of <= 0.5 s, global batch 4 → 4 per-replica batches of 2 (one
    # utterance dropped by drop_remainder), dealt to the two replicas: two steps.
    assert len(out["batches"]) == 2
    seen = []
    for b in out["batches"]:
        assert b["wave_shapes"] == [[2, 8000], [2, 8000]]
        assert b["replica_ids"] == [0, 1]
        assert b["feat_shapes"] == [[2, 48, 80], [2, 48, 80]]
        assert b["devices"][0].endswith("CPU:0") and b["devices"][1].endswith("CPU:1")
        assert not set(b["ids"][0]) & set(b["ids"][1])
        # Replicas draw different SpecAugment masks (replica id folded into the seed).
        assert b["zero_cells"][0] != b["zero_cells"][1]
        seen += b["ids"][0] + b["ids"][1]
    assert len(set(seen)) == 8
