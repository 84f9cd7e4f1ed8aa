#!/usr/bin/env python3
"""Writes the weights of a training run's latest checkpoint, without the optimizer, for carrying.

Usage:
  python tools/carry_weights.py MODEL_DIR [OUT_DIR]     # default OUT_DIR: MODEL_DIR/weights

OUT_DIR gets `ckpt-<step>` (model and step only: a third of a training checkpoint with Adam) and
its `checkpoint` state file; `bin/evaluate`, `bin/pseudo_label` and an online-distillation
student read it as they read the run's own checkpoint. The study runs it after each teacher and
commits the result (`tfkd.study.carry`), so a clone on another machine has the same teacher.
Continuing the run's training from it would start the optimizer afresh. A run without a
checkpoint or an operative config stops with one message and exit code 2.
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tfkd import checkpoints, cli  # noqa: E402
from tfkd.study.carry import WEIGHTS_DIR, latest_checkpoint_files  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model_dir", help="a bin/train model directory")
    parser.add_argument("out_dir", nargs="?", help="default MODEL_DIR/weights")
    args = parser.parse_args(argv)
    from tfkd.trained_model import load_trained_model

    out = args.out_dir or os.path.join(args.model_dir, WEIGHTS_DIR)
    try:
        trained = load_trained_model(args.model_dir)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(cli.message(e)) from e
    path = checkpoints.save_weights(trained.model, trained.step, out)
    size = sum(os.path.getsize(p) for p in latest_checkpoint_files(out))
    print(f"{trained.checkpoint} (step {trained.step}) -> {path} ({size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(cli.run(main, "tools/carry_weights.py"))
