"""Converts a trained causal tfkd student to TFLite: whole-utterance and streaming models.

    bin/convert_tflite --model_dir=runs/fullsum_kd --output_dir=runs/demo/export \\
        --quantization=dynamic_int8 --streaming_chunk_ms=320

Writes OUTPUT_DIR/<prefix>_whole_<q>.tflite, <prefix>_streaming_<q>.tflite and
<prefix>_streaming_<q>.json (chunk size and state layout). Builtin ops only: conversion fails if
an op would need Flex. full_int8 (streaming model only) calibrates on utterances of
--representative_records (default: the run's training records). The model and its front end are
restored like bin/export does (`tfkd.trained_model.load_trained_model`).

Installed, the command is `tfkd-convert-tflite` (same flags); in a clone, `bin/convert_tflite`.
"""

import argparse
import logging
import os

# tfkd.cli imports no TensorFlow: flags are checked before the slow imports.
from tfkd import cli
from tfkd.cli import UsageError


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_dir", required=True)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument(
        "--quantization", choices=("float32", "dynamic_int8", "full_int8"), default="float32"
    )
    parser.add_argument("--streaming_chunk_ms", type=int, default=320)
    parser.add_argument("--max_symbols_per_frame", type=int, default=3)
    parser.add_argument("--prefix", default="student")
    parser.add_argument("--gin_file", action="append", default=[], help="repeatable")
    parser.add_argument("--gin_bindings", action="append", default=[], help="repeatable")
    parser.add_argument("--checkpoint", default=None, help="default: latest in --model_dir")
    parser.add_argument(
        "--representative_records", default=None, help="default: the run's training records"
    )
    parser.add_argument("--representative_utterances", type=int, default=32)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s: %(message)s")
    log = logging.getLogger("tfkd.convert_tflite")

    from tfkd import trained_model
    from tfkd.export import tflite

    student = trained_model.load_trained_model(
        args.model_dir, args.gin_file, args.gin_bindings, args.checkpoint
    )
    log.info("restored %s (step %d)", student.checkpoint, student.step)
    waveforms = None
    if args.quantization == "full_int8":
        try:
            pattern = args.representative_records or student.record_pattern("train")
        except FileNotFoundError as e:
            raise UsageError(f"{e} (--representative_records)") from None
        waveforms = tflite.representative_waveforms(pattern, args.representative_utterances)
    paths = tflite.export_student_tflite(
        student.model,
        student.frontend,
        args.output_dir,
        args.quantization,
        chunk_ms=args.streaming_chunk_ms,
        max_symbols_per_frame=args.max_symbols_per_frame,
        representative_waveforms=waveforms,
        prefix=args.prefix,
        # Calibrating the whole-utterance model crashes the TF 2.17 converter (see tflite.py).
        kinds=("streaming",) if args.quantization == "full_int8" else ("whole", "streaming"),
    )
    for kind, path in paths.items():
        log.info("wrote %s: %s (%d bytes)", kind, path, os.path.getsize(path))
        print(path)
    return 0


def console_main() -> int:
    """The `tfkd-convert-tflite` console script."""
    return cli.run_command(main, "tfkd-convert-tflite")
