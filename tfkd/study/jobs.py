"""The job model of the study and of `make demo`: what the scheduler runs, how it marks a job done,
and the data jobs.

A `Job` is a list of the project's own CLI commands (`bin/train`, `bin/evaluate`,
`bin/pseudo_label`, the data tools), run in order from the repository root, with the jobs it
depends on and the outputs that show it finished. `tfkd.study.plan` expands a study into jobs and
`tfkd.study.demo` lists `make demo`'s stages as jobs; `tfkd.study.scheduler` runs them and writes
their stamps and logs, `tfkd.study.report` and `tfkd.study.demo_report` read what they wrote.
Nothing here imports TensorFlow.

Under a study directory OUT (or the demo's), the scheduler keeps:

    logs/<job>.log, stamps/<job>.json

The built-in corpus, its SentencePiece model and its records are made by the same steps for
`make demo` and for the study (`builtin_data_steps`), so that both reuse the same data.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Callable, Sequence

SPLITS = ("train-labeled", "train-unlabeled", "dev", "test")


@dataclasses.dataclass
class Job:
    """One unit of work: commands run in order from the repository root.

    Attributes:
        name: unique; also names the log and the stamp.
        commands: argv lists, or a function returning them, called when the job starts (after
            its dependencies finished: tuned values are known then).
        deps: names of jobs that must finish first.
        outputs: paths that must exist for the job to count as done.
        before: optional function run before the commands (e.g. copy a teacher checkpoint).
        info: what the report needs to know about the job (arm, method, seed, paths, ...).
        stamped: done also needs the scheduler's stamp; False for data whose tools write their
            own completion marks (the outputs), so data built by `make demo` is reused as is.
        always: never counts as done: runs on every invocation (a cheap job that reflects the
            latest state, e.g. the demo's summary).
    """

    name: str
    commands: Sequence[Sequence[str]] | Callable[[], Sequence[Sequence[str]]]
    deps: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    before: Callable[[], None] | None = None
    info: dict = dataclasses.field(default_factory=dict)
    stamped: bool = True
    always: bool = False

    def argv_lists(self) -> list[list[str]]:
        cmds = self.commands() if callable(self.commands) else self.commands
        return [list(c) for c in cmds]


def stamp_path(out_dir: str, job_name: str) -> str:
    """`OUT/stamps/<job>.json`: written by the scheduler when a job succeeds, with its seconds."""
    return os.path.join(out_dir, "stamps", f"{job_name}.json")


def read_json(path: str) -> dict | None:
    """The JSON object at `path`, or None if the file does not exist."""
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def in_sequence(jobs: Sequence[Job]) -> list[Job]:
    """The jobs, each also depending on the one before it: they run one after another, and a
    failure blocks every later job (`make demo`'s stages)."""
    out = []
    for job in jobs:
        before = (out[-1].name,) if out and out[-1].name not in job.deps else ()
        out.append(dataclasses.replace(job, deps=job.deps + before))
    return out


def data_jobs(steps: Sequence[tuple], prefix: str = "data-") -> list[Job]:
    """Jobs `<prefix><name>` for `builtin_data_steps`, each after the one before; unstamped,
    since the data tools write their own completion marks (so data built by `make demo`, whose
    stages have no prefix, is reused by the study and the other way round)."""
    return in_sequence(
        [Job(f"{prefix}{name}", cmds, outputs=marks, stamped=False) for name, cmds, marks in steps]
    )


def builtin_data_steps(
    tool, data_dir: str, size: str, vocab_size: int, respoken: int = 0, pool: int = 0
) -> list[tuple]:
    """How the built-in corpus, its SentencePiece model and its records are made in `data_dir`
    (shared by `make demo` and the study, so that both reuse the same data).

    Args:
        tool: `tool(script, *args) -> argv` running one of the project's scripts.
        data_dir: DATA; the corpus goes to DATA/corpus/<size>, the model to DATA/spm/spm.model,
            the records to DATA/records.
        size: `tools/make_corpus.py --size`.
        vocab_size: SentencePiece pieces (blank included).
        respoken: when > 0, a fourth step "respoken" adds the `train-respoken` split
            (`tools/make_corpus.py --respoken`: `train-labeled`'s sentences spoken that many
            more times by new speakers) and its records, DATA/records/train-respoken-*.
        pool: when > 0, a last step "pool" adds the unlabelled `train-pool` split
            (`tools/make_corpus.py --pool`: that many utterances of sentences no other split
            uses, by new speakers; with `--respoken` too when respoken > 0, so the corpus
            manifest lists both) and its records, DATA/records/train-pool-*.

    Returns:
        `[(name, commands, completion marks)]` for "corpus", "spm", "records" (and "respoken",
        "pool"), in order; each tool writes its marks only when it finished (and resumes where
        it stopped).
    """
    corpus = os.path.join(data_dir, "corpus", size)
    spm_prefix = os.path.join(data_dir, "spm", "spm")
    records = os.path.join(data_dir, "records")

    def prepare(split):
        return tool(
            "tools/prepare_librispeech.py",
            os.path.join(corpus, split),
            records,
            "--spm_model",
            spm_prefix + ".model",
            "--jobs",
            "2",
        )

    steps = [
        (
            "corpus",
            [tool("tools/make_corpus.py", "--size", size, "--jobs", "2", corpus)],
            (os.path.join(corpus, "manifest.json"),),
        ),
        (
            "spm",
            [
                tool(
                    "tools/train_spm.py",
                    os.path.join(corpus, "train-labeled"),
                    "--vocab_size",
                    str(vocab_size),
                    "--output_prefix",
                    spm_prefix,
                )
            ],
            (spm_prefix + ".model",),
        ),
        (
            "records",
            [prepare(split) for split in SPLITS],
            tuple(os.path.join(records, f"{s}.manifest.json") for s in SPLITS),
        ),
    ]
    if respoken > 0:
        split = "train-respoken"
        steps.append(
            (
                "respoken",
                [
                    tool(
                        "tools/make_corpus.py",
                        "--size",
                        size,
                        "--jobs",
                        "2",
                        "--respoken",
                        str(respoken),
                        corpus,
                    ),
                    prepare(split),
                ],
                (os.path.join(records, f"{split}.manifest.json"),),
            )
        )
    if pool > 0:
        split = "train-pool"
        also = ("--respoken", str(respoken)) if respoken > 0 else ()
        make = ("--size", size, "--jobs", "2", "--pool", str(pool), *also, corpus)
        steps.append(
            (
                "pool",
                [tool("tools/make_corpus.py", *make), prepare(split)],
                (os.path.join(records, f"{split}.manifest.json"),),
            )
        )
    return steps


def copy_checkpoint(src: str, dst: str) -> Callable[[], None]:
    """Copies a `bin/train` model dir's checkpoint and config into an empty `dst` (a teacher that
    continues another's training); does nothing when `dst` already has a checkpoint."""

    def copy():
        if os.path.exists(os.path.join(dst, "checkpoint")):
            return
        os.makedirs(dst, exist_ok=True)
        for name in os.listdir(src):
            if name.startswith("ckpt-") or name in ("checkpoint", "operative_config.gin"):
                shutil.copy2(os.path.join(src, name), os.path.join(dst, name))

    return copy
