"""Evaluates a trained tfkd model: WER per split into MODEL_DIR/eval/<split>.json and a table.

    bin/evaluate --model_dir=runs/teacher
    bin/evaluate --model_dir=runs/teacher --split=test --decoder=beam --beam_width=8

The model, its front end (the one bound to the run's trainer) and the SentencePiece model come
from MODEL_DIR/operative_config.gin (or --gin_file/--gin_bindings) and the latest checkpoint
(`tfkd.trained_model.load_trained_model`). Records of split S: --records=S=PATTERN, else what
the configuration names (a S_RECORDS macro, the dev set of the periodic evaluator), else
S-*.tfrecord next to the run's other records.

Installed, the command is `tfkd-evaluate` (same flags); in a clone, `bin/evaluate`.
"""

import argparse
import logging

# tfkd.cli imports no TensorFlow: flags are checked before the slow imports.
from tfkd import cli
from tfkd.cli import UsageError


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_dir", required=True)
    parser.add_argument("--gin_file", action="append", default=[], help="repeatable")
    parser.add_argument("--gin_bindings", action="append", default=[], help="repeatable")
    parser.add_argument("--split", action="append", default=[], help="repeatable; dev, test")
    parser.add_argument("--records", action="append", default=[], help="SPLIT=PATTERN")
    parser.add_argument("--decoder", choices=("greedy", "beam"), default="greedy")
    parser.add_argument("--beam_width", type=int, default=4)
    parser.add_argument("--max_symbols_per_frame", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=None, help="default: the run's")
    parser.add_argument("--spm_model", default=None, help="default: the run's")
    parser.add_argument("--checkpoint", default=None, help="default: latest in --model_dir")
    parser.add_argument("--max_batches", type=int, default=None)
    parser.add_argument("--keep_hypotheses", action="store_true", help="per-utterance output")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s: %(message)s")
    log = logging.getLogger("tfkd.evaluate")
    splits = args.split or ["dev", "test"]
    explicit = _explicit_records(args.records)

    import tensorflow as tf

    from tfkd import split_wer, trained_model
    from tfkd.data import pipeline

    for split, pattern in explicit.items():
        if not tf.io.gfile.glob(pattern):
            raise UsageError(f"--records={split}={pattern} matches no file")
    restored = trained_model.load_trained_model(
        args.model_dir, args.gin_file, args.gin_bindings, args.checkpoint, args.spm_model
    )
    try:
        patterns = {s: explicit.get(s) or restored.record_pattern(s) for s in splits}
    except FileNotFoundError as e:
        raise UsageError(f"{e} (--records=SPLIT=PATTERN)") from None
    if restored.tokenizer is None:
        where = f" ({restored.spm_model} not found)" if restored.spm_model else ""
        raise UsageError(f"no SentencePiece model{where}: pass --spm_model")
    log.info("restored %s (step %d)", restored.checkpoint, restored.step)
    batch_size = args.batch_size or restored.global_batch_size or 16
    model, frontend = restored.model, restored.frontend
    decode = split_wer.make_decode_fn(
        model, frontend, args.decoder, args.beam_width, args.max_symbols_per_frame
    )
    results = {}
    for split, pattern in patterns.items():
        dataset = pipeline.make_dataset(
            pattern, global_batch_size=batch_size, with_text=True, deterministic=True
        )
        result = split_wer.evaluate_split(
            model,
            dataset,
            restored.tokenizer,
            decoder=decode,
            frontend=frontend,
            keep_hypotheses=args.keep_hypotheses,
            max_batches=args.max_batches,
            progress=True,
        )
        result.update(
            decoder=args.decoder,
            beam_width=args.beam_width if args.decoder == "beam" else 1,
            checkpoint=restored.checkpoint,
            step=restored.step,
            records=pattern,
        )
        results[split] = result
        log.info("wrote %s", split_wer.write_report(result, args.model_dir, split))
    print(split_wer.format_table(results))
    return 0


def _explicit_records(values):
    """{split: pattern} from --records=SPLIT=PATTERN values."""
    explicit = {}
    for value in values:
        split, sep, pattern = value.partition("=")
        if not (sep and split and pattern) or any(c in split for c in "*?[/"):
            raise UsageError(
                f"--records={value}: expected --records=SPLIT=PATTERN, e.g. "
                f"--records='test=data/records/test-*.tfrecord'"
            )
        explicit[split] = pattern
    return explicit


def console_main() -> int:
    """The `tfkd-evaluate` console script."""
    return cli.run_command(main, "tfkd-evaluate")
