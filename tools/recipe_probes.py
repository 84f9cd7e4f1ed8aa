#!/usr/bin/env python3
"""The recipe search of docs/recipe.md: every probe one rerunnable command.

    python tools/recipe_probes.py --list
    python tools/recipe_probes.py --report      # markdown table of the finished probes
    python tools/recipe_probes.py teacher_stack [teacher_stack_ctc ...] [--out runs/recipe]
        [--data data] [--results results/recipe] [--steps N]

A probe is a `bin/train` run on the built-in `small` corpus (`make demo`'s data: DATA/records,
DATA/spm) with periodic dev and train-subset WER (`gin/eval/train_subset.gin`, so its learning
curve lands in OUT/NAME/eval/history.jsonl), then `bin/evaluate` on the whole dev and test splits
(greedy). Each probe names its parent and the one thing it changes. Results go to
RESULTS/NAME.json (command, machine, curve, final WERs, training minutes) and RESULTS/NAME.gin
(the operative config); `tools/plot_curves.py` draws the curves. Interrupted, a probe resumes from
its checkpoints; a finished probe is skipped unless `--redo`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from tfkd import cli  # noqa: E402  (after the path; no TensorFlow)

# The starting points, frozen copies of `make demo`'s teacher and no-KD student before the search.
TEACHER = ("gin/teacher.gin", "gin/recipe/teacher_base.gin")
STUDENT = ("gin/student_baseline.gin", "gin/recipe/student_base.gin")
EVAL_EVERY = "train.eval_every = 500"


@dataclasses.dataclass(frozen=True)
class Probe:
    """One training run: gin files and bindings, its parent and what it changes."""

    name: str
    parent: str | None
    change: str
    gin_files: tuple[str, ...]
    bindings: tuple[str, ...] = ()


def _teacher(name, parent, change, *bindings, files=()):
    return Probe(name, parent, change, TEACHER + tuple(files), bindings)


def _student(name, parent, change, *bindings, files=()):
    return Probe(name, parent, change, STUDENT + tuple(files), bindings)


LEAN_STUDENT = (
    "conformer_student.frontend = 'conv1d'",
    "conformer_student.subsampling_filters = 256",
    "NUM_STEPS = 3000",
    EVAL_EVERY,
)
STACK_STUDENT = ("conformer_student.frontend = 'stack'", "NUM_STEPS = 3000", EVAL_EVERY)
STACK = ("conformer_teacher.frontend = 'stack'", "NUM_STEPS = 6000", EVAL_EVERY)
CTC = ("SupervisedTrainer.ctc_weight = 0.3",)
# Anneal to zero at the run's last step (WarmupDecay's cosine branch).
COSINE = ("WarmupDecay.decay = 'cosine'", "WarmupDecay.decay_steps = %NUM_STEPS")
SPEED = ("train_data/make_dataset.speed_factors = (0.9, 1.0, 1.1)",)
# The lean student's front end on the teacher (after STACK, which it overrides).
CONV1D_TEACHER = (
    "conformer_teacher.frontend = 'conv1d'",
    "conformer_teacher.subsampling_filters = 256",
)
LATE_SPECAUG = (
    "SupervisedTrainer.spec_augment = @SpecAugment()",
    "SupervisedTrainer.spec_augment_start = 2000",
)
# train-labeled plus its two extra renditions (tools/make_corpus.py --respoken 2; prepared like the
# other splits): three times the labelled audio, the same sentences. TRAIN_RECORDS (and so the
# train-subset WER) stays train-labeled.
RESPOKEN = (
    "train_data/make_dataset.file_pattern = "
    "['data/records/train-labeled-*.tfrecord', 'data/records/train-respoken-*.tfrecord']",
)

PROBES = {
    p.name: p
    for p in (
        _teacher(
            "teacher_demo_old",
            None,
            "make demo's teacher before the search (2-D conv front end, 1,500 steps)",
            "train.eval_every = 250",
        ),
        _teacher("teacher_stack", "teacher_demo_old", "stacking front end, 6,000 steps", *STACK),
        _teacher("teacher_stack_ctc", "teacher_stack", "CTC weight 0.3", *STACK, *CTC),
        _teacher(
            "teacher_stack_ctc_speed",
            "teacher_stack_ctc",
            "speed perturbation 0.9/1.0/1.1",
            *STACK,
            *CTC,
            *SPEED,
        ),
        _teacher("teacher_stack_speed", "teacher_stack", "speed perturbation", *STACK, *SPEED),
        _teacher("teacher_stack_respoken", "teacher_stack", "3x labelled audio", *STACK, *RESPOKEN),
        _teacher(
            "teacher_stack_respoken_speed",
            "teacher_stack_respoken",
            "speed perturbation 0.9/1.0/1.1",
            *STACK,
            *RESPOKEN,
            *SPEED,
        ),
        _teacher(
            "teacher_stack_respoken_speed_specaug",
            "teacher_stack_respoken_speed",
            "SpecAugment from step 2,000 (once train WER is well below dev)",
            *STACK,
            *RESPOKEN,
            *SPEED,
            *LATE_SPECAUG,
        ),
        _teacher(
            "teacher_stack_respoken_long",
            "teacher_stack_respoken",
            "12,000 steps",
            *STACK,
            *RESPOKEN,
            "NUM_STEPS = 12000",
        ),
        _teacher(
            "teacher_stack_respoken_cosine",
            "teacher_stack_respoken",
            "cosine decay to 0 at the last step (instead of inverse square root)",
            *STACK,
            *RESPOKEN,
            *COSINE,
        ),
        _teacher(
            "teacher_stack_respoken_ctc",
            "teacher_stack_respoken",
            "CTC weight 0.3",
            *STACK,
            *RESPOKEN,
            *CTC,
        ),
        _teacher(
            "teacher_stack_respoken_cosine_ctc",
            "teacher_stack_respoken_cosine",
            "CTC weight 0.3",
            *STACK,
            *RESPOKEN,
            *COSINE,
            *CTC,
        ),
        _teacher(
            "teacher_stack_respoken_cosine_speed",
            "teacher_stack_respoken_cosine",
            "speed perturbation 0.9/1.0/1.1",
            *STACK,
            *RESPOKEN,
            *COSINE,
            *SPEED,
        ),
        _teacher(
            "teacher_wide_respoken_cosine_speed",
            "teacher_stack_respoken_cosine_speed",
            "4 x 176 (3.37 M parameters, 3 x the demo student), 10,000 steps",
            *STACK,
            *RESPOKEN,
            *COSINE,
            *SPEED,
            "conformer_teacher.num_layers = 4",
            "conformer_teacher.dim = 176",
            "NUM_STEPS = 10000",
        ),
        _teacher(
            "teacher_conv1d_respoken_cosine_speed",
            "teacher_stack_respoken_cosine_speed",
            "1-D convolution front end (256 filters; the lean student's)",
            *STACK,
            *RESPOKEN,
            *COSINE,
            *SPEED,
            *CONV1D_TEACHER,
        ),
        _teacher(
            "teacher_stack_respoken_cosine_speed_long",
            "teacher_stack_respoken_cosine_speed",
            "12,000 steps",
            *STACK,
            *RESPOKEN,
            *COSINE,
            *SPEED,
            "NUM_STEPS = 12000",
        ),
        _student(
            "student_demo_old",
            None,
            "make demo's no-KD student before the search (1,000 steps)",
            "train.eval_every = 250",
        ),
        _student(
            "student_demo_new",
            "student_demo_old",
            "3x labelled audio (make demo's new no-KD student)",
            "train.eval_every = 250",
            *RESPOKEN,
        ),
        _student(
            "student_lean",
            "student_demo_old",
            "1-D convolution front end (256 filters), 3,000 steps",
            *LEAN_STUDENT,
        ),
        _student("student_lean_ctc", "student_lean", "CTC weight 0.3", *LEAN_STUDENT, *CTC),
        _student(
            "student_stack",
            "student_lean",
            "stacking front end (8 frames, no convolution)",
            *STACK_STUDENT,
        ),
        _student(
            "student_lean_cosine",
            "student_lean",
            "cosine decay to 0 at the last step (instead of inverse square root)",
            *LEAN_STUDENT,
            *COSINE,
        ),
        _student(
            "student_lean_respoken",
            "student_lean",
            "3x labelled audio",
            *LEAN_STUDENT,
            *RESPOKEN,
        ),
        _student(
            "student_lean_respoken_cosine",
            "student_lean_respoken",
            "cosine decay to 0 at the last step",
            *LEAN_STUDENT,
            *RESPOKEN,
            *COSINE,
        ),
        _student(
            "student_lean_respoken_cosine_long",
            "student_lean_respoken",
            "cosine decay to 0, 10,000 steps",
            *LEAN_STUDENT,
            *RESPOKEN,
            *COSINE,
            "NUM_STEPS = 10000",
        ),
        _student(
            "student_lean_respoken_speed",
            "student_lean",
            "3x labelled audio, speed perturbation",
            *LEAN_STUDENT,
            *RESPOKEN,
            *SPEED,
        ),
    )
}


def machine() -> dict:
    """CPU model and whether it has AVX-512 (the two machine types differ ~2x in speed)."""
    model, flags = platform.processor(), ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and not model.strip():
                    model = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    flags = line
                    if model:
                        break
    except OSError:
        pass
    return {"cpu": model, "avx512": "avx512f" in flags, "cores": os.cpu_count()}


def train_command(probe: Probe, model_dir: str, data: str, steps: int | None) -> list[str]:
    argv = [sys.executable, os.path.join(REPO, "bin", "train")]
    argv += [f"--gin_file={g}" for g in (*probe.gin_files, "gin/eval/train_subset.gin")]
    bindings = [
        f"TRAIN_RECORDS = '{data}/records/train-labeled-*.tfrecord'",
        f"DEV_RECORDS = '{data}/records/dev-*.tfrecord'",
        f"SPM_MODEL = '{data}/spm/spm.model'",
        *probe.bindings,
    ]
    if steps:
        bindings.append(f"NUM_STEPS = {steps}")
    argv += [f"--gin_bindings={b}" for b in bindings]
    return argv + [f"--model_dir={model_dir}"]


def evaluate_command(model_dir: str) -> list[str]:
    return [
        sys.executable,
        os.path.join(REPO, "bin", "evaluate"),
        f"--model_dir={model_dir}",
        "--split=dev",
        "--split=test",
    ]


def _run(argv, log_path):
    print("$", shlex.join(argv), flush=True)
    env = dict(os.environ)
    cli.set_tf_environment(env)  # tfkd's defaults (BFC allocator, quiet logs), yours first
    with open(log_path, "a") as log:
        code = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    if code:
        raise SystemExit(f"probe command failed ({code}); see {log_path}")


def run_probe(probe: Probe, out: str, data: str, results: str, steps: int | None) -> dict:
    from tfkd.training import history

    model_dir = os.path.join(out, probe.name)
    os.makedirs(model_dir, exist_ok=True)
    log_path = os.path.join(model_dir, "probe.log")
    train = train_command(probe, model_dir, data, steps)
    evaluate = evaluate_command(model_dir)
    start = time.time()
    _run(train, log_path)
    _run(evaluate, log_path)
    curve = history.read_history(model_dir)
    finals = {}
    for split in ("dev", "test"):
        with open(os.path.join(model_dir, "eval", f"{split}.json")) as f:
            report = json.load(f)
        finals[split] = {k: report[k] for k in ("wer", "num_utterances", "step") if k in report}
    last = curve[-1] if curve else {}
    summary = {
        "name": probe.name,
        "parent": probe.parent,
        "change": probe.change,
        "commands": [shlex.join(train), shlex.join(evaluate)],
        "machine": machine(),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        "probe_wall_seconds": round(time.time() - start, 1),
        "train_minutes": round(last.get("train_seconds", 0.0) / 60, 2),
        "cpu_minutes": round(last.get("cpu_seconds", 0.0) / 60, 2),
        "final": finals,
        "curve": curve,
    }
    os.makedirs(results, exist_ok=True)
    with open(os.path.join(results, probe.name + ".json"), "w") as f:
        json.dump(summary, f, indent=1)
    shutil.copy(
        os.path.join(model_dir, "operative_config.gin"), os.path.join(results, probe.name + ".gin")
    )
    return summary


def report(results: str) -> str:
    """A markdown table of the finished probes in `results` (RESULTS/NAME.json), in PROBES order."""
    rows = [
        "| probe | parent | change | steps | train min | CPU min | dev WER | test WER "
        "| last train-subset / dev-subset WER |",
        "|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for name in PROBES:
        path = os.path.join(results, name + ".json")
        if not os.path.exists(path):
            continue
        with open(path) as f:
            s = json.load(f)
        last = s["curve"][-1] if s["curve"] else {}
        subset = (
            f"{last.get('train/wer', float('nan')):.1f} / {last.get('dev/wer', float('nan')):.1f}"
        )
        rows.append(
            f"| `{name}` | {s['parent'] or '–'} | {s['change']} | {s['final']['test']['step']} "
            f"| {s['train_minutes']:.1f} | {s['cpu_minutes']:.1f} "
            f"| {s['final']['dev']['wer']:.1f} | {s['final']['test']['wer']:.1f} | {subset} |"
        )
    return "\n".join(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("probes", nargs="*", help="probe names (see --list)")
    p.add_argument("--list", action="store_true")
    p.add_argument("--out", default="runs/recipe")
    p.add_argument("--data", default="data")
    p.add_argument("--results", default="results/recipe")
    p.add_argument("--steps", type=int, default=None, help="override NUM_STEPS")
    p.add_argument("--redo", action="store_true", help="rerun finished probes")
    p.add_argument("--report", action="store_true", help="print the table of finished probes")
    args = p.parse_args(argv)
    cli.check_at_least("--steps", args.steps, 1)
    if args.report:
        print(report(args.results))
        return 0
    if args.list or not args.probes:
        for probe in PROBES.values():
            print(f"{probe.name:28s} <- {probe.parent or '-':24s} {probe.change}")
        return 0
    unknown = [n for n in args.probes if n not in PROBES]
    if unknown:
        raise SystemExit(f"unknown probes {unknown}; see --list")
    for name in args.probes:
        done = os.path.join(args.results, name + ".json")
        if os.path.exists(done) and not args.redo:
            print(f"{name}: done ({done}); --redo to rerun")
            continue
        s = run_probe(PROBES[name], args.out, args.data, args.results, args.steps)
        print(
            f"{name}: dev {s['final']['dev']['wer']:.1f} test {s['final']['test']['wer']:.1f} "
            f"% WER, {s['train_minutes']:.1f} train min ({s['cpu_minutes']:.1f} CPU min)"
        )
    return 0


if __name__ == "__main__":
    # An unknown probe or a failed command (its log named): one message, exit code 2.
    sys.exit(cli.run(main, "tools/recipe_probes.py"))
