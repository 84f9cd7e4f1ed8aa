"""Carrying a study to another machine through the committed mirror.

A study directory OUT stays on the machine that ran it; the committed mirror RESULTS/runs
(`tfkd.study.mirror`) travels with the repository. Besides each finished job's small files, the
mirror keeps every finished teacher's final weights (`tools/carry_weights.py`, the teacher job's
last command: its checkpoint without the optimizer): pseudo-labelling and online students read
it, and training the teacher again elsewhere would give another teacher (training is not
bit-reproducible across CPUs), so the students already finished and those still to run would not
share their teacher. On a new machine the driver then:

- rebuilds the data (the data jobs; `check_data` compares it with `DATA_FINGERPRINT`, the hashes
  of the records and SentencePiece model the carried runs were trained on);
- puts back every teacher and student finished in the mirror but not in OUT, with its stamp
  (`restore`): the scheduler skips them, and the report reads them as if they ran here;
- reruns only what a job still to run needs (`unneeded`): a pseudo-label job (its records hold the
  audio, GBs) reruns from the carried teacher when a student still reads it, and not otherwise.

Nothing here imports TensorFlow.
"""

from __future__ import annotations

import dataclasses
import filecmp
import glob
import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Sequence

from tfkd.study import mirror
from tfkd.study.jobs import Job, read_json, stamp_path
from tfkd.study.plan import StudyPlan

# RESULTS/runs/data.json: {"files": {path under DATA: sha256}} of the data the carried runs used.
DATA_FINGERPRINT = "data.json"
# MODEL_DIR/weights: a teacher's weights without the optimizer (tools/carry_weights.py, the last
# command of a teacher job), a third of its training checkpoint; carried instead of it.
WEIGHTS_DIR = "weights"
# bin/train's checkpoint state file (tf.train.CheckpointManager, paths relative to the model dir).
CHECKPOINT_STATE = "checkpoint"
_LATEST = re.compile(r'^model_checkpoint_path:\s*"([^"]+)"\s*$', re.MULTILINE)


# ---- checkpoints -------------------------------------------------------------------------------


def latest_checkpoint_files(model_dir: str) -> list[str]:
    """The files of a model dir's latest checkpoint (its `.index` and `.data-*` shards) named by
    its checkpoint state file, as paths; [] without a state file or a relative checkpoint."""
    state = os.path.join(model_dir, CHECKPOINT_STATE)
    if not os.path.exists(state):
        return []
    with open(state, encoding="utf-8") as f:
        match = _LATEST.search(f.read())
    if match is None or os.path.isabs(match.group(1)):
        return []
    prefix = os.path.join(model_dir, match.group(1))
    return sorted(glob.glob(glob.escape(prefix) + ".index") + glob.glob(
        glob.escape(prefix) + ".data-*"))  # fmt: skip


def carry_checkpoint(model_dir: str, dst_dir: str) -> list[str]:
    """Copies `model_dir`'s latest checkpoint to `dst_dir` with a state file naming only it, and
    removes older checkpoints carried there before; returns the copies ([] without one)."""
    files = latest_checkpoint_files(model_dir)
    if not files:
        return []
    os.makedirs(dst_dir, exist_ok=True)
    keep = {os.path.basename(f) for f in files}
    for old in glob.glob(os.path.join(dst_dir, "ckpt-*")):
        if os.path.basename(old) not in keep:
            os.remove(old)
    copies = []
    for src in files:
        dst = os.path.join(dst_dir, os.path.basename(src))
        # By content: a teacher trained again has other weights in files of the same size.
        if not (os.path.exists(dst) and filecmp.cmp(src, dst, shallow=False)):
            shutil.copyfile(src, dst + ".tmp")
            os.replace(dst + ".tmp", dst)
        copies.append(dst)
    prefix = next(os.path.basename(f)[: -len(".index")] for f in files if f.endswith(".index"))
    state = os.path.join(dst_dir, CHECKPOINT_STATE)
    with open(state, "w", encoding="utf-8") as f:
        f.write(f'model_checkpoint_path: "{prefix}"\nall_model_checkpoint_paths: "{prefix}"\n')
    return [*copies, state]


# ---- data --------------------------------------------------------------------------------------


