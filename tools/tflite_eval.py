"""Runs .tflite students over a test split: WER, WER vs the Keras student, RTF (1 thread), size.

Usage:
  python tools/tflite_eval.py --model_dir=runs/fullsum_kd \\
      --tflite=runs/demo/export/student_whole_float32.tflite \\
      --tflite=runs/demo/export/student_streaming_dynamic_int8.tflite \\
      [--records='data/records/test-*.tfrecord'] [--max_utterances=200] [--output_json=R.json]

The Keras student (for the WER difference) is restored from MODEL_DIR like bin/export does
(`tfkd.trained_model.load_trained_model`). Test records default to what the run's configuration
names for `test`, else test-*.tfrecord next to the run's other records.
"""

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tfkd import cli  # noqa: E402  (after the path; no TensorFlow)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model_dir", required=True)
    parser.add_argument("--tflite", action="append", required=True, help="repeatable")
    parser.add_argument("--records", default=None)
    parser.add_argument("--spm_model", default=None)
    parser.add_argument("--gin_file", action="append", default=[])
    parser.add_argument("--gin_bindings", action="append", default=[])
    parser.add_argument("--max_utterances", type=int, default=None)
    parser.add_argument("--streaming_push_ms", type=float, default=None, help="default: chunk")
    parser.add_argument("--output_json", default=None)
    args = parser.parse_args(argv)
    # Checked before TensorFlow loads and the student is restored.
    missing = [path for path in args.tflite if not os.path.isfile(path)]
    if missing:
        raise cli.UsageError(
            f"--tflite={missing[0]}: no such file (bin/convert_tflite --model_dir=... "
            "--output_dir=... makes it)"
        )
    cli.check_at_least("--max_utterances", args.max_utterances, 1)
    if args.streaming_push_ms is not None and not args.streaming_push_ms > 0:
        raise cli.UsageError(f"--streaming_push_ms must be > 0, got {args.streaming_push_ms}")

    import tensorflow as tf

    from tfkd import trained_model
    from tfkd.export import tflite, tflite_parity

    if args.records and not tf.io.gfile.glob(args.records):
        raise cli.UsageError(f"--records={args.records} matches no file")

    try:
        student = trained_model.load_trained_model(
            args.model_dir, args.gin_file, args.gin_bindings, spm_model=args.spm_model
        )
    except ValueError as e:  # gin's or Keras's refusal of the run's configuration
        raise cli.UsageError(cli.message(e)) from e
    try:
        records = args.records or student.record_pattern("test")
    except FileNotFoundError as e:
        raise cli.UsageError(f"{e} (--records)") from e
    if student.tokenizer is None:
        raise cli.UsageError("no SentencePiece model: pass --spm_model")
    utterances = tflite.read_utterances(records, args.max_utterances)
    keras_ids = tflite_parity.keras_greedy(student.model, student.frontend, utterances)
    rows = [
        tflite_parity.evaluate_model(
            path, utterances, student.tokenizer, keras_ids, args.streaming_push_ms
        )
        for path in args.tflite
    ]
    for row in rows:
        row["records"] = records
    print(tflite_parity.format_table(rows))
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    # A missing run, .tflite file or records: one message, exit code 2.
    sys.exit(cli.run(main, "tools/tflite_eval.py"))
