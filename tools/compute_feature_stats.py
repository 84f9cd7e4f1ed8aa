"""Global log-mel mean/stddev of a TFRecord split, for `LogMel(normalization="global")`.

Usage:
  python tools/compute_feature_stats.py 'RECORDS/train-labeled/*.tfrecord' STATS.json
      [--batch_size 16] [--max_duration_s S] [--num_mel_bins 80]

Load the result with `tfkd.features.LogMel.from_stats_file(STATS.json)`.
"""

import argparse

from tfkd import cli, features
from tfkd.data import pipeline


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("file_pattern", help="glob of the split's TFRecord files")
    parser.add_argument("output", help="JSON file to write")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--max_duration_s", type=float, default=None)
    parser.add_argument("--num_mel_bins", type=int, default=80)
    args = parser.parse_args(argv)
    cli.check_at_least("--batch_size", args.batch_size, 1)
    cli.check_at_least("--num_mel_bins", args.num_mel_bins, 1)
    stats = pipeline.compute_feature_stats(
        args.file_pattern,
        log_mel=features.LogMel(num_mel_bins=args.num_mel_bins),
        batch_size=args.batch_size,
        max_duration_s=args.max_duration_s,
    )
    features.save_feature_stats(
        args.output, stats["mean"], stats["stddev"], stats["num_frames"], stats["feature_config"]
    )
    print(f"{stats['num_frames']} frames → {args.output}")
    return 0


if __name__ == "__main__":
    # A pattern that matches no file, or an unwritable OUTPUT: one message, exit code 2.
    raise SystemExit(cli.run(main, "tools/compute_feature_stats.py"))
