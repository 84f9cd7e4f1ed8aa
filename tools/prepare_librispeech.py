"""Converts a LibriSpeech-layout directory into sharded TFRecords plus a manifest.

    python tools/prepare_librispeech.py LibriSpeech/dev-clean records/dev-clean \
        --spm_model spm/spm.model --jobs 2

Re-running skips finished shards. Bad inputs (corrupt or too-short audio, empty transcripts, ...)
are reported and counted in OUTPUT_DIR/<split>.manifest.json; see tfkd/data/librispeech.py.
Exit status: 0 with records written, 1 if no utterance was usable, 2 for bad arguments or a
missing input tree (one line on stderr).
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="prepare_librispeech.py",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    p.add_argument("input_dir", help="root of the LibriSpeech-layout tree")
    p.add_argument("output_dir", help="where shards and the manifest go")
    p.add_argument("--spm_model", help="SentencePiece model for token_ids (tools/train_spm.py)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--num_shards", type=int, help="number of shards")
    group.add_argument("--shard_size", type=int, help="utterances per shard (default 500)")
    p.add_argument("--jobs", type=int, default=1, help="worker processes")
    p.add_argument("--split", help="shard name prefix (default: INPUT_DIR's name)")
    p.add_argument(
        "--resample", action="store_true", help="resample audio not at 16 kHz instead of skipping"
    )
    p.add_argument(
        "--decode_timeout",
        type=float,
        default=30.0,
        help="seconds one file may take to decode before it is counted as corrupt (default 30)",
    )
    p.add_argument("--no_verify", action="store_true", help="skip finished shards unread")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)

    from tfkd.data import librispeech

    try:
        manifest = librispeech.prepare(
            args.input_dir,
            args.output_dir,
            split=args.split,
            spm_model=args.spm_model,
            num_shards=args.num_shards,
            shard_size=args.shard_size,
            jobs=args.jobs,
            resample=args.resample,
            verify=not args.no_verify,
            progress=not args.no_progress,
            decode_timeout_s=args.decode_timeout,
        )
    except (FileNotFoundError, librispeech.PrepareError) as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return 2
    if not manifest["num_utterances"]:
        where = librispeech.manifest_path(args.output_dir, manifest["split"])
        print(
            f"{p.prog}: error: no usable utterance under {args.input_dir}: every input was "
            f"skipped (see the messages above and {where})",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main())
