"""`make demo` as a preset of the study's machinery: its stages are `Job`s (`demo_jobs`) that
`run_stages` runs one after another with `tfkd.study.scheduler`; `tools/run_demo.py` is its command
line and `tfkd.study.demo_report` its summary. Nothing here imports TensorFlow.

Stages (each runs the project's own CLIs as subprocesses; output passes through and is kept in
OUT/logs/<stage>.log):

    corpus        tools/make_corpus.py --size small            -> DATA/corpus/small
    spm           tools/train_spm.py (vocab 256)               -> DATA/spm/spm.model
    records       tools/prepare_librispeech.py per split       -> DATA/records/<split>-*.tfrecord
    respoken      tools/make_corpus.py --respoken 2 and its records -> DATA/records/train-respoken-*
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

The data stages are the study's data jobs (`builtin_data_steps`), unstamped: done on their tools'
completion marks, so the demo and the study reuse each other's data. The other stages are done on
their stamps, OUT/stamps/<stage>.json (with the stage's wall time); the summary runs every time.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
from collections.abc import Sequence

from tfkd.study.jobs import Job, builtin_data_steps, data_jobs, evaluate_command, in_sequence
from tfkd.study.scheduler import Scheduler

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

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
VOCAB_SIZE = 256
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


# ---------------------------------------------------------------------------------------------
# The demo's stages.


def _teacher_commands(ctx: Context) -> list[list[str]]:
    train = ctx.tool(
        "bin/train",
        "--gin_file=gin/teacher.gin",
        "--gin_file=gin/demo/teacher.gin",
        f"--model_dir={ctx.path('teacher')}",
        *ctx.training_flags(),
    )
    return [train]


def _student_commands(ctx: Context, name: str) -> list[list[str]]:
    gin_file, _ = STUDENTS[name]
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


def _students(ctx: Context) -> list[str]:
    return [n for n in STUDENTS if n != "baseline" or ctx.baseline]


def _evaluate(model_dir: str, ctx: Context) -> list[str]:
    return evaluate_command(
        ctx.tool, model_dir, ctx.records, ctx.spm_model, DECODE_BATCH, EVAL_MAX_BATCHES
    )


def _eval_outputs(ctx: Context, *names: str) -> tuple[str, ...]:
    return tuple(ctx.path(n, "eval", f"{s}.json") for n in names for s in ("dev", "test"))


def _pseudo_label_commands(ctx: Context) -> list[list[str]]:
    pseudo_label = ctx.tool(
        "bin/pseudo_label",
        f"--teacher_dir={ctx.path('teacher')}",
        f"--input_pattern={ctx.records(PSEUDO_LABEL_SPLIT)}",
        f"--output_dir={ctx.path('pseudo')}",
        f"--beam_width={BEAM_WIDTH}",
        f"--nbest={NBEST}",
        f"--batch_size={DECODE_BATCH}",
    )
    return [pseudo_label]


def _export_commands(ctx: Context) -> list[list[str]]:
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


def _tflite_files(ctx: Context) -> list[str]:
    return [
        ctx.path("export", f"student_{kind}_{q}.tflite")
        for q in ("float32", "dynamic_int8")
        for kind in ("whole", "streaming")
    ]


def _write_summary(ctx: Context) -> None:
    from tfkd.study import demo_report  # the report reads this module's stage list

    demo_report.write_summary(ctx)


def demo_jobs(ctx: Context) -> list[Job]:
    """The demo's stages, in order (the no-KD baseline only with `ctx.baseline`).

    Commands are made when their stage starts: training reads DATA's vocabulary then.
    """
    data = builtin_data_steps(ctx.tool, ctx.data, ctx.size, VOCAB_SIZE, respoken=RESPOKEN)
    later = functools.partial
    return [
        *data_jobs(data, prefix=""),
        Job("teacher", later(_teacher_commands, ctx)),
        Job(
            "teacher_eval",
            lambda: [_evaluate(ctx.path("teacher"), ctx)],
            outputs=_eval_outputs(ctx, "teacher"),
        ),
        Job(
            "pseudo_labels",
            later(_pseudo_label_commands, ctx),
            outputs=(ctx.path("pseudo", "manifest.json"),),
        ),
        *[Job(name, later(_student_commands, ctx, name)) for name in _students(ctx)],
        Job(
            "student_eval",
            lambda: [_evaluate(ctx.path(n), ctx) for n in _students(ctx)],
            outputs=_eval_outputs(ctx, *_students(ctx)),
        ),
        Job(
            "export",
            later(_export_commands, ctx),
            outputs=(ctx.path("export", "tflite_eval.json"),),
        ),
        Job("summary", [], before=later(_write_summary, ctx), always=True),
    ]


# ---------------------------------------------------------------------------------------------
# Running them.


def scheduler(ctx: Context, env: dict[str, str] | None = None) -> Scheduler:
    """The study's scheduler as the demo runs it: one stage at a time in OUT, the commands' output
    passed through, `[demo:<stage>]` lines."""
    return Scheduler(ctx.out, repo=REPO, env=env, progress=False, echo=True, tag="demo")


def run_stages(
    jobs: Sequence[Job],
    ctx: Context,
    only: str | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, str]:
    """Runs the jobs one after another, skipping done ones (`only`: just that one, done or not,
    taking the stages before it as done); a failure stops the stages after it.

    Returns:
        `{stage: "done"|"skipped"}`.

    Raises:
        StageError: `only` is no stage, or a stage failed: the message names the stage, its exit
            code and command, its log and the command that reruns it.
        Exception: what making a stage's commands raised (e.g. FileNotFoundError: a training
            stage run before the data stages).
    """
    names = [j.name for j in jobs]
    if only is not None and only not in names:
        raise StageError(f"unknown stage {only!r}; stages: {', '.join(names)}")
    runner = scheduler(ctx, env)
    status = runner.run(in_sequence(jobs), only=only)
    for name, failure in runner.failures.items():  # at most one: the stages after it are blocked
        if failure.error is not None:
            raise failure.error
        if failure.misfit:  # rerunning the stage alone would be refused again: delete first
            raise StageError(
                f"stage '{name}' refused the data it found: {failure.reason}\n"
                f"  then rerun: python tools/run_demo.py --out {ctx.out} --data {ctx.data}"
            )
        command = f" running: {' '.join(failure.argv)}" if failure.argv else ""
        raise StageError(
            f"stage '{name}' failed ({failure.reason}){command}\n"
            f"  log: {runner.path('logs', f'{name}.log')}\n"
            f"  rerun: python tools/run_demo.py --out {ctx.out} --data {ctx.data} --only {name}"
        )
    return {name: status[name] for name in names if name in status}
