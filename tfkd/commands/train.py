"""Trains a tfkd model from gin files: the `train()` root with strict gin parsing.

bin/train --gin_file=gin/teacher.gin --model_dir=runs/teacher
bin/train --gin_file=gin/teacher.gin --gin_bindings='train.num_steps = 100' --model_dir=...
bin/train --gin_file=gin/fullsum_kd.gin     # model_dir from gin (train.model_dir)

Missing inputs (records, pseudo-labels, a teacher checkpoint), gin errors and invalid arguments
stop with one message and exit code 2, not a trace (`tfkd.cli`).

Installed, the command is `tfkd-train` (same flags); in a clone, `bin/train`. `gin/...` names
resolve against the current directory first, then the configs shipped with tfkd
(`tfkd.config.parse_gin`).
"""

import argparse
import logging

# tfkd.cli imports no TensorFlow: flags are checked before the slow imports.
from tfkd import cli
from tfkd.cli import UsageError


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gin_file", action="append", default=[], help="repeatable")
    parser.add_argument("--gin_bindings", action="append", default=[], help="repeatable")
    parser.add_argument("--model_dir", default=None, help="default: gin's train.model_dir")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    import gin

    from tfkd import config, preflight

    try:
        text = config.parse_gin(args.gin_file, args.gin_bindings)
        # A scoped binding that this run never enters would be ignored: a typo.
        config.check_run_scopes()
        # So is a macro given on the command line that this run never reads.
        config.check_run_macros(args.gin_bindings)
    except (ValueError, KeyError, OSError) as e:
        # Strict parsing: a misspelt binding or a missing file stops here, before any work.
        raise UsageError(f"gin configuration error: {cli.message(e)}") from e
    logging.getLogger("tfkd.train").info("gin config:\n%s", text)
    # Missing inputs first (with the commands that make them), then inputs that disagree.
    message = preflight.missing_inputs() or preflight.inconsistent_inputs()
    if message:
        raise UsageError(message)
    model_dir = args.model_dir
    if model_dir is None:
        try:
            model_dir = gin.query_parameter("train.model_dir")
        except ValueError:
            raise UsageError("pass --model_dir (or bind train.model_dir)") from None
    from tfkd.training.loop import EmptyDatasetError

    try:
        config.train(model_dir)
    except EmptyDatasetError as e:
        raise UsageError(str(e)) from e
    return 0


def console_main() -> int:
    """The `tfkd-train` console script."""
    return cli.run_command(main, "tfkd-train")
