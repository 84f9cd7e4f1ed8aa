"""Exports a trained tfkd model as a TF Serving SavedModel: EXPORT_DIR/<version>/.

    bin/export --model_dir=runs/fullsum_kd --output=runs/demo/export/saved_model/1
    tensorflow_model_server --rest_api_port=8501 --model_name=tfkd \\
        --model_base_path=$PWD/runs/demo/export/saved_model

The model and its front end are restored from MODEL_DIR/operative_config.gin (or
--gin_file/--gin_bindings) and the latest checkpoint (`tfkd.trained_model.load_trained_model`).
Signatures: serving_default, transcribe_nbest, score_hypotheses (see tfkd/export/saved_model.py
and the README.md written next to the export).

Installed, the command is `tfkd-export` (same flags); in a clone, `bin/export`.
"""

import argparse
import logging

# tfkd.cli imports no TensorFlow: flags are checked before the slow imports.
from tfkd import cli
from tfkd.cli import UsageError


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_dir", required=True)
    parser.add_argument("--output", required=True, help="EXPORT_DIR/<version>")
    parser.add_argument("--gin_file", action="append", default=[], help="repeatable")
    parser.add_argument("--gin_bindings", action="append", default=[], help="repeatable")
    parser.add_argument("--checkpoint", default=None, help="default: latest in --model_dir")
    parser.add_argument("--spm_model", default=None, help="default: the run's")
    parser.add_argument("--max_duration_s", type=float, default=30.0)
    parser.add_argument("--beam_width", type=int, default=4)
    parser.add_argument("--nbest", type=int, default=4)
    parser.add_argument("--max_symbols_per_frame", type=int, default=3)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s: %(message)s")
    log = logging.getLogger("tfkd.export")

    from tfkd import trained_model
    from tfkd.export import saved_model

    student = trained_model.load_trained_model(
        args.model_dir, args.gin_file, args.gin_bindings, args.checkpoint, args.spm_model
    )
    if student.tokenizer is None:
        where = f" ({student.spm_model} not found)" if student.spm_model else ""
        raise UsageError(f"no SentencePiece model{where}: pass --spm_model")
    log.info("restored %s (step %d)", student.checkpoint, student.step)
    module = saved_model.ServingModule(
        student.model,
        student.frontend,
        student.tokenizer.ids_to_text_layer(),
        max_duration_s=args.max_duration_s,
        beam_width=args.beam_width,
        nbest=args.nbest,
        max_symbols_per_frame=args.max_symbols_per_frame,
    )
    path = saved_model.export_saved_model(
        module, args.output, gin_config=student.gin_config, overwrite=args.overwrite
    )
    log.info("wrote %s", path)
    print(path)
    return 0


def console_main() -> int:
    """The `tfkd-export` console script."""
    return cli.run_command(main, "tfkd-export")