def data_files(data_dir: str) -> list[str]:
    """What the carried runs read from DATA, under DATA: every record file and the SentencePiece
    model (the corpus's audio and manifests are only the records' source)."""
    found = glob.glob(os.path.join(data_dir, "records", "*.tfrecord"))
    found += glob.glob(os.path.join(data_dir, "spm", "*.model"))
    return sorted(os.path.relpath(p, data_dir) for p in found)


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def data_fingerprint(data_dir: str) -> dict[str, str]:
    """`{path under DATA: sha256}` of `data_files`."""
    return {rel: _sha256(os.path.join(data_dir, rel)) for rel in data_files(data_dir)}


def record_data(plan: StudyPlan, results_dir: str) -> str | None:
    """Writes RESULTS/runs/data.json from DATA unless it exists (the first carried run's data
    stays the reference); returns its path when written."""
    path = os.path.join(mirror.mirror_root(results_dir), DATA_FINGERPRINT)
    if os.path.exists(path):
        return None
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump({"files": data_fingerprint(plan.data_dir)}, f, indent=1, sort_keys=True)
    os.replace(path + ".tmp", path)
    return path


def check_data(plan: StudyPlan, results_dir: str) -> str | None:
    """Why DATA is not the data of the carried runs (one line naming a file and the fix), or
    None when it is, or when the mirror records none."""
    path = os.path.join(mirror.mirror_root(results_dir), DATA_FINGERPRINT)
    want = (read_json(path) or {}).get("files")
    if not want:
        return None
    have = data_fingerprint(plan.data_dir)
    fix = (
        f"the carried runs in {mirror.mirror_root(results_dir)} were trained on other data "
        f"({path}): rebuild {plan.data_dir} with the tools and Debian packages they used, or move "
        "that directory aside to start the study afresh"
    )
    missing = sorted(set(want) - set(have))
    if missing:
        return f"{os.path.join(plan.data_dir, missing[0])} is missing ({len(missing)} files): {fix}"
    extra = sorted(set(have) - set(want))
    if extra:
        return f"{os.path.join(plan.data_dir, extra[0])} is new ({len(extra)} files): {fix}"
    differ = [rel for rel in sorted(want) if want[rel] != have[rel]]
    if differ:
        return f"{os.path.join(plan.data_dir, differ[0])} differs ({len(differ)} files): {fix}"
    return None


def guard_data(plan: StudyPlan, jobs: Sequence[Job], results_dir: str) -> list[Job]:
    """`jobs` with the last data job also checking `check_data` (after its own check)."""
    data = [j for j in jobs if j.name.startswith("data-") and "kind" not in j.info]
    if not data:
        return list(jobs)
    last = data[-1]
    own: Callable[[], str | None] | None = last.check

    def check():
        return (own() if own is not None else None) or check_data(plan, results_dir)

    return [dataclasses.replace(j, check=check) if j is last else j for j in jobs]


def carry_job(plan: StudyPlan, job: Job, results_dir: str) -> list[str]:
    """For a finished teacher: its weights (`WEIGHTS_DIR`; else, as in a teacher put back here,
    its final checkpoint) into its mirror copy (`carry_checkpoint`), and DATA's fingerprint into
    the mirror unless one is there (`record_data`); returns what it wrote. Other jobs carry
    nothing beyond `mirror.mirror_job`."""
    if job.info.get("kind") != "teacher":
        return []
    run_dir = job.info["model_dir"]
    weights = os.path.join(run_dir, WEIGHTS_DIR)
    source = weights if latest_checkpoint_files(weights) else run_dir
    copies = carry_checkpoint(
        source, mirror.mirrored(plan, mirror.mirror_root(results_dir), run_dir)
    )
    written = record_data(plan, results_dir) if copies else None
    return copies + ([written] if written else [])


_SHARD_KEYS = ("num_records", "num_bytes", "label_token_errors", "teacher_token_errors")


def _shard_counts(manifest: dict) -> list[tuple]:
    return [
        (os.path.basename(sh.get("input", "")), *(sh.get(k) for k in _SHARD_KEYS))
        for sh in manifest.get("shards", [])
    ]


