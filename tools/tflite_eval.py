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

    from tfkd import trained_model
    from tfkd.export import tflite, tflite_eval

    try:
        student = trained_model.load_trained_model(
            args.model_dir, args.gin_file, args.gin_bindings, spm_model=args.spm_model
        )
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"tflite_eval: {e}") from None
    try:
        records = args.records or student.record_pattern("test")
    except FileNotFoundError as e:
        raise SystemExit(f"tflite_eval: {e} (--records)") from None
    if student.tokenizer is None:
        raise SystemExit("tflite_eval: no SentencePiece model: pass --spm_model")
    utterances = tflite.read_utterances(records, args.max_utterances)
    keras_ids = tflite_eval.keras_greedy(student.model, student.frontend, utterances)
    rows = [
        tflite_eval.evaluate_model(
            path, utterances, student.tokenizer, keras_ids, args.streaming_push_ms
        )
        for path in args.tflite
    ]
    for row in rows:
        row["records"] = records
    print(tflite_eval.format_table(rows))
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
