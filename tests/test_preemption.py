"""A real `bin/train` process killed with SIGKILL resumes from its last checkpoint."""

import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import tensorflow as tf
from training_records import write_tiny_records

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_STEPS = 120
CHECKPOINT_EVERY = 4


def _launch(model_dir, pattern, log_path):
    cmd = [
        sys.executable,
        os.path.join(REPO, "bin", "train"),
        "--gin_file=gin/test/tiny.gin",
        f"--gin_bindings=TRAIN_RECORDS = '{pattern}'",
        f"--gin_bindings=NUM_STEPS = {NUM_STEPS}",
        f"--gin_bindings=train.checkpoint_every = {CHECKPOINT_EVERY}",
        "--gin_bindings=train.keep_checkpoints = 3",
        f"--model_dir={model_dir}",
    ]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": REPO}
    log = open(log_path, "w")  # noqa: SIM115 (closed by the caller through the process)
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO), log


def _logged_steps(text):
    return [int(s) for s in re.findall(r"step (\d+): ", text)]


def _checkpoint_step(path):
    return int(tf.train.load_checkpoint(path).get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE"))


def test_sigkill_mid_run_resumes_with_continuous_steps(tmp_path):
    pattern = write_tiny_records(str(tmp_path / "records"))
    model_dir = str(tmp_path / "run")

    proc, log = _launch(model_dir, pattern, tmp_path / "first.log")
    deadline = time.time() + 120
    while tf.train.latest_checkpoint(model_dir) is None:
        assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        assert time.time() < deadline, "no checkpoint within 120 s"
        time.sleep(0.02)
    # Land somewhere after the first save: possibly mid-step, mid-summary or mid-save.
    time.sleep(float(np.random.default_rng(0).uniform(0.0, 0.3)))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    log.close()
    assert proc.returncode == -signal.SIGKILL
    killed_at = _checkpoint_step(tf.train.latest_checkpoint(model_dir))
    assert CHECKPOINT_EVERY <= killed_at < NUM_STEPS, "the kill did not land mid-run"
    first_steps = _logged_steps((tmp_path / "first.log").read_text())
    assert first_steps[0] == 1 and max(first_steps) >= killed_at

    proc, log = _launch(model_dir, pattern, tmp_path / "second.log")
    proc.wait(timeout=300)
    log.close()
    text = (tmp_path / "second.log").read_text()
    assert proc.returncode == 0, text[-3000:]
    assert re.search(rf"resumed from \S*ckpt-{killed_at} at step {killed_at}\b", text), text[-3000:]
    # The step counter continues from the checkpoint, one step at a time, to the end.
    assert _logged_steps(text) == list(range(killed_at + 1, NUM_STEPS + 1))

    latest = tf.train.latest_checkpoint(model_dir)
    assert latest.endswith(f"ckpt-{NUM_STEPS}")
    state = tf.train.get_checkpoint_state(model_dir)
    listed = [os.path.basename(p) for p in state.all_model_checkpoint_paths]
    assert len(listed) == 3
    for name in listed:  # every kept checkpoint reads back completely
        reader = tf.train.load_checkpoint(os.path.join(model_dir, name))
        for key in reader.get_variable_to_shape_map():
            reader.get_tensor(key)
        assert _checkpoint_step(os.path.join(model_dir, name)) == int(name.split("-")[1])
    iterations = [
        k for k in reader.get_variable_to_shape_map() if k.startswith("optimizer/") and "iter" in k
    ]
    assert iterations and int(reader.get_tensor(iterations[0])) == NUM_STEPS
    # Nothing half-written is left: no temp dirs, no checkpoint files outside the state.
    for name in os.listdir(model_dir):
        assert "_temp" not in name and not name.endswith(".tmp"), name
        match = re.match(r"(ckpt-\d+)\.", name)
        assert match is None or match.group(1) in listed, name
    assert "train.num_steps = %NUM_STEPS" in (tmp_path / "run" / "operative_config.gin").read_text()
