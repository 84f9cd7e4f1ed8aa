"""Runs tfkd's whole story on the built-in small corpus: `make demo`.

    python tools/run_demo.py [--out runs/demo] [--data data] [--fresh] [--only STAGE]
        [--no_baseline]

Stages (each runs the project's own CLIs as subprocesses; output passes through and is kept in
OUT/logs/<stage>.log):

    corpus        tools/make_corpus.py --size small            -> DATA/corpus/small
    spm           tools/train_spm.py (vocab 256)               -> DATA/spm/spm.model
    records       tools/prepare_librispeech.py per split       -> DATA/records/<split>-*.tfrecord
    teacher       bin/train gin/teacher.gin + gin/demo/teacher.gin
    teacher_eval  bin/evaluate dev, test
    pseudo_labels bin/pseudo_label: N-best + full-sum teacher scores on all of train-unlabeled
    fullsum_kd    bin/train gin/fullsum_kd.gin + gin/demo/student.gin (the main job): pseudo-labels
                  mixed with train-labeled's ground truth (gin/demo/fullsum_kd.gin)
    hard_kd       bin/train gin/hard_kd.gin + gin/demo/student.gin, the same mixture
    baseline      bin/train gin/student_baseline.gin + gin/demo/student.gin (ground truth, no KD)
    student_eval  bin/evaluate dev, test for each student
    export        bin/export (SavedModel), bin/convert_tflite (float32, dynamic int8),
                  tools/tflite_eval.py on test
    summary       OUT/summary.json and the printed markdown table

A stage whose outputs are complete is skipped: data stages check their tools' own completion
marks (manifests), the others an OUT/stamps/<stage>.json written after success (with the stage's
wall time). Interrupted training resumes from its checkpoints; pseudo-labelling and record
preparation keep finished shards. `--fresh` deletes OUT and redoes every stage after the data
stages (data whose marks exist is reused; delete DATA to rebuild it). `--only STAGE` runs one stage
even if done, assuming the stages before it are.
"""

import argparse
import dataclasses
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from tfkd import cli  # noqa: E402  (after the path)
from tfkd.study.plan import builtin_data_steps  # noqa: E402

STUDENTS = {
    # stage name: (gin file, label in the table)
    "fullsum_kd": ("gin/fullsum_kd.gin", "student: full-sum KD"),
    "hard_kd": ("gin/hard_kd.gin", "student: hard KD"),
    "baseline": ("gin/student_baseline.gin", "student: no KD (ground truth)"),
}
# Demo sizes that are flags of the CLIs rather than gin (gin sizes live in gin/demo/*.gin).
# Decoding loops step frame by frame in graph mode: per-op overhead dominates on CPU, so big batches
# (and a test subset for TFLite) keep decoding inside the demo's budget.
PSEUDO_LABEL_SPLIT = "train-unlabeled"  # every shard: 4,000 utterances of the small corpus
# train-labeled's sentences spoken twice more by new speakers (tools/make_corpus.py --respoken):
# labelled audio for the teacher and every student (docs/recipe.md).
RESPOKEN = 2
BEAM_WIDTH = 4
NBEST = 4
DECODE_BATCH = 64
EVAL_MAX_BATCHES = None  # all 500 dev / test utterances (~30 s a split on 2 idle cores)
TFLITE_MAX_UTTERANCES = 100
EXPORT_VERSION = "1"


class StageError(RuntimeError):
    """A stage's command failed; the message names the stage and its log."""


