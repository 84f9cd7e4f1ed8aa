"""The job model of the study and of `make demo`: what the scheduler runs, how it marks a job done,
and the data jobs.

A `Job` is a list of the project's own CLI commands (`bin/train`, `bin/evaluate`,
`bin/pseudo_label`, the data tools), run in order from the repository root, with the jobs it
depends on and the outputs that show it finished. `tfkd.study.plan_jobs` expands a study into
jobs and `tfkd.study.demo` lists `make demo`'s stages as jobs; `tfkd.study.scheduler` runs them
and writes their stamps and logs, `tfkd.study.report` and `tfkd.study.demo_report` read what they
wrote. Nothing here imports TensorFlow.

Under a study directory OUT (or the demo's), the scheduler keeps:

    logs/<job>.log, stamps/<job>.json

The built-in corpus, its SentencePiece model and its records are made by the same steps for
`make demo` and for the study (`builtin_data_steps`), so that both reuse the same data; each step
checks that data it finds was made with this run's sizes (`Job.check`).
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
        check: for a job whose outputs exist, why they do not fit this run (one line naming the
            file and the fix), or None when they do. A job done but not fitting fails with that
            message instead of being skipped: no command runs, and the jobs that need it are
            blocked, done or not. Also asked when the job's commands have finished. None (the
            default): what exists fits; the data steps (`builtin_data_steps`) check their sizes.
    """

    name: str
    commands: Sequence[Sequence[str]] | Callable[[], Sequence[Sequence[str]]]
    deps: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    before: Callable[[], None] | None = None
    info: dict = dataclasses.field(default_factory=dict)
    stamped: bool = True
    always: bool = False
    check: Callable[[], str | None] | None = None

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


class DataStep(tuple):
    """A step of `builtin_data_steps`: the tuple `(name, commands, marks)` (it unpacks and
    compares as that tuple), and `check`, its job's `Job.check` (None: none)."""

    check: Callable[[], str | None] | None

    def __new__(cls, name: str, commands, marks: tuple[str, ...], check=None):
        step = super().__new__(cls, (name, commands, marks))
        step.check = check
        return step


def data_jobs(steps: Sequence[tuple], prefix: str = "data-") -> list[Job]:
    """Jobs `<prefix><name>` for `builtin_data_steps`, each after every one before (each step
    reads the corpus and the SentencePiece model; a job names every job whose outputs it reads,
    `tfkd.study.carry.unneeded`); unstamped, since the data tools write their own completion marks
    (so data built by `make demo`, whose stages have no prefix, is reused by the study and the
    other way round), and checked (`DataStep.check`) when the step is a `DataStep`."""
    jobs = []
    for step in steps:
        name, cmds, marks = step
        check = getattr(step, "check", None)
        deps = tuple(j.name for j in jobs)
        jobs.append(Job(f"{prefix}{name}", cmds, deps, marks, stamped=False, check=check))
    return jobs


_REBUILD = "to rebuild {}, or use another data directory"


def _read_manifest(path: str) -> tuple[dict | None, str | None]:
    """`(manifest, None)`, or `(None, why it cannot be read)`."""
    try:
        data = read_json(path)
    except (OSError, ValueError) as e:
        return None, f"{path} cannot be read ({e})"
    if data is None:
        return None, f"{path} is missing"
    if not isinstance(data, dict):
        return None, f"{path} is not a manifest"
    return data, None