def compare_pseudo_labels(plan: StudyPlan, job: Job, results_dir: str) -> str | None:
    """For a pseudo-label job run again here from a carried teacher, before its manifest replaces
    the mirror's: whether it made the pseudo-labels the students finished elsewhere read (per
    shard: records, bytes, token errors against the reference and the teacher), as one line;
    None for other jobs or with nothing in the mirror to compare with."""
    if job.info.get("kind") != "pseudo":
        return None
    copy = os.path.join(
        mirror.mirrored(plan, mirror.mirror_root(results_dir), job.info["dir"]), mirror.MANIFEST
    )
    carried = read_json(copy)
    made = read_json(os.path.join(job.info["dir"], mirror.MANIFEST))
    if carried is None or made is None:
        return None
    old, new = _shard_counts(carried), _shard_counts(made)
    if old == new:
        return f"{job.name}: the same pseudo-labels as the carried run's ({len(new)} shards agree)"
    differ = [a[0] for a, b in zip(old, new, strict=False) if a != b]
    differ += ["(shard count)"] if len(old) != len(new) else []
    return (
        f"{job.name}: pseudo-labels differ from the carried run's in {len(differ)} shards (first "
        f"{differ[0]}; label WER {carried.get('label_wer', float('nan')):.2f} then, "
        f"{made.get('label_wer', float('nan')):.2f} now): students finished before read the "
        "carried ones"
    )


def carry_study(plan: StudyPlan, jobs: Sequence[Job], results_dir: str) -> list[str]:
    """`carry_job` for every teacher finished in OUT (stamped, evaluated)."""
    copies = []
    for job in jobs:
        if mirror.finished_in_out(plan, job):
            copies += carry_job(plan, job, results_dir)
    return copies


# ---- putting finished runs back ----------------------------------------------------------------


def _carried_files(job: Job, copy: str) -> list[str] | None:
    """The files of a finished teacher or student in its mirror copy (relative), or None when
    the copy cannot stand for it: its stamp or evaluations are missing, or, for a teacher, its
    checkpoint."""
    needed = [*mirror.EVAL_FILES, mirror.MIRROR_STAMP]
    if not all(os.path.exists(os.path.join(copy, n)) for n in needed):
        return None
    names = [n for n in mirror.MODEL_FILES if os.path.exists(os.path.join(copy, n))]
    if job.info["kind"] == "teacher":
        ckpt = latest_checkpoint_files(copy)
        if not ckpt:
            return None
        names += [CHECKPOINT_STATE, *(os.path.basename(p) for p in ckpt)]
    return names


def restore(plan: StudyPlan, jobs: Sequence[Job], results_dir: str) -> list[str]:
    """Puts every teacher and student finished in the mirror but not in OUT back into OUT (its
    files, the teacher's checkpoint, and its stamp, which records where it came from), and the
    mirror's wall time when OUT has none; returns the names of the jobs put back."""
    root = mirror.mirror_root(results_dir)
    restored = []
    for job in jobs:
        if job.info.get("kind") not in ("teacher", "student"):
            continue
        if os.path.exists(stamp_path(plan.out_dir, job.name)):
            continue
        copy = mirror.mirrored(plan, root, job.info["model_dir"])
        names = _carried_files(job, copy)
        if names is None:
            continue
        for name in names:
            if name == mirror.MIRROR_STAMP:
                continue
            dst = os.path.join(job.info["model_dir"], name)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copyfile(os.path.join(copy, name), dst)
        stamp = read_json(os.path.join(copy, mirror.MIRROR_STAMP)) or {}
        stamp["restored_from"] = os.path.relpath(copy, os.path.dirname(root))
        path = stamp_path(plan.out_dir, job.name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(stamp, f, indent=1)
        restored.append(job.name)
    for name in (mirror.WALL_TIME, mirror.WALL_TIME_NOTE):
        src, dst = os.path.join(root, name), os.path.join(plan.out_dir, name)
        if os.path.exists(src) and not os.path.exists(dst):
            os.makedirs(plan.out_dir, exist_ok=True)
            shutil.copyfile(src, dst)
    return restored


def unneeded(jobs: Sequence[Job], done: Callable[[Job], bool]) -> set[str]:
    """Jobs not done that nothing left to run reads: neither a job without dependants still to
    run (a student) nor, recursively, a job not done that such a job depends on. Every job names
    each job whose outputs it reads (`tfkd.study.plan_jobs`), so a done job's own dependencies are
    not needed again. The mirror holds what the report reads of them (a pseudo-label job's
    manifest)."""
    by_name = {j.name: j for j in jobs}
    has_dependants = {d for j in jobs for d in j.deps}
    todo = [j.name for j in jobs if j.name not in has_dependants and not done(j)]
    needed: set[str] = set()
    while todo:
        name = todo.pop()
        if name not in needed:
            needed.add(name)
            todo.extend(d for d in by_name[name].deps if not done(by_name[d]))
    return {j.name for j in jobs if j.name not in needed and not done(j)}