@dataclasses.dataclass
class Context:
    """Paths and options shared by the stages."""

    out: str
    data: str
    python: str = sys.executable
    baseline: bool = True
    size: str = "small"
    extra_gin: tuple[str, ...] = ()

    def records(self, split: str) -> str:
        return os.path.join(self.data, "records", f"{split}-*.tfrecord")

    @property
    def spm_model(self) -> str:
        return os.path.join(self.data, "spm", "spm.model")

    def path(self, *parts: str) -> str:
        return os.path.join(self.out, *parts)

    def tool(self, script: str, *args: str) -> list[str]:
        return [self.python, os.path.join(REPO, script), *args]

    def vocab_size(self) -> int:
        """Label ids of the SentencePiece model (one .vocab line each, blank included)."""
        path = os.path.splitext(self.spm_model)[0] + ".vocab"
        if not os.path.exists(path):  # a later stage run with --only before the data stages
            raise FileNotFoundError(
                f"no SentencePiece vocabulary {path}: run the data stages first (python "
                f"tools/run_demo.py --data {self.data} --only corpus, then --only spm)"
            )
        with open(path, encoding="utf-8") as f:
            return sum(1 for _ in f)

    def training_flags(self) -> list[str]:
        """Extra gin files, then the data paths and vocabulary of DATA (read when run)."""
        return [f"--gin_file={g}" for g in self.extra_gin] + [
            f"--gin_bindings=TRAIN_RECORDS = '{self.records('train-labeled')}'",
            f"--gin_bindings=RESPOKEN_RECORDS = '{self.records('train-respoken')}'",
            f"--gin_bindings=DEV_RECORDS = '{self.records('dev')}'",
            f"--gin_bindings=SPM_MODEL = '{self.spm_model}'",
            # Tiny corpora can give SentencePiece fewer pieces than the gin files' 256.
            f"--gin_bindings=VOCAB_SIZE = {self.vocab_size()}",
        ]


@dataclasses.dataclass
class Stage:
    """One step of the demo.

    Attributes:
        name: as given to --only.
        commands: ctx -> argv lists, run in order from the repository root.
        outputs: ctx -> paths that must all exist for the stage to count as done (besides the
            stamp, when `stamped`).
        stamped: done also needs OUT/stamps/<name>.json (written after success).
        enabled: ctx -> whether the stage runs at all.
        action: instead of commands, a Python function of ctx (the summary).
        always: never skipped (the summary is cheap and should reflect the latest state).
    """

    name: str
    commands: Callable[[Context], list[list[str]]] = lambda ctx: []
    outputs: Callable[[Context], list[str]] = lambda ctx: []
    stamped: bool = True
    enabled: Callable[[Context], bool] = lambda ctx: True
    action: Callable[[Context], None] | None = None
    always: bool = False

    def stamp(self, ctx: Context) -> str:
        return ctx.path("stamps", f"{self.name}.json")

    def log(self, ctx: Context) -> str:
        return ctx.path("logs", f"{self.name}.log")

    def done(self, ctx: Context) -> bool:
        if self.always:
            return False
        paths = self.outputs(ctx) + ([self.stamp(ctx)] if self.stamped else [])
        return all(os.path.exists(p) for p in paths)