def _and(items: Sequence[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    items = list(items)
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def preset_utterances(size: str) -> dict[str, int] | None:
    """Utterances of the four main splits of corpus preset `size`
    (`tfkd.data.synthetic_corpus.PRESETS`), or None for no preset (`tools/make_corpus.py`
    refuses it)."""
    from tfkd.data.synthetic_corpus import PRESETS  # numpy and the TTS: only when asked

    return dict(PRESETS[size].utterances) if size in PRESETS else None


def evaluate_command(
    tool,
    model_dir: str,
    records: Callable[[str], str],
    spm_model: str,
    batch_size: int,
    max_batches: int | None = None,
) -> list[str]:
    """`bin/evaluate` of a model dir on dev and test (all of them, or `max_batches` batches), the
    splits' records named explicitly (`records(split)` -> file pattern): a run's operative config
    may name other records (a KD student's are its pseudo-labels; the demo trains without dev
    evaluation)."""
    return tool(
        "bin/evaluate",
        f"--model_dir={model_dir}",
        "--split=dev",
        "--split=test",
        f"--records=dev={records('dev')}",
        f"--records=test={records('test')}",
        f"--spm_model={spm_model}",
        f"--batch_size={batch_size}",
        *([f"--max_batches={max_batches}"] if max_batches else []),
    )


def check_records(
    records: str, want: dict[str, int], asks: str, delete: Sequence[str] = ()
) -> str | None:
    """Whether records made by `tools/prepare_librispeech.py` have the sizes this run asks for.

    Args:
        records: DATA/records, with `<split>.manifest.json`.
        want: utterances each split must have (`num_utterances`; a split whose `num_candidates`,
            the utterances found before decoding, match also fits: utterances that
            `prepare_librispeech` dropped as bad input are its own report, not another size).
        asks: the flag asking for these sizes, for the message (e.g. "--pool 20000").
        delete: what to delete besides the records of the splits that do not fit (their corpus
            splits), for the message.

    Returns:
        None when every split fits, else one line: the first split that does not, what this run
        asks for and what to delete to rebuild the ones that do not.
    """
    wrong = []
    for split, count in want.items():
        path = os.path.join(records, f"{split}.manifest.json")
        manifest, problem = _read_manifest(path)
        if problem is None:
            have = manifest.get("num_utterances")
            if count in (have, manifest.get("num_candidates")):
                continue
            problem = f"{path} has {have} utterances, but this run asks for {count} ({asks})"
        wrong.append((split, problem))
    if not wrong:
        return None
    paths = [*delete, *(os.path.join(records, split) + "*" for split, _ in wrong)]
    them = "it" if len(wrong) == 1 else "them"
    return f"{wrong[0][1]}; delete {_and(paths)} {_REBUILD.format(them)}"


def check_corpus(corpus: str, size: str) -> str | None:
    """Whether `corpus/manifest.json` (`tools/make_corpus.py`) is of preset `size`, with its
    four splits of the preset's utterances; None when it is, else one line saying what differs
    and what to delete."""
    path = os.path.join(corpus, "manifest.json")
    fix = f"delete {corpus} {_REBUILD.format('it')}"
    manifest, problem = _read_manifest(path)
    if problem is not None:
        return f"{problem}; {fix}"
    made = manifest.get("size")
    if made != size:
        return f"{path} is of a corpus of size {made}, but this run asks for {size}; {fix}"
    splits = manifest.get("splits") or {}
    for split, count in (preset_utterances(size) or {}).items():
        have = (splits.get(split) or {}).get("utterances")
        if have != count:
            return (
                f"{path} has {have} utterances in {split}, but this run asks for {count} "
                f"(--size {size}); {fix}"
            )
    return None


def check_spm(spm_prefix: str, corpus: str, vocab_size: int, records: str) -> str | None:
    """Whether the SentencePiece model `spm_prefix.model` was trained on `corpus`/train-labeled
    with `vocab_size` (its `spm_prefix.json`, written by `tools/train_spm.py`); None when it was
    or when there is no such manifest (a model made before manifests: nothing to compare), else
    one line saying what differs and what to delete (the model, and the records, whose token ids
    it made)."""
    path = spm_prefix + ".json"
    if not os.path.exists(path):
        return None
    manifest, problem = _read_manifest(path)
    fix = (
        f"delete {_and([spm_prefix + '.*', os.path.join(records, '*')])} to rebuild them, or use "
        "another data directory"
    )
    if problem is not None:
        return f"{problem}; {fix}"
    want = os.path.join(corpus, "train-labeled")
    made_from = str(manifest.get("input", ""))
    # The last three components (corpus/<size>/train-labeled): a moved data directory still fits.
    if made_from.split(os.sep)[-3:] != os.path.abspath(want).split(os.sep)[-3:]:
        return (
            f"{path}: the SentencePiece model was trained on {made_from}, but this run asks for "
            f"{want}; {fix}"
        )
    if manifest.get("vocab_size") != vocab_size:
        return (
            f"{path}: the SentencePiece model was trained with --vocab_size "
            f"{manifest.get('vocab_size')}, but this run asks for {vocab_size}; {fix}"
        )
    return None


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
        `DataStep`s `(name, commands, completion marks)` for "corpus", "spm", "records" (and
        "respoken", "pool"), in order; each tool writes its marks only when it finished (and
        resumes where it stopped). Their `check`s refuse data made with other sizes, which the
        marks do not tell apart: a corpus manifest of another preset or preset sizes
        (`check_corpus`), a SentencePiece model of another corpus or size (`check_spm`), records
        of the four splits with other than the preset's utterances,
        `train-respoken` with other than `respoken` x train-labeled's, `train-pool` with other
        than `pool` (`check_records`).
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

    def check(want, asks, delete=()):
        """A step's check of its records: `want(preset's utterances) -> {split: utterances}`."""

        def run():
            sizes = preset_utterances(size)
            if sizes is None:  # no such preset: the corpus step refuses it
                return None
            return check_records(records, want(sizes), asks, delete)

        return run

    steps = [
        DataStep(
            "corpus",
            [tool("tools/make_corpus.py", "--size", size, "--jobs", "2", corpus)],
            (os.path.join(corpus, "manifest.json"),),
            check=lambda: check_corpus(corpus, size),
        ),
        DataStep(
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
            check=lambda: check_spm(spm_prefix, corpus, vocab_size, records),
        ),
        DataStep(
            "records",
            [prepare(split) for split in SPLITS],
            tuple(os.path.join(records, f"{s}.manifest.json") for s in SPLITS),
            check=check(lambda sizes: sizes, f"--size {size}"),
        ),
    ]
    if respoken > 0:
        split = "train-respoken"
        steps.append(
            DataStep(
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
                check=check(
                    lambda sizes: {"train-respoken": respoken * sizes["train-labeled"]},
                    f"--respoken {respoken}",
                    (os.path.join(corpus, split),),
                ),
            )
        )
    if pool > 0:
        split = "train-pool"
        also = ("--respoken", str(respoken)) if respoken > 0 else ()
        make = ("--size", size, "--jobs", "2", "--pool", str(pool), *also, corpus)
        steps.append(
            DataStep(
                "pool",
                [tool("tools/make_corpus.py", *make), prepare(split)],
                (os.path.join(records, f"{split}.manifest.json"),),
                check=check(
                    lambda _: {"train-pool": pool}, f"--pool {pool}", (os.path.join(corpus, split),)
                ),
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
