#!/usr/bin/env python3
"""The study: student WER by distillation method × teacher quality, in one resumable command.

    python tools/run_study.py --preset small            # built-in corpus, 2-core CPU
    python tools/run_study.py --preset librispeech --dry_run    # paper scale: list the runs
    python tools/run_study.py --preset tiny --out /tmp/s --data /tmp/s/data --results /tmp/r

The preset is a gin file of the paper's folder, `gin/papers/fullsum_kd_icassp2023/<preset>.gin`
(or a gin file of one's own), binding `StudyPlan` (teachers of graded quality, student methods,
seeds, hyper-parameter grids chosen on dev, the controlled label-noise arm); `--gin_file` and
`--gin_bindings` add to it; the per-run overlays it gives to `bin/train` are in `gin/study/`.
Every run is one of the project's CLIs (`bin/train`, `bin/evaluate`, `bin/pseudo_label`, the data
tools) in its own directory under `--out`, with a log in OUT/logs/. Interrupted, it picks up
where it stopped: finished jobs are skipped, training resumes from checkpoints. Each finished
job's small result files (eval reports, operative config, learning curve, pseudo-label manifest)
are copied to RESULTS/runs/<run under OUT>/ at once, to be committed, and so is a finished
teacher's final checkpoint: a clone on another machine puts the finished runs back from there
and goes on (`tfkd.study.carry`). At the end (and with
`--report_only`) it writes RESULTS/study.md, study.json and study.png from the runs, read from
OUT, else from RESULTS/runs (a clone without OUT rebuilds the same tables).
"""

import argparse
import importlib
import os
import shlex
import signal
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
# After the path. None of these imports TensorFlow; parsing the preset does (`load_plan`).
from tfkd import cli  # noqa: E402
from tfkd.study import plan_jobs  # noqa: E402
from tfkd.study.plan import PRESET_DIR, StudyPlan, preset_path  # noqa: E402

_TF_LOG_LEVEL = "TF_CPP_MIN_LOG_LEVEL"


def _parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="small", help=f"{PRESET_DIR}/<preset>.gin")
    p.add_argument("--out", default=None, help="study directory (default runs/study/<preset>)")
    p.add_argument("--data", default=None, help="data directory (default: the preset's)")
    p.add_argument(
        "--results", default="results", help="where study.{md,json,png} and runs/ (the mirror) go"
    )
    p.add_argument("--parallel", type=int, default=2, help="jobs at once")
    p.add_argument("--gin_file", action="append", default=[], help="repeatable, after the preset")
    p.add_argument("--gin_bindings", action="append", default=[], help="repeatable")
    p.add_argument("--dry_run", action="store_true", help="list the jobs and exit")
    p.add_argument("--report_only", action="store_true", help="only rewrite the results")
    args = p.parse_args(argv)
    cli.check_at_least("--parallel", args.parallel, 1)
    return args


def _presets():
    """The names of the gin files in PRESET_DIR that name a study (the others are included
    pieces)."""
    directory = os.path.join(REPO, PRESET_DIR)
    names = []
    for name in sorted(os.listdir(directory)):
        if name.endswith(".gin"):
            with open(os.path.join(directory, name)) as f:
                if any(line.startswith("StudyPlan.name") for line in f):
                    names.append(name[: -len(".gin")])
    return names


def _import_config():
    """`tfkd.config` (the gin registry that parses the preset strictly), imported with
    TensorFlow's C++ logs off unless the environment sets TF_CPP_MIN_LOG_LEVEL.

    It registers every configurable, so it loads TensorFlow, whose start-up prints error-level
    lines ("Unable to register cuFFT factory", cuDNN, cuBLAS) that the errors-only level of
    `cli.TF_ENVIRONMENT` keeps; this process runs no TensorFlow op, so here they are noise. The
    environment is restored after: the jobs get `cli.TF_ENVIRONMENT` from the scheduler.
    """
    if _TF_LOG_LEVEL in os.environ:
        return importlib.import_module("tfkd.config")
    os.environ[_TF_LOG_LEVEL] = "3"
    try:
        return importlib.import_module("tfkd.config")
    finally:
        del os.environ[_TF_LOG_LEVEL]


