"""Distributed training: Mirrored (2 logical CPUs) equals one device; 2-worker MultiWorkerMirrored.

Each case runs in fresh subprocesses: logical devices and multi-worker collectives must be set up
before TensorFlow runs any op, which the test process has long done.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
from training_records import write_tiny_records

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": REPO}

_TINY_MODEL = """
from tfkd.models import presets
def tiny_model():
    return presets.lstm_student(16, num_layers=1, units=32, frontend_units=32,
                                prediction_units=32, prediction_embed_dim=16, joint_dim=32,
                                dropout=0.0)
"""

_MIRRORED = (
    """
import json, sys
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from tfkd.training import trainers
"""
    + _TINY_MODEL
    + """
B = 4
CTC_WEIGHT = float(sys.argv[1])
rng = np.random.default_rng(0)
batch = {"waveform": rng.normal(size=(B, 8000)).astype("float32") * 0.1,
         "num_samples": np.array([8000, 7000, 6000, 8000], np.int32),
         "token_ids": rng.integers(1, 16, size=(B, 5)).astype(np.int32),
         "label_length": np.array([5, 4, 3, 5], np.int32)}

def run(strategy):
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = tiny_model()
        optimizer = keras.optimizers.Adam(1e-2)
        trainer = trainers.SupervisedTrainer(model, optimizer, strategy=strategy,
                                             global_batch_size=B, clip_norm=1.0, jit_compile=True,
                                             ctc_weight=CTC_WEIGHT)
    def dataset_fn(ctx):
        # One input pipeline per worker: consecutive per-replica batches make the global batch.
        per_replica = ctx.get_per_replica_batch_size(B)
        return tf.data.Dataset.from_tensor_slices(batch).batch(per_replica).repeat()
    iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))
    first = strategy.experimental_local_results(next(iterator))[0]
    with strategy.scope():
        trainer.loss_terms(first, training=False)
        optimizer.build(trainer.trainable_variables)
    initial = [v.numpy() for v in trainer.trainable_variables]  # with the CTC head, if any
    iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))
    logs = [{k: float(v) for k, v in trainer.train_step(iterator).items()} for _ in range(3)]
    final = [v.numpy() for v in trainer.trainable_variables]
    return logs, initial, final, len(model.trainable_variables)

one_logs, one_init, one_final, num_model = run(tf.distribute.get_strategy())
two = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
two_logs, two_init, two_final, _ = run(two)
print(json.dumps({
    "replicas": two.num_replicas_in_sync,
    "extra_variables": len(one_final) - num_model,
    "one": one_logs, "two": two_logs,
    "init_diff": max(float(np.abs(a - b).max()) for a, b in zip(one_init, two_init)),
    "final_diff": max(float(np.abs(a - b).max()) for a, b in zip(one_final, two_final)),
    "moved": max(float(np.abs(a - b).max()) for a, b in zip(one_final, one_init)),
}))
"""
)


def _run(script, timeout=300, env=None, args=()):
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or ENV,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("ctc_weight", [0.0, 0.5])
def test_two_replica_mirrored_update_equals_one_device(ctc_weight):
    out = _run(_MIRRORED, args=[str(ctc_weight)])
    assert out["replicas"] == 2
    assert out["init_diff"] == 0.0
    names = ("rnnt", "loss", "grad_norm") + (("ctc",) if ctc_weight else ())
    assert out["extra_variables"] == (2 if ctc_weight else 0)  # the CTC head's kernel and bias
    # Same logged true means (not per-replica fractions) ...
    for one, two in zip(out["one"], out["two"], strict=True):
        assert set(names) <= set(one) and ("ctc" in one) == bool(ctc_weight)
        for name in names:
            assert two[name] == pytest.approx(one[name], rel=1e-4), name
        if ctc_weight:
            want = one["rnnt"] + ctc_weight * one["ctc"]
            assert two["loss"] == pytest.approx(want, rel=1e-5)
    # ... and the same clipped Adam updates, which moved the weights by far more than the error.
    assert out["one"][0]["grad_norm"] > 1.0  # clip_norm=1.0 was active
    assert out["moved"] > 1e-2
    assert out["final_diff"] < 1e-4


_WORKER = (
    """
import json, sys
from functools import partial
import tensorflow as tf
from tfkd.data import pipeline
from tfkd.training import loop
"""
    + _TINY_MODEL
    + """
pattern, model_dir = sys.argv[1], sys.argv[2]
last = loop.train(
    model_dir,
    model_fn=tiny_model,
    train_dataset_fn=partial(pipeline.make_dataset, pattern, global_batch_size=4, shuffle=True,
                             repeat=True, max_duration_s=2.0, max_label_length=8,
                             static_shapes=True),
    global_batch_size=4,
    num_steps=3,
    strategy="multi_worker",
    checkpoint_every=3,
    summary_every=1,
    progress=False,
)
print(json.dumps(last))
"""
)


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.mark.slow  # about 60 s on 2 busy cores: two TF processes, gRPC collectives, XLA
def test_two_worker_multi_worker_mirrored_trains(tmp_path):
    pattern = write_tiny_records(str(tmp_path / "records"), num_files=2)
    model_dir = str(tmp_path / "run")
    workers = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    procs = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        env = {**ENV, "TF_CONFIG": json.dumps(tf_config)}
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", textwrap.dedent(_WORKER), pattern, model_dir],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
                cwd=REPO,
            )
        )
    outs = []
    try:
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=300)
            assert proc.returncode == 0, stderr[-4000:]
            outs.append(json.loads(stdout.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    # Reduced over both workers, the logged means are the same number on each.
    assert outs[0]["rnnt"] == pytest.approx(outs[1]["rnnt"], rel=1e-6)
    assert outs[0]["rnnt"] > 0
    names = sorted(os.listdir(model_dir))
    assert "ckpt-3.index" in names and "checkpoint" in names
    assert not [n for n in names if n.startswith(".worker")]  # worker copies removed
