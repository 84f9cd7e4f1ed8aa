"""Builds tfkd's offline synthetic speech corpus in LibriSpeech layout.

Usage:
  python tools/make_corpus.py --size {tiny,small,medium} [--seed S] [--jobs J]
      [--vocab_limit K] [--respoken R] [--pool N] OUT_DIR

--respoken R adds the split train-respoken: train-labeled's sentences spoken R more times by new
speakers (more training audio; the other splits stay byte-identical).
--pool N adds the unlabelled split train-pool: N utterances of sentences that no other split uses,
spoken by new speakers (e.g. a pool to pseudo-label; the other splits stay byte-identical). Stops
with one message when the text pool has fewer than N unused sentences (raise --vocab_limit).
The two compose; manifest.json, SPEAKERS.txt and utterances.tsv list the splits of this call, so
a later call on the same OUT_DIR repeats both flags to keep both listed (audio on disk is kept).

Missing Debian packages are installed by tools/install_system_deps.sh when run as root;
otherwise it prints the apt-get line. Re-running on the same OUT_DIR keeps finished chapters.
Invalid flags and unwritable paths stop with one message and exit code 2 (`tfkd.cli`).
"""

import argparse
import os
import subprocess
import sys
import time

from tfkd import cli
from tfkd.data import synthetic_corpus, text_pool, tts

DEPS_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "install_system_deps.sh")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--size", choices=sorted(synthetic_corpus.PRESETS), default="small")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument(
        "--vocab_limit", type=int, default=None, help="K most frequent words; 0 = no limit"
    )
    parser.add_argument(
        "--respoken",
        type=int,
        default=0,
        help="renditions of train-labeled by new speakers (split train-respoken); a later call "
        "must repeat --respoken and --pool to keep both in the manifest",
    )
    parser.add_argument(
        "--pool",
        type=int,
        default=0,
        help="utterances of the unlabelled split train-pool: new sentences, new speakers; a "
        "later call must repeat --pool and --respoken to keep both in the manifest",
    )
    args = parser.parse_args(argv)
    # Before the engine check, which may install packages.
    cli.check_at_least("--jobs", args.jobs, 1)
    cli.check_at_least("--vocab_limit", args.vocab_limit, 0)
    cli.check_at_least("--respoken", args.respoken, 0)
    cli.check_at_least("--pool", args.pool, 0)
    try:
        tts.check_engines(synthetic_corpus.ENGINE_SHARE)
        text_pool.check_sources()
    except (tts.MissingEngineError, FileNotFoundError) as err:
        print(err, file=sys.stderr)
        if subprocess.run(["bash", DEPS_SCRIPT]).returncode != 0:
            return 1
    start = time.time()
    manifest = synthetic_corpus.build_corpus(
        args.out_dir,
        args.size,
        seed=args.seed,
        jobs=args.jobs,
        vocab_limit=args.vocab_limit,
        respoken=args.respoken,
        pool_size=args.pool,
    )
    for split, info in manifest["splits"].items():
        print(
            f"{split:16s} {info['utterances']:6d} utts {info['speakers']:4d} speakers "
            f"{info['hours']:7.3f} h"
        )
    for split in synthetic_corpus.EXTRA_SPLITS:
        if split not in manifest["splits"] and os.path.isdir(os.path.join(args.out_dir, split)):
            flag = "--respoken" if split == synthetic_corpus.RESPOKEN else "--pool"
            print(f"Note: {split} is on disk but not in the manifest; repeat {flag} to list it.")
    print(f"Wrote {args.out_dir} in {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, "tools/make_corpus.py"))
