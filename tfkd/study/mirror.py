"""The committed mirror of a study's finished runs, and where the report reads each run from.

Run directories hold checkpoints and records and are not committed; the small files the report
reads are, in `RESULTS/runs/<path of the run under OUT>/` (`MIRROR`): a teacher's or student's
`eval/dev.json`, `eval/test.json`, `operative_config.gin` and learning curve `eval/history.jsonl`,
a pseudo-label job's `manifest.json`, and each job's stamp (`stamp.json`, its seconds), copied when
the job finishes (`mirror_job`, the scheduler's `on_done`) and again for every finished job when
the report is written (`mirror_study`). `tfkd.study.report` reads each run from OUT when it is
there, else from the mirror (`source_dir`, `study_file`), so a clone without OUT rebuilds the same
tables. A finished teacher's final checkpoint is carried there too, by `tfkd.study.carry`, so that
a clone on another machine can go on with the study. `RESULTS/runs/mirror.json` names the command
whose runs the mirror holds (`claim_mirror`):
the runs of two different studies never mix in one table.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence

from tfkd.study.jobs import Job, read_json, stamp_path
from tfkd.study.plan import StudyPlan

SPLITS = ("dev", "test")
EVAL_FILES = tuple(os.path.join("eval", f"{s}.json") for s in SPLITS)
# tfkd.training.history.HISTORY_FILE (that module imports TensorFlow; the study does not).
HISTORY_FILE = os.path.join("eval", "history.jsonl")
OPERATIVE_CONFIG = "operative_config.gin"
MODEL_FILES = (*EVAL_FILES, OPERATIVE_CONFIG, HISTORY_FILE)
MANIFEST = "manifest.json"
MIRROR = "runs"
MIRROR_STAMP = "stamp.json"
MIRROR_ID = "mirror.json"
WALL_TIME = "wall_time.json"
# OUT/wall_time.note: what the measured times leave out or add by hand (e.g. jobs carried over
# from another run of the same configuration), shown after the "Measured" line.
WALL_TIME_NOTE = "wall_time.note"


def mirror_root(results_dir: str) -> str:
    return os.path.join(results_dir, MIRROR)


def mirrored(plan: StudyPlan, mirror: str | None, path: str) -> str | None:
    """Where `path` (under OUT) lives in the mirror; None without a mirror."""
    if mirror is None:
        return None
    rel = os.path.relpath(path, plan.out_dir)
    if rel.startswith(os.pardir):
        raise ValueError(f"{path} is not under the study directory {plan.out_dir}")
    return os.path.join(mirror, rel)


def job_dir(job: Job) -> str | None:
    """The run directory of a teacher, student or pseudo-label job (None for data jobs)."""
    kind = job.info.get("kind")
    if kind in ("teacher", "student"):
        return job.info["model_dir"]
    return job.info["dir"] if kind == "pseudo" else None


def _job_files(job: Job) -> tuple[str, ...]:
    return (MANIFEST,) if job.info.get("kind") == "pseudo" else MODEL_FILES


def claim_mirror(results_dir: str, command: str) -> None:
    """Records in `RESULTS/runs/mirror.json` that the mirror holds the runs of `command`.

    Raises:
        ValueError: it holds the runs of another command (another preset, `--out` or bindings).
    """
    path = os.path.join(mirror_root(results_dir), MIRROR_ID)
    held = (read_json(path) or {}).get("command")
    if held is not None and held != command:
        raise ValueError(
            f"{mirror_root(results_dir)} holds the runs of `{held}`, not of `{command}`: run that "
            "command (with --report_only to rebuild its tables), or give this study its own "
            "--results"
        )
    if held is None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"command": command}, f, indent=1)


def mirror_job(plan: StudyPlan, job: Job, results_dir: str) -> list[str]:
    """Copies a finished job's small result files (no checkpoint or record: a teacher's
    checkpoint is `tfkd.study.carry`'s) and its stamp to `RESULTS/runs/<run dir under OUT>/`;
    returns the copies."""
    run_dir = job_dir(job)
    if run_dir is None:
        return []
    dst_dir = mirrored(plan, mirror_root(results_dir), run_dir)
    pairs = [(os.path.join(run_dir, name), os.path.join(dst_dir, name)) for name in _job_files(job)]
    stamp = stamp_path(plan.out_dir, job.name)
    if "restored_from" not in (read_json(stamp) or {}):  # put back from here: the copy stays
        pairs.append((stamp, os.path.join(dst_dir, MIRROR_STAMP)))
    return _copy_present(pairs)


def _copy_present(pairs: Sequence[tuple[str, str]]) -> list[str]:
    """Copies each `(src, dst)` whose source exists (making dst's directory); returns the copies."""
    copied = []
    for src, dst in pairs:
        if os.path.exists(src):
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copyfile(src, dst)
            copied.append(dst)
    return copied


def finished_in_out(plan: StudyPlan, job: Job) -> bool:
    """`job` finished in OUT: its stamp and its outputs (it has some) exist."""
    done = os.path.exists(stamp_path(plan.out_dir, job.name))
    return done and bool(job.outputs) and all(os.path.exists(p) for p in job.outputs)


def mirror_study(plan: StudyPlan, jobs: Sequence[Job], results_dir: str) -> list[str]:
    """`mirror_job` for every finished job in OUT (stamp and outputs exist), and OUT's wall time
    and its note; returns the copies."""
    copied = []
    for job in jobs:
        if finished_in_out(plan, job):
            copied += mirror_job(plan, job, results_dir)
    names = (WALL_TIME, WALL_TIME_NOTE)
    pairs = [
        (os.path.join(plan.out_dir, n), os.path.join(mirror_root(results_dir), n)) for n in names
    ]
    return copied + _copy_present(pairs)


def source_dir(
    plan: StudyPlan, mirror: str | None, run_dir: str, needed: Sequence[str]
) -> str | None:
    """`run_dir` when it holds the `needed` files, else its mirror copy when that does, else
    None."""
    for candidate in (run_dir, mirrored(plan, mirror, run_dir)):
        if candidate and all(os.path.exists(os.path.join(candidate, n)) for n in needed):
            return candidate
    return None


def study_file(plan: StudyPlan, mirror: str | None, name: str) -> str | None:
    """OUT/<name>, else its copy in the mirror; None when neither exists."""
    for d in (plan.out_dir, mirror):
        if d is not None and os.path.exists(os.path.join(d, name)):
            return os.path.join(d, name)
    return None