def load_plan(args):
    """The gin-bound `StudyPlan` of the preset, with paths made absolute."""
    preset = preset_path(args.preset)
    if not any(os.path.isfile(p) for p in (preset, os.path.join(REPO, preset))):
        raise cli.UsageError(
            f"--preset {args.preset}: no {preset} (presets: {', '.join(_presets())}; or a gin file)"
        )
    import gin

    config = _import_config()
    try:
        config.parse_gin([preset, *args.gin_file], args.gin_bindings)
    except (ValueError, KeyError, OSError) as e:
        raise cli.UsageError(f"gin configuration error: {cli.message(e)}") from e
    overrides = {"python": sys.executable, "repo": REPO}
    plan = gin.get_configurable(StudyPlan)(**overrides)
    out = os.path.abspath(args.out or os.path.join(REPO, "runs", "study", plan.name))
    data = os.path.abspath(args.data or os.path.join(REPO, plan.data_dir))
    extra = tuple(os.path.abspath(g) for g in plan.extra_gin)
    gin.clear_config()
    return StudyPlan(
        **{
            **{f: getattr(plan, f) for f in plan.__dataclass_fields__},
            "out_dir": out,
            "data_dir": data,
            "extra_gin": extra,
        }
    )


def _command_line(args) -> str:
    """The command that runs this study (what `--report_only` reports on): the preset and the
    options that change its runs; --results, --parallel and --report_only do not."""
    parts = ["--preset", args.preset]
    for flag in ("out", "data"):
        if getattr(args, flag) is not None:
            parts += [f"--{flag}", getattr(args, flag)]
    for flag in ("gin_file", "gin_bindings"):
        for value in getattr(args, flag):
            parts.append(f"--{flag}={value}")
    return " ".join(["python tools/run_study.py", *map(shlex.quote, parts)])


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parse_args(argv)
    plan = load_plan(args)
    # SIGTERM, and SIGINT even when a non-interactive shell started us in the background (which
    # ignores it), stop the running jobs cleanly: their time is kept for the resumed run.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    jobs = plan_jobs.jobs(plan)
    from tfkd.study import carry, mirror, report, scheduler

    if args.dry_run:
        for job in jobs:
            deps = f"  (after {', '.join(job.deps)})" if job.deps else ""
            print(f"{job.name}{deps}")
        print(f"{len(jobs)} jobs; study directory {plan.out_dir}")
        return 0
    results_dir = os.path.abspath(args.results)
    command = _command_line(args)
    try:  # RESULTS/runs holds this study's runs, never another's
        mirror.claim_mirror(results_dir, command)
    except ValueError as e:
        raise cli.UsageError(str(e)) from e
    status, stopped = {}, None
    clock = scheduler.WallClock(os.path.join(plan.out_dir, mirror.WALL_TIME))
    if not args.report_only:
        # On a new machine: the runs finished elsewhere come back from the mirror.
        restored = carry.restore(plan, jobs, results_dir)
        if restored:
            print(f"[study] restored {len(restored)} finished jobs from the committed mirror "
                  f"{mirror.mirror_root(results_dir)}: {', '.join(restored)}")  # fmt: skip
        clock.start()
        runner = scheduler.Scheduler(plan.out_dir, repo=REPO, parallel=args.parallel)
        unneeded = carry.unneeded(jobs, runner.done)
        if unneeded:
            print(f"[study] not run, nothing left needs them: {', '.join(sorted(unneeded))}")

        def on_done(job):  # each finished job's results go to the committed mirror at once
            agreement = carry.compare_pseudo_labels(plan, job, results_dir)
            if agreement:
                print(f"[study] {agreement}", flush=True)
            mirror.mirror_job(plan, job, results_dir)
            carry.carry_job(plan, job, results_dir)

        try:
            status = runner.run(
                carry.guard_data(plan, jobs, results_dir),
                tick=clock.tick,
                on_done=on_done,
                unneeded=unneeded,
            )
        except KeyboardInterrupt as stop:
            stopped = stop
        finally:
            clock.stop()
    # Also jobs finished before (or by a driver without the mirror), and the wall time.
    mirror.mirror_study(plan, jobs, results_dir)
    carry.carry_study(plan, jobs, results_dir)
    if stopped is not None:
        print(f"[study] stopped ({stopped}); finished jobs are kept, rerun to resume")
        print(f"[study] their results are in {mirror.mirror_root(results_dir)}")
        return 130
    result = report.collect(plan, jobs, results_dir=results_dir)
    paths = report.write(result, results_dir, command)
    print("\n".join(f"[study] wrote {p}" for p in paths))
    bad = {k: v for k, v in status.items() if v in ("failed", "blocked")}
    if bad:
        print(f"[study] {len(bad)} jobs did not finish: " + ", ".join(sorted(bad)))
        print(f"[study] logs: {os.path.join(plan.out_dir, 'logs')}; rerun to resume")
        return 1
    return 0


if __name__ == "__main__":
    # Bad flags or gin: one message, exit code 2. Jobs that fail are reported at the end (exit 1).
    sys.exit(cli.run(main, "tools/run_study.py"))
