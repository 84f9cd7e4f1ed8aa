"""Runs tfkd's whole story on the built-in small corpus: `make demo`.

    python tools/run_demo.py [--out runs/demo] [--data data] [--fresh] [--only STAGE]
        [--no_baseline]

The stages (`tfkd.study.demo`: corpus, spm, records, respoken, teacher, teacher_eval,
pseudo_labels, fullsum_kd, hard_kd, baseline, student_eval, export, summary) are jobs of the
study's scheduler (`tfkd.study.scheduler`), run one after another. Each runs the project's own CLIs
as subprocesses; their output passes through and is kept in OUT/logs/<stage>.log.

A stage whose outputs are complete is skipped: data stages check their tools' own completion
marks (manifests), the others an OUT/stamps/<stage>.json written after success (with the stage's
wall time). Interrupted training resumes from its checkpoints; pseudo-labelling and record
preparation keep finished shards. `--fresh` deletes OUT and redoes every stage after the data
stages (data whose marks exist is reused; delete DATA to rebuild it). `--only STAGE` runs one stage
even if done, assuming the stages before it are. The summary (`tfkd.study.demo_report`) is
OUT/summary.json, OUT/summary.md and the printed tables.
"""

import argparse
import os
import shutil
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from tfkd import cli  # noqa: E402  (after the path)
from tfkd.study.demo import Context, StageError, demo_jobs, run_stages  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/demo")
    parser.add_argument("--data", default="data")
    parser.add_argument("--fresh", action="store_true", help="delete OUT and redo its stages")
    parser.add_argument("--only", default=None, help="run this stage only (even if done)")
    parser.add_argument("--no_baseline", action="store_true", help="skip the no-KD student")
    parser.add_argument("--size", default="small", help="corpus preset (tests: tiny)")
    parser.add_argument(
        "--gin_file", action="append", default=[], help="extra gin for every training (tests)"
    )
    args = parser.parse_args(argv)
    ctx = Context(
        out=os.path.abspath(args.out),
        data=os.path.abspath(args.data),
        baseline=not args.no_baseline,
        size=args.size,
        extra_gin=tuple(os.path.abspath(g) for g in args.gin_file),
    )
    jobs = demo_jobs(ctx)
    names = [j.name for j in jobs]
    if args.only is not None and args.only not in names:  # before --fresh deletes anything
        raise cli.UsageError(f"--only={args.only}: unknown stage; stages: {', '.join(names)}")
    if args.fresh and os.path.isdir(ctx.out):
        shutil.rmtree(ctx.out)
    start = time.time()
    try:
        run_stages(jobs, ctx, only=args.only)
    except StageError as e:
        # One line on stderr (its parts joined), after a blank line in the stages' output stream.
        print(flush=True)
        parts = (line.strip() for line in str(e).splitlines())
        print(f"[demo] FAILED: {'; '.join(p for p in parts if p)}", file=sys.stderr)
        return 1
    print(f"[demo] done in {time.time() - start:.0f} s; outputs under {ctx.out}", flush=True)
    return 0


if __name__ == "__main__":
    # Bad flags, or a file the demo reads itself (DATA's SentencePiece vocabulary) missing: one
    # message, exit code 2. A failed stage names itself, its log and the rerun command (exit 1).
    sys.exit(cli.run(main, "tools/run_demo.py"))