def tf_env() -> dict[str, str]:
    """Environment of the TF subprocesses.

    The BFC allocator keeps freed buffers instead of returning them to the OS; on the 2-core VM
    large elementwise ops ran ~7x faster with it (loss benchmark) and training steps faster too.
    """
    env = dict(os.environ)
    env.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_command(argv: Sequence[str], log_path: str, env: dict[str, str] | None = None) -> int:
    """Runs argv, passing its output through (progress bars included) and appending it to log."""
    with open(log_path, "ab") as log:
        log.write(("\n$ " + " ".join(argv) + "\n").encode())
        log.flush()
        proc = subprocess.Popen(
            list(argv), cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        # Raw chunks, not lines: tqdm redraws with '\r' and would otherwise appear only at the end.
        while chunk := os.read(proc.stdout.fileno(), 65536):
            sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()
            log.write(chunk)
        return proc.wait()


def run_stage(stage: Stage, ctx: Context, env: dict[str, str] | None = None) -> float:
    """Runs one stage, writes its stamp, returns its wall time in seconds.

    The stamp's `seconds` include earlier interrupted or failed attempts (kept in
    `<stage>.partial.json`), so a resumed training run reports its whole wall time.

    Raises:
        StageError: a command exited non-zero; names the stage, the exit code and the log.
    """
    os.makedirs(ctx.path("logs"), exist_ok=True)
    os.makedirs(ctx.path("stamps"), exist_ok=True)
    log_path = stage.log(ctx)
    partial_path = ctx.path("stamps", f"{stage.name}.partial.json")
    earlier = (_load(partial_path) or {}).get("seconds", 0.0)
    start = time.time()
    try:
        if stage.action is not None:
            stage.action(ctx)
        for argv in stage.commands(ctx):
            print(f"[demo:{stage.name}] $ {' '.join(argv)}", flush=True)
            rc = run_command(argv, log_path, env)
            if rc != 0:
                raise StageError(
                    f"stage '{stage.name}' failed (exit code {rc}) running: {' '.join(argv)}\n"
                    f"  log: {log_path}\n"
                    f"  rerun: python tools/run_demo.py --out {ctx.out} --data {ctx.data} "
                    f"--only {stage.name}"
                )
    except BaseException:
        _dump(partial_path, {"stage": stage.name, "seconds": earlier + time.time() - start})
        raise
    seconds = earlier + time.time() - start
    _dump(
        stage.stamp(ctx),
        {"stage": stage.name, "seconds": round(seconds, 1), "finished": time.time()},
    )
    if os.path.exists(partial_path):
        os.remove(partial_path)
    return seconds


def _dump(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f)


def run_stages(
    stages: Sequence[Stage],
    ctx: Context,
    only: str | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, dict]:
    """Runs the stages in order, skipping done ones (`only`: run just that stage, done or not).

    Returns:
        {stage: {"status": "ran"|"skipped"|"disabled", "seconds": wall time of this run}}.
    """
    names = [s.name for s in stages]
    if only is not None and only not in names:
        raise StageError(f"unknown stage {only!r}; stages: {', '.join(names)}")
    report = {}
    for stage in stages:
        if only is not None and stage.name != only:
            continue
        if not stage.enabled(ctx):
            report[stage.name] = {"status": "disabled", "seconds": 0.0}
            continue
        if only is None and stage.done(ctx):
            print(f"[demo:{stage.name}] done already, skipped", flush=True)
            report[stage.name] = {"status": "skipped", "seconds": 0.0}
            continue
        print(f"[demo:{stage.name}] running (log: {stage.log(ctx)})", flush=True)
        seconds = run_stage(stage, ctx, env)
        print(f"[demo:{stage.name}] finished in {seconds:.0f} s", flush=True)
        report[stage.name] = {"status": "ran", "seconds": seconds}
    return report


# ---------------------------------------------------------------------------------------------
# The demo's stages.


def _data_steps(ctx):
    """Corpus, SentencePiece (vocabulary 256), records and the respoken split: the same commands
    as the study's."""
    return builtin_data_steps(ctx.tool, ctx.data, ctx.size, 256, respoken=RESPOKEN)


def _student_train(name):
    gin_file, _ = STUDENTS[name]

    def commands(ctx):
        argv = ctx.tool(
            "bin/train",
            f"--gin_file={gin_file}",
            "--gin_file=gin/demo/student.gin",
            f"--gin_file=gin/demo/{name}.gin",
            f"--model_dir={ctx.path(name)}",
            *ctx.training_flags(),
        )
        if name != "baseline":
            pattern = ctx.path("pseudo", "*.tfrecord")
            argv.append(f"--gin_bindings=PSEUDO_LABEL_RECORDS = '{pattern}'")
            # The demo does not pseudo-label dev: dev WER only (one warning), never the dev
            # pseudo-labels of another corpus under the working directory.
            dev_pattern = ctx.path("pseudo-dev", "*.tfrecord")
            argv.append(f"--gin_bindings=PSEUDO_LABEL_DEV_RECORDS = '{dev_pattern}'")
        return [argv]

    return commands


def _students(ctx):
    return [n for n in STUDENTS if n != "baseline" or ctx.baseline]


def _evaluate(model_dir, ctx):
    # The demo trains without dev evaluation, so a student's operative_config.gin names only its
    # pseudo-label records: the splits are passed explicitly.
    return ctx.tool(
        "bin/evaluate",
        f"--model_dir={model_dir}",
        "--split=dev",
        "--split=test",
        f"--records=dev={ctx.records('dev')}",
        f"--records=test={ctx.records('test')}",
        f"--spm_model={ctx.spm_model}",
        f"--batch_size={DECODE_BATCH}",
        *([f"--max_batches={EVAL_MAX_BATCHES}"] if EVAL_MAX_BATCHES else []),
    )


def _export_commands(ctx):
    model_dir = ctx.path("fullsum_kd")
    export = ctx.path("export")
    cmds = [
        ctx.tool(
            "bin/export",
            f"--model_dir={model_dir}",
            f"--output={os.path.join(export, 'saved_model', EXPORT_VERSION)}",
            "--overwrite",
        )
    ]
    for q in ("float32", "dynamic_int8"):
        cmds.append(
            ctx.tool(
                "bin/convert_tflite",
                f"--model_dir={model_dir}",
                f"--output_dir={export}",
                f"--quantization={q}",
            )
        )
    cmds.append(
        ctx.tool(
            "tools/tflite_eval.py",
            f"--model_dir={model_dir}",
            *[f"--tflite={p}" for p in _tflite_files(ctx)],
            f"--records={ctx.records('test')}",
            f"--output_json={os.path.join(export, 'tflite_eval.json')}",
            f"--max_utterances={TFLITE_MAX_UTTERANCES}",
        )
    )
    return cmds


def _tflite_files(ctx):
    return [
        ctx.path("export", f"student_{kind}_{q}.tflite")
        for q in ("float32", "dynamic_int8")
        for kind in ("whole", "streaming")
    ]


def demo_stages() -> list[Stage]:
    """The demo, in order."""
    stages = [
        Stage(
            name,
            commands=lambda ctx, i=i: _data_steps(ctx)[i][1],
            outputs=lambda ctx, i=i: list(_data_steps(ctx)[i][2]),
            stamped=False,
        )
        for i, name in enumerate(("corpus", "spm", "records", "respoken"))
    ]
    stages += [
        Stage(
            "teacher",
            commands=lambda ctx: [
                ctx.tool(
                    "bin/train",
                    "--gin_file=gin/teacher.gin",
                    "--gin_file=gin/demo/teacher.gin",
                    f"--model_dir={ctx.path('teacher')}",
                    *ctx.training_flags(),
                )
            ],
        ),
        Stage(
            "teacher_eval",
            commands=lambda ctx: [_evaluate(ctx.path("teacher"), ctx)],
            outputs=lambda ctx: [ctx.path("teacher", "eval", f"{s}.json") for s in ("dev", "test")],
        ),
        Stage(
            "pseudo_labels",
            commands=lambda ctx: [
                ctx.tool(
                    "bin/pseudo_label",
                    f"--teacher_dir={ctx.path('teacher')}",
                    f"--input_pattern={ctx.records(PSEUDO_LABEL_SPLIT)}",
                    f"--output_dir={ctx.path('pseudo')}",
                    f"--beam_width={BEAM_WIDTH}",
                    f"--nbest={NBEST}",
                    f"--batch_size={DECODE_BATCH}",
                )
            ],
            outputs=lambda ctx: [ctx.path("pseudo", "manifest.json")],
        ),
    ]
    for name in STUDENTS:
        stages.append(
            Stage(
                name,
                commands=_student_train(name),
                enabled=(lambda ctx: ctx.baseline) if name == "baseline" else (lambda ctx: True),
            )
        )
    stages += [
        Stage(
            "student_eval",
            commands=lambda ctx: [_evaluate(ctx.path(n), ctx) for n in _students(ctx)],
            outputs=lambda ctx: [
                ctx.path(n, "eval", f"{s}.json") for n in _students(ctx) for s in ("dev", "test")
            ],
        ),
        Stage(
            "export",
            commands=_export_commands,
            outputs=lambda ctx: [ctx.path("export", "tflite_eval.json")],
        ),
        Stage("summary", action=write_summary, always=True),
    ]
    return stages


# ---------------------------------------------------------------------------------------------
# Summary.


def _load(path):
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _stage_seconds(ctx):
    """{stage: wall time of its last successful run}, in demo order."""
    out = {}
    for stage in demo_stages():
        stamp = _load(stage.stamp(ctx))
        if stamp is not None:
            out[stage.name] = stamp["seconds"]
    return out


# What a run's `train.train_dataset_fn` reads: (labelled records, pseudo-label records).
_TRAINING_DATA = {
    "train_data/make_dataset": (True, False),
    "pseudo_label_dataset": (False, True),
    "mixed_label_dataset": (True, True),
}


def _trained_on(ctx, name):
    """`(text, {"labelled": n, "pseudo_labelled": n})` of what OUT/<name> trained on.

    Read from the run's operative_config.gin (so a student trained before a change of regime says
    what it really used); the counts are those of DATA's `train-labeled` records (plus
    `train-respoken`'s when the run read them) and OUT's pseudo-labels. `(None, {})` when the
    run has no operative config or an unknown dataset.
    """
    path = ctx.path(name, "operative_config.gin")
    if not os.path.exists(path):
        return None, {}
    with open(path) as f:
        config = f.read()
    match = re.search(r"^train\.train_dataset_fn = @(\S+)$", config, re.MULTILINE)
    if match is None or match.group(1) not in _TRAINING_DATA:
        return None, {}
    labelled, pseudo = _TRAINING_DATA[match.group(1)]
    counts = {}
    parts = []
    if labelled:
        splits = ["train-labeled"] + (["train-respoken"] if "train-respoken" in config else [])
        found = [_load(os.path.join(ctx.data, "records", f"{s}.manifest.json")) for s in splits]
        n = [m.get("num_utterances") if m else None for m in found]
        counts["labelled"] = None if None in n else sum(n)
        parts.append(f"{_count(counts['labelled'])} labelled")
    if pseudo:
        counts["pseudo_labelled"] = (_load(ctx.path("pseudo", "manifest.json")) or {}).get(
            "utterances"
        )
        parts.append(f"{_count(counts['pseudo_labelled'])} pseudo-labelled")
    return " + ".join(parts), counts


def _count(n):
    return "?" if n is None else f"{n:,}"


def collect_summary(ctx: Context) -> dict:
    """Teacher and student WERs, training data, pseudo-label quality, TFLite rows and stage times
    from OUT."""
    rows = []
    for name, label in [("teacher", "teacher (Conformer)")] + [
        (n, STUDENTS[n][1]) for n in STUDENTS
    ]:
        dev = _load(ctx.path(name, "eval", "dev.json"))
        test = _load(ctx.path(name, "eval", "test.json"))
        if dev is None and test is None:
            continue
        trained_on, counts = _trained_on(ctx, name)
        rows.append(
            {
                "model": name,
                "label": label,
                "trained_on": trained_on,
                "training_utterances": counts,
                "dev_wer": dev and dev["wer"],
                "test_wer": test and test["wer"],
                "step": (dev or test)["step"],
                "dev_utterances": dev and dev.get("utterances"),
                "test_utterances": test and test.get("utterances"),
            }
        )
    by_name = {r["model"]: r for r in rows}
    base = by_name.get("baseline")
    for r in rows:
        if base and r["model"] not in ("teacher", "baseline"):
            for split in ("dev", "test"):
                b, x = base[f"{split}_wer"], r[f"{split}_wer"]
                if b and x is not None:
                    r[f"{split}_rel_wer_reduction_vs_baseline"] = (b - x) / b
    pseudo = _load(ctx.path("pseudo", "manifest.json")) or {}
    tflite = _load(ctx.path("export", "tflite_eval.json")) or []
    saved = glob.glob(ctx.path("export", "saved_model", "*", "saved_model.pb"))
    return {
        "wer": rows,
        "pseudo_labels": {
            k: pseudo.get(k)
            for k in ("teacher_wer", "teacher_token_error_rate", "beam_width", "nbest")
        }
        | {"utterances": pseudo.get("utterances")},
        "tflite": [
            {
                k: t.get(k)
                for k in (
                    "model",
                    "kind",
                    "wer",
                    "keras_wer",
                    "wer_diff",
                    "rtf_1_thread",
                    "size_bytes",
                    "utterances",
                )
            }
            for t in tflite
        ],
        "saved_model": [os.path.dirname(p) for p in saved],
        "stage_seconds": _stage_seconds(ctx),
    }


def _pct(x):
    return "–" if x is None else f"{x:.2f}"


def format_summary(summary: dict) -> str:
    """The final markdown tables."""
    lines = [
        "| model | trained on | step | dev WER % | test WER % | rel. WER red. vs no-KD (test) |"
    ]
    lines.append("|---|---|---:|---:|---:|---:|")
    for r in summary["wer"]:
        rel = r.get("test_rel_wer_reduction_vs_baseline")
        rel = "–" if rel is None else f"{rel:+.1%}"
        lines.append(
            f"| {r['label']} | {r.get('trained_on') or '?'} | {r['step']} | {_pct(r['dev_wer'])} "
            f"| {_pct(r['test_wer'])} | {rel} |"
        )
    if summary["wer"]:
        r = summary["wer"][0]
        lines.append(
            f"\nGreedy decoding; WER over the first {r['dev_utterances']} dev and "
            f"{r['test_utterances']} test utterances."
        )
    if any("pseudo-labelled" in (r.get("trained_on") or "") for r in summary["wer"]):
        lines.append(
            "Trained on: labelled = the ground truth of train-labeled (and of its respoken "
            "renditions, where the run read them); pseudo-labelled = the teacher's hypotheses on "
            "train-unlabeled, whose transcripts no model trains on."
        )
    p = summary["pseudo_labels"]
    if p.get("teacher_wer") is not None:
        lines.append("")
        lines.append(
            f"Pseudo-labels: teacher 1-best WER {p['teacher_wer']:.2f}% on "
            f"{p.get('utterances') or '?'} train-unlabeled utterances "
            f"(beam {p.get('beam_width')}, N-best {p.get('nbest')}, full-sum scores)."
        )
    if summary["tflite"]:
        lines += [
            "",
            "| full-sum KD student, TFLite (test) | WER % | Keras WER % | diff | RTF (1 thread) "
            "| MB |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for t in summary["tflite"]:
            lines.append(
                f"| {t['model']} | {_pct(t['wer'])} | {_pct(t['keras_wer'])} | "
                f"{t['wer_diff']:+.2f} | {t['rtf_1_thread']:.4f} | {t['size_bytes'] / 1e6:.2f} |"
            )
    if summary["saved_model"]:
        lines += ["", "SavedModel: " + ", ".join(summary["saved_model"])]
    secs = summary["stage_seconds"]
    if secs:
        lines += ["", "| stage | wall time (s) |", "|---|---:|"]
        lines += [f"| {k} | {v:.0f} |" for k, v in secs.items()]
        lines.append(f"| total | {sum(secs.values()):.0f} |")
    return "\n".join(lines)


def write_summary(ctx: Context) -> None:
    """Writes OUT/summary.json and OUT/summary.md and prints the table."""
    summary = collect_summary(ctx)
    table = format_summary(summary)
    with open(ctx.path("summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    with open(ctx.path("summary.md"), "w") as f:
        f.write(table + "\n")
    print("\n" + table, flush=True)


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
    stages = demo_stages()
    names = [s.name for s in stages]
    if args.only is not None and args.only not in names:  # before --fresh deletes anything
        raise cli.UsageError(f"--only={args.only}: unknown stage; stages: {', '.join(names)}")
    if args.fresh and os.path.isdir(ctx.out):
        shutil.rmtree(ctx.out)
    start = time.time()
    try:
        run_stages(stages, ctx, only=args.only, env=tf_env())
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
