"""The study's results: `study.json`, `study.md` and `study.png` from what its jobs wrote.

Every number comes from a `bin/evaluate` report (`<model dir>/eval/{dev,test}.json`) or a
`bin/pseudo_label` manifest; the JSON keeps, for every cell, the runs it averages with their
model directories and operative configs, and the markdown links each number to them.

The mirror. Run directories hold checkpoints and records and are not committed; the small files
the report reads are, in `RESULTS/runs/<path of the run under OUT>/` (`MIRROR`): a teacher's or
student's `eval/dev.json`, `eval/test.json`, `operative_config.gin` and learning curve
`eval/history.jsonl`, a pseudo-label job's `manifest.json`, and each job's stamp (`stamp.json`,
its seconds), copied when the job finishes (`mirror_job`, the scheduler's `on_done`) and again for
every finished job when the report is written (`mirror_study`). `collect` reads each run from OUT
when it is there, else from the mirror, so a clone without OUT rebuilds the same tables.
`RESULTS/runs/mirror.json` names the command whose runs the mirror holds (`claim_mirror`): the
runs of two different studies never mix in one table.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Mapping, Sequence

from tfkd.study import stats
from tfkd.study.jobs import Job, read_json, stamp_path
from tfkd.study.plan import BASELINE_ARM, StudyPlan, cell_key, setting_name

SPLITS = ("dev", "test")
EVAL_FILES = tuple(os.path.join("eval", f"{s}.json") for s in SPLITS)
# tfkd.training.history.HISTORY_FILE (that module imports TensorFlow; the report does not).
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
# A run has converged when its dev WER moved by at most this many points between its last two
# periodic evaluations.
CONVERGED_WITHIN = 1.0
# The paper's claims, tested as paired comparisons (`comparisons`): `(A, B)` is A's WER minus B's,
# seed by seed, in every arm (teacher or noise rate) where the plan trains both methods; a pair
# with a method the plan lacks is left out. Every KD method is also compared with the no-KD
# baseline in each of its arms (`AGAINST_BASELINE`).
CLAIMS = (
    ("full-sum", "hard"),  # the teacher's full-sum scores of its N-best teach more than its 1-best
    ("full-sum", "soft"),  # ... and more than its collapsed lattice
    ("full-sum disc.", "full-sum"),  # the discriminative term adds to the full-sum distance
    ("full-sum, other frame rate", "full-sum"),  # full-sum KD costs little at another frame rate
    ("full-sum + labelled", "full-sum"),  # mixing in ground truth makes up for a bad teacher
)
CLAIM = "claim"
AGAINST_BASELINE = "against baseline"
# The precision the study asks of the baseline and every cell of the main grid (the teachers'
# arms): a 95 % interval of the test WER mean within ±CI_TARGET points, over at least MIN_SEEDS
# seeds (`precision`).
CI_TARGET = 1.5
MIN_SEEDS = 3
# Beyond this many seeds a cell is reported as needing "> MAX_SEEDS", with no binding.
MAX_SEEDS = 30


# ---- the mirror of finished jobs ----------------------------------------------------------------


def mirror_root(results_dir: str) -> str:
    return os.path.join(results_dir, MIRROR)


def _mirrored(plan: StudyPlan, mirror: str | None, path: str) -> str | None:
    """Where `path` (under OUT) lives in the mirror; None without a mirror."""
    if mirror is None:
        return None
    rel = os.path.relpath(path, plan.out_dir)
    if rel.startswith(os.pardir):
        raise ValueError(f"{path} is not under the study directory {plan.out_dir}")
    return os.path.join(mirror, rel)


def _job_dir(job: Job) -> str | None:
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
    """Copies a finished job's small result files (never checkpoints or records) and its stamp
    to `RESULTS/runs/<run dir under OUT>/`; returns the copies."""
    run_dir = _job_dir(job)
    if run_dir is None:
        return []
    dst_dir = _mirrored(plan, mirror_root(results_dir), run_dir)
    pairs = [(os.path.join(run_dir, name), os.path.join(dst_dir, name)) for name in _job_files(job)]
    pairs.append((stamp_path(plan.out_dir, job.name), os.path.join(dst_dir, MIRROR_STAMP)))
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


def mirror_study(plan: StudyPlan, jobs: Sequence[Job], results_dir: str) -> list[str]:
    """`mirror_job` for every finished job in OUT (stamp and outputs exist), and OUT's wall time
    and its note; returns the copies."""
    copied = []
    for job in jobs:
        done = os.path.exists(stamp_path(plan.out_dir, job.name))
        if done and job.outputs and all(os.path.exists(p) for p in job.outputs):
            copied += mirror_job(plan, job, results_dir)
    names = (WALL_TIME, WALL_TIME_NOTE)
    pairs = [
        (os.path.join(plan.out_dir, n), os.path.join(mirror_root(results_dir), n)) for n in names
    ]
    return copied + _copy_present(pairs)


def _source(plan: StudyPlan, mirror: str | None, run_dir: str, needed: Sequence[str]) -> str | None:
    """`run_dir` when it holds the `needed` files, else its mirror copy when that does, else
    None."""
    for candidate in (run_dir, _mirrored(plan, mirror, run_dir)):
        if candidate and all(os.path.exists(os.path.join(candidate, n)) for n in needed):
            return candidate
    return None


# ---- reading runs -------------------------------------------------------------------------------


def _run_record(plan: StudyPlan, model_dir: str, mirror: str | None) -> dict | None:
    """WERs of one evaluated run (from OUT, else the mirror), with where it lives and its last
    two periodic dev WERs; None before it is evaluated."""
    src = _source(plan, mirror, model_dir, EVAL_FILES)
    if src is None:
        return None
    evals = {s: read_json(os.path.join(src, "eval", f"{s}.json")) for s in SPLITS}
    copy = _mirrored(plan, mirror, model_dir)
    if copy is not None and not os.path.exists(os.path.join(copy, EVAL_FILES[0])):
        copy = None  # not mirrored (yet)
    config = os.path.join(model_dir, OPERATIVE_CONFIG)
    if not os.path.exists(config) and copy and os.path.exists(os.path.join(copy, OPERATIVE_CONFIG)):
        config = os.path.join(copy, OPERATIVE_CONFIG)
    return {
        "dev_wer": evals["dev"]["wer"],
        "test_wer": evals["test"]["wer"],
        "step": evals["dev"].get("step"),
        "dev_distinct_hypotheses": evals["dev"].get("distinct_hypotheses"),
        "dev_utterances": evals["dev"].get("utterances"),
        "model_dir": model_dir,
        "read_from": "out" if src == model_dir else "mirror",
        "mirror_dir": copy,
        "operative_config": config,
        "dev_wer_last_evals": last_dev_wers(os.path.join(src, HISTORY_FILE)),
    }


def last_dev_wers(history_path: str, count: int = 2) -> list[dict]:
    """`[{"step", "dev_wer"}]` of the last `count` periodic evaluations with a dev WER in a
    learning curve (`eval/history.jsonl`), oldest first; [] without one. Lines that are not
    complete records (a writer killed mid-line) are skipped."""
    if not os.path.exists(history_path):
        return []
    with open(history_path, encoding="utf-8") as f:
        lines = f.read().split("\n")[:-1]  # the text after the last newline is incomplete
    by_step = {}
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "step" in record and record.get("dev/wer") is not None:
            by_step[int(record["step"])] = float(record["dev/wer"])
    return [{"step": s, "dev_wer": by_step[s]} for s in sorted(by_step)[-count:]]


def convergence(runs: Sequence[Mapping]) -> dict | None:
    """Over the runs with two periodic dev WERs: their means at the last two evaluations, the
    change, and `converged` (|change| <= `CONVERGED_WITHIN`); `steps` when the runs share them.
    None when no run has two."""
    tails = [r["dev_wer_last_evals"] for r in runs if len(r.get("dev_wer_last_evals") or ()) == 2]
    if not tails:
        return None
    steps = {tuple(e["step"] for e in tail) for tail in tails}
    means = [sum(t[i]["dev_wer"] for t in tails) / len(tails) for i in (0, 1)]
    change = means[1] - means[0]
    return {
        "steps": list(steps.pop()) if len(steps) == 1 else None,
        "dev_wer": means,
        "change": change,
        "converged": abs(change) <= CONVERGED_WITHIN,
        "num_runs": len(tails),
        "of_runs": len(runs),
    }


def collapsed(run: Mapping) -> bool:
    """True when the run emits (nearly) the same words for every dev utterance."""
    return stats.collapsed(run.get("dev_distinct_hypotheses"), run.get("dev_utterances"))


def _summary(runs: Sequence[dict]) -> dict:
    out = {"num_runs": len(runs), "collapsed_runs": sum(collapsed(r) for r in runs)}
    for split in SPLITS:
        values = [r[f"{split}_wer"] for r in runs]
        if values:
            mean, half = stats.mean_ci95(values)
            out[split] = {"mean": mean, "ci95": half, "values": values}
    out["convergence"] = convergence(runs)
    return out


def _read_text(path: str | None) -> str | None:
    if not path or not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return " ".join(f.read().split()) or None


def collect(
    plan: StudyPlan,
    jobs: Sequence[Job],
    seconds: float | None = None,
    results_dir: str | None = None,
) -> dict:
    """Gathers everything the tables and the plot show (works on a partly finished study).

    Args:
        plan, jobs: the study and its jobs.
        seconds: the driver's wall time; None: read from OUT's `wall_time.json`, else the
            mirror's.
        results_dir: RESULTS, whose mirror (`RESULTS/runs`) gives the runs OUT lacks; None: OUT
            only.
    """
    mirror = mirror_root(results_dir) if results_dir is not None else None
    teachers = []
    for t in plan.teachers:
        record = _run_record(plan, plan.teacher_dir(t.name), mirror) or {}
        manifest = _read_manifest(plan, mirror, plan.pseudo_dir(t.name)) or {}
        teachers.append(
            {
                "name": t.name,
                "description": t.description,
                "num_steps": t.num_steps,
                **record,
                "convergence": convergence([record]) if record else None,
                "pseudo_label_wer": manifest.get("teacher_wer"),
                "pseudo_label_utterances": manifest.get("utterances"),
            }
        )
    chosen = {m: _tuned_values(plan, mirror, m) for m in plan.tuning}
    cells: dict[tuple[str, str], list[dict]] = {}
    tuning_runs = []
    for job in jobs:
        info = job.info
        if info.get("kind") != "student":
            continue
        record = _run_record(plan, info["model_dir"], mirror)
        if record is None:
            continue
        record = {**record, "seed": info["seed"], "setting": info["setting"]}
        if "tuning" in info:
            tuning_runs.append({"method": info["method"], "values": info["tuning"], **record})
            if chosen.get(info["method"]) != info["tuning"]:
                continue  # a value not chosen: reported with the tuning runs only
        cells.setdefault((info["arm"], info["method"]), []).append(record)
    comparisons = _comparisons(plan, jobs, cells)
    baseline_runs = cells.pop(("no-kd", plan.baseline_method), [])
    baseline = _summary(baseline_runs)
    baseline["precision"] = precision(plan, BASELINE_ARM, plan.baseline_method, baseline_runs)
    out_cells = []
    for (arm, method), runs in sorted(cells.items()):
        runs = sorted(runs, key=lambda r: r["seed"])
        cell = {"arm": arm, "method": method, **_summary(runs), "runs": runs}
        cell["precision"] = precision(plan, arm, method, runs)
        base = baseline.get("test", {}).get("mean")
        if base and "test" in cell:
            cell["test_rel_wer_reduction"] = stats.relative_reduction(cell["test"]["mean"], base)
        out_cells.append(cell)
    noise = []
    for rate in plan.noise_rates:
        manifest = _read_manifest(plan, mirror, plan.pseudo_dir(plan.noise_teacher, rate))
        noise.append({"noise_rate": rate, **_label_quality(manifest)})
    if seconds is None:
        seconds = _measured_seconds(plan, mirror)
    return {
        "preset": plan.name,
        "out_dir": plan.out_dir,
        "mirror": mirror,
        "seeds": list(plan.seeds),
        "extra_seeds": {k: list(v) for k, v in plan.extra_seeds.items()},
        "precision_target": {"ci95": CI_TARGET, "min_seeds": MIN_SEEDS},
        "measured_seconds": seconds,
        "measured_note": _read_text(_study_file(plan, mirror, WALL_TIME_NOTE)),
        **_job_progress(plan, jobs, mirror),
        "converged_within": CONVERGED_WITHIN,
        "teachers": teachers,
        "baseline": {**baseline, "runs": sorted(baseline_runs, key=lambda r: r["seed"])},
        "methods": [
            {
                "name": m.name,
                "note": m.note,
                "frame_rate_differs": m.frame_rate_differs,
                "teachers": plan.teachers_of(m),
                "tuning_from": m.tuning_from,
            }
            for m in plan.methods
            if m.name != plan.baseline_method
        ],
        "not_applicable": dict(plan.not_applicable),
        "cells": out_cells,
        "comparisons": comparisons,
        "chosen_on_dev": {
            m: {"values": v, "teacher": plan.tuning_teacher, "seed": plan.seeds[0]}
            for m, v in chosen.items()
        },
        "tuning_runs": tuning_runs,
        "noise_labels": noise,
    }


# ---- precision ---------------------------------------------------------------------------------


def in_main_grid(arm: str) -> bool:
    """The baseline and the teachers' arms (not the noise arm)."""
    return arm == BASELINE_ARM or arm.startswith("teacher-")


def precision(plan: StudyPlan, arm: str, method: str, runs: Sequence[Mapping]) -> dict:
    """Whether a cell's test WER mean is as precise as the study asks (`meets_target`: at least
    `MIN_SEEDS` seeds, 95 % half-width <= `CI_TARGET`), with `seeds` (evaluated) and `planned`.

    A cell that does not meet it also gets `sd` (of its test WERs; None below two seeds),
    `seeds_needed` (`stats.seeds_for_half_width` at that sd, at least `MIN_SEEDS`; None when the
    sd is unknown or more than `MAX_SEEDS` would be needed) and `extra_seeds` (its
    `StudyPlan.extra_seeds` for that many seeds in all; None when it plans enough already).
    """
    values = [r["test_wer"] for r in runs]
    half = stats.mean_ci95(values)[1] if values else None
    out = {
        "cell": cell_key(arm, method),
        "meets_target": len(values) >= MIN_SEEDS and half is not None and half <= CI_TARGET,
        "main_grid": in_main_grid(arm),
        "seeds": sorted(r["seed"] for r in runs),
        "planned": list(plan.cell_seeds(arm, method)),
    }
    if out["meets_target"]:
        return out
    sd = stats.sample_sd(values)
    needed = None if sd is None else stats.seeds_for_half_width(sd, CI_TARGET, MAX_SEEDS)
    needed = None if needed is None else max(needed, MIN_SEEDS)
    count = MIN_SEEDS if sd is None else needed  # without an sd: at least the minimum
    return {
        **out,
        "sd": sd,
        "seeds_needed": needed,
        "extra_seeds": _extra_seeds_for(plan, arm, method, count),
    }


def _extra_seeds_for(plan: StudyPlan, arm: str, method: str, count: int | None) -> list | None:
    """The cell's `extra_seeds` for `count` seeds in all: those it has, then the next seeds after
    its last; None when it plans that many already (or `count` is None)."""
    planned = plan.cell_seeds(arm, method)
    if count is None or count <= len(planned):
        return None
    more = range(max(planned) + 1, max(planned) + 1 + count - len(planned))
    return [*plan.extra_seeds.get(cell_key(arm, method), ()), *more]


# ---- paired comparisons ------------------------------------------------------------------------


def comparison_pairs(plan: StudyPlan) -> list[tuple[str, str, str]]:
    """`(A, B, kind)` of every comparison of the plan: the `CLAIMS` whose methods it has, then
    each KD method against its baseline method (`kind`: `CLAIM`, `AGAINST_BASELINE`)."""
    names = {m.name for m in plan.methods}
    pairs = [(a, b, CLAIM) for a, b in CLAIMS if a in names and b in names]
    return pairs + [
        (m.name, plan.baseline_method, AGAINST_BASELINE)
        for m in plan.methods
        if m.name != plan.baseline_method
    ]


def _student_arms(plan: StudyPlan, jobs: Sequence[Job]) -> tuple[list[str], set[tuple[str, str]]]:
    """The KD arms of the student jobs (the teachers' in the plan's order, then the noise rates'
    in increasing order) and every planned `(arm, method)` cell, the baseline's included."""
    order, cells = {}, set()
    for job in jobs:
        info = job.info
        if info.get("kind") == "student":
            cells.add((info["arm"], info["method"]))
            if info["teacher"] is not None:
                teacher = [t.name for t in plan.teachers].index(info["teacher"])
                order[info["arm"]] = (info["noise"] > 0, teacher, info["noise"])
    return sorted(order, key=order.get), cells


def _comparisons(
    plan: StudyPlan, jobs: Sequence[Job], cells: Mapping[tuple[str, str], Sequence[dict]]
) -> list[dict]:
    """Every comparison of `comparison_pairs` in every arm where both cells are planned, in the
    order of the pairs, then of the arms. `cells`: `(arm, method)` -> evaluated runs."""
    arms, planned = _student_arms(plan, jobs)
    out = []
    for a, b, kind in comparison_pairs(plan):
        for arm in arms:
            b_cell = ("no-kd", b) if kind == AGAINST_BASELINE else (arm, b)
            if (arm, a) in planned and b_cell in planned:
                pair = paired_comparison(cells.get((arm, a), []), cells.get(b_cell, []), a, b)
                out.append({"arm": arm, "a": a, "b": b, "kind": kind, **pair})
    return out


def paired_comparison(runs_a: Sequence[Mapping], runs_b: Sequence[Mapping], a: str, b: str) -> dict:
    """A's WER minus B's over the seeds both cells have, per split (`stats.paired_difference`
    with its `verdict`; None without a common seed); `missing`: the cells (`a`, `b`) with no
    evaluated run; `collapsed_seeds`: the common seeds where either run collapsed."""
    by_seed = [{r["seed"]: r for r in runs} for runs in (runs_a, runs_b)]
    out = {"missing": [name for name, runs in ((a, runs_a), (b, runs_b)) if not runs]}
    for split in SPLITS:
        values = [{s: r[f"{split}_wer"] for s, r in runs.items()} for runs in by_seed]
        diff = stats.paired_difference(*values)
        out[split] = None if diff is None else {**diff, "verdict": stats.paired_verdict(diff, a, b)}
    common = sorted(set(by_seed[0]) & set(by_seed[1]))
    out["collapsed_seeds"] = [s for s in common if any(collapsed(r[s]) for r in by_seed)]
    return out


def _read_manifest(plan: StudyPlan, mirror: str | None, pseudo_dir: str) -> dict | None:
    src = _source(plan, mirror, pseudo_dir, (MANIFEST,))
    return read_json(os.path.join(src, MANIFEST)) if src else None


def _tuned_values(plan: StudyPlan, mirror: str | None, method: str) -> dict | None:
    """`plan.tuned_values(method)` from OUT's tuning runs, else from the mirror's; None until
    every tuning run of the method is evaluated in one of them."""
    plans = [plan]
    if mirror is not None:
        plans.append(dataclasses.replace(plan, out_dir=mirror))
    for p in plans:
        try:
            return p.tuned_values(method)
        except RuntimeError:
            continue
    return None


def _study_file(plan: StudyPlan, mirror: str | None, name: str) -> str | None:
    """OUT/<name>, else its copy in the mirror; None when neither exists."""
    for d in (plan.out_dir, mirror):
        if d is not None and os.path.exists(os.path.join(d, name)):
            return os.path.join(d, name)
    return None


def _measured_seconds(plan: StudyPlan, mirror: str | None) -> float | None:
    from tfkd.study.scheduler import WallClock

    path = _study_file(plan, mirror, WALL_TIME)
    return WallClock(path).seconds() if path else None


def _job_progress(plan: StudyPlan, jobs: Sequence[Job], mirror: str | None) -> dict:
    """Over the teacher, pseudo-label and student jobs (data jobs are not counted):
    `jobs_total`; `jobs_done`, those whose results (their outputs: eval reports or manifest)
    are in OUT or the mirror; `job_seconds`, the sum of their stamped wall times (OUT's stamp,
    else the mirror's copy); `partial` when some are missing, `missing_jobs` their names and
    `missing` the same grouped by teacher, pseudo-labels and cell (`_missing_groups`)."""
    planned = [j for j in jobs if "kind" in j.info]
    done, missing, seconds = [], [], 0.0
    for job in planned:
        run_dir = _job_dir(job)
        names = [os.path.relpath(p, run_dir) for p in job.outputs]
        if _source(plan, mirror, run_dir, names) is None:
            missing.append(job)
            continue
        done.append(job)
        stamp = read_json(stamp_path(plan.out_dir, job.name))
        if stamp is None and mirror is not None:
            stamp = read_json(os.path.join(_mirrored(plan, mirror, run_dir), MIRROR_STAMP))
        seconds += (stamp or {}).get("seconds", 0.0)
    return {
        "job_seconds": seconds,
        "jobs_done": len(done),
        "jobs_total": len(planned),
        "partial": bool(missing),
        "missing_jobs": [j.name for j in missing],
        "missing": _missing_groups(missing),
    }


def _missing_groups(missing: Sequence[Job]) -> list[str]:
    """The missing jobs, compactly: `teacher bad`, `pseudo-labels good-noise0.2`, `teacher-good /
    hard (seeds 1, 2)`, `teacher-bad / soft SHIFT=1 (tuning, seed 0)`, `no-KD baseline (seed 2)`."""
    groups: dict[tuple[str, str], list[int]] = {}
    for job in missing:
        info = job.info
        if info["kind"] == "teacher":
            groups.setdefault((f"teacher {info['teacher']}", ""), [])
        elif info["kind"] == "pseudo":
            groups.setdefault((f"pseudo-labels {os.path.basename(info['dir'])}", ""), [])
        elif info["arm"] == "no-kd":
            groups.setdefault(("no-KD baseline", ""), []).append(info["seed"])
        elif "tuning" in info:
            name = f"{info['arm']} / {info['method']} {info['setting']}"
            groups.setdefault((name, "tuning, "), []).append(info["seed"])
        else:
            groups.setdefault((f"{info['arm']} / {info['method']}", ""), []).append(info["seed"])
    out = []
    for (name, prefix), seeds in groups.items():
        if seeds:
            label = "seed" if len(seeds) == 1 else "seeds"
            name += f" ({prefix}{label} {', '.join(map(str, sorted(seeds)))})"
        out.append(name)
    return out


def _label_quality(manifest: dict | None) -> dict:
    if not manifest:
        return {}
    keys = ("teacher_wer", "label_wer", "label_token_error_rate", "applied_noise_rate")
    return {k: manifest[k] for k in keys if k in manifest}


# ---- markdown -----------------------------------------------------------------------------------


def _fmt(summary: dict | None, split: str) -> str:
    if not summary or split not in summary:
        return "–"
    s = summary[split]
    if s["ci95"] is None:
        return f"{s['mean']:.1f}"
    return f"{s['mean']:.1f} ± {s['ci95']:.1f}"


def _anchor(arm: str, method: str) -> str:
    return "runs-" + "".join(c if c.isalnum() else "-" for c in f"{arm}-{method}").lower()


def _rel(link_root: str, path: str) -> str:
    return os.path.relpath(path, link_root)


def format_markdown(result: dict, link_root: str, command: str) -> str:
    """The results page. `link_root`: the directory the page is written to (links are relative)."""
    methods = [m["name"] for m in result["methods"]]
    na = result["not_applicable"]
    cells = {(c["arm"], c["method"]): c for c in result["cells"]}
    lines = [
        f"# Student WER by distillation method × teacher quality ({result['preset']} preset)",
        "",
    ]
    if result.get("partial"):
        lines += [_partial_line(result), ""]
    lines += [f"Command: `{command}`", ""]
    if result.get("measured_seconds"):
        lines += [
            f"Measured: {result['measured_seconds'] / 3600:.2f} h of wall time over every "
            f"invocation of the driver; {result['job_seconds'] / 3600:.2f} h of job time (the sum "
            f"of the jobs' own wall times); {result['jobs_done']} of {result['jobs_total']} "
            "teacher, pseudo-label and student jobs done (data preparation is not counted)."
            + (f" {result['measured_note']}" if result.get("measured_note") else ""),
            "",
        ]
    lines += [
        f"WER % (greedy decoding, whole dev / test sets): mean ± 95 % CI (t-interval) over "
        f"seeds {result['seeds']}{_extra_seeds_note(result)}; the second line of each cell is the "
        "relative test WER reduction against the no-KD baseline. Each number links to its runs. "
        f'"k of n collapsed": k seeds emit (nearly) one output for every utterance (distinct '
        f"dev outputs fewer than {stats.COLLAPSED_BELOW:.0%} of the utterances); near 90 % WER "
        "such a constant guess scores like a student that learned a little, so those cells say "
        'nothing about the method. "not converged": the cell\'s mean dev WER still moved by more '
        f"than {result.get('converged_within', CONVERGED_WITHIN):g} point between the last two "
        "evaluations during training ([Convergence](#convergence)).",
        "",
    ]
    base = result["baseline"]
    header = ["teacher", "teacher dev / test WER", "pseudo-label WER"] + methods + list(na)
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for t in result["teachers"]:
        arm = f"teacher-{t['name']}"
        runs_link = f"#{_anchor('teacher', t['name'])}"
        row = [
            f"**{t['name']}**" + (f" ({t['description']})" if t.get("description") else ""),
            "–"
            if "dev_wer" not in t
            else f"[{t['dev_wer']:.1f} / {t['test_wer']:.1f}]({runs_link})",
            "–" if t.get("pseudo_label_wer") is None else f"{t['pseudo_label_wer']:.1f}",
        ]
        for m in result["methods"]:
            if t["name"] not in m.get("teachers", [t["name"]]):
                row.append("not run")  # an arm of fewer teachers (`Method.teachers`)
            else:
                row.append(_cell(cells.get((arm, m["name"]))))
        row += ["n/a"] * len(na)
        lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        f"**No-KD baseline** (ground truth of the labelled audio only): dev {_fmt(base, 'dev')}, "
        f"test {_fmt(base, 'test')}"
        + "".join(f", {note}" for note in _collapsed_note(base))
        + f" ([runs](#{_anchor('no-kd', 'baseline')})).",
    ]
    for name, why in na.items():
        lines += ["", f"**{name}: n/a.** {why}"]
    notes = [m for m in result["methods"] if m["note"]]
    if notes:
        lines += [""] + [f"- **{m['name']}**: {m['note']}" for m in notes]
    if result.get("comparisons"):
        lines += ["", *_comparisons_section(result["comparisons"])]
    if "precision_target" in result:
        lines += ["", *_precision_section(result)]
    noise_cells = [c for c in result["cells"] if c["arm"].startswith("noise-")]
    if noise_cells:
        lines += ["", "## Controlled label noise", ""]
        noise_methods = sorted({c["method"] for c in noise_cells}, key=methods.index)
        lines += [
            "Pseudo-labels of the noise teacher corrupted at a word-piece error rate, then "
            "rescored by that teacher (its scores reflect its belief in the corrupted labels).",
            "",
            "| noise | label WER on the pseudo-labelled data | " + " | ".join(noise_methods) + " |",
            "|---|---|" + "---|" * len(noise_methods),
        ]
        for n in result["noise_labels"]:
            arm = f"noise-{n['noise_rate']:g}"
            label = n.get("label_wer", n.get("teacher_wer"))
            row = [f"{n['noise_rate']:.0%}", "–" if label is None else f"{label:.1f}"]
            row += [_cell(cells.get((arm, m))) for m in noise_methods]
            lines.append("| " + " | ".join(row) + " |")
    if result["chosen_on_dev"]:
        lines += ["", "## Hyper-parameters chosen on dev", ""]
        chosen = result["chosen_on_dev"]
        # Methods that take another's choice (`Method.tuning_from`): "full-sum's LENGTH_NORM=True".
        inherited = {}
        for method in result["methods"]:
            src = method.get("tuning_from")
            if src:
                values = chosen.get(src, {}).get("values")
                shown = "setting (not chosen yet)" if values is None else setting_name(values)
                inherited[method["name"]] = f"{src}'s {shown}"
        for m, c in chosen.items():
            runs = [r for r in result["tuning_runs"] if r["method"] == m]
            tried = ", ".join(
                f"{setting_name(r['values'])}: dev {r['dev_wer']:.1f}"
                for r in sorted(runs, key=lambda r: setting_name(r["values"]))
            )
            on_top = f" on top of {inherited[m]}" if m in inherited else ""
            lines.append(
                f"- **{m}**: {setting_name(c['values'] or {})}{on_top} (lowest dev WER of the runs "
                f"that did not collapse, with teacher "
                f"{c['teacher']}, seed {c['seed']}; tried {tried or 'nothing yet'})"
            )
        lines += [f"- **{m}**: {inherited[m]}" for m in inherited if m not in chosen]
    lines += ["", *_convergence_section(result)]
    lines += ["", "## Runs", ""]
    for t in result["teachers"]:
        if "dev_wer" not in t:
            continue
        anchor = _anchor("teacher", t["name"])
        lines += [f'<a id="{anchor}"></a>', f"**teacher {t['name']}**", ""]
        lines += [
            "| dev WER | test WER | dev WER during training | run | config |",
            "|---|---|---|---|---|",
            f"| {t['dev_wer']:.2f} | {t['test_wer']:.2f} | {_last_evals(t)} | "
            f"{_run_links(link_root, t)} |",
            "",
        ]
    groups = [("no-kd", "baseline", base.get("runs", []))]
    groups += [(c["arm"], c["method"], c["runs"]) for c in result["cells"]]
    for arm, method, runs in groups:
        lines += [f'<a id="{_anchor(arm, method)}"></a>', f"**{arm} / {method}**", ""]
        lines += [
            "| seed | dev WER | test WER | distinct dev outputs | dev WER during training | run "
            "| config |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in runs:
            lines.append(
                f"| {r['seed']} | {r['dev_wer']:.2f} | {r['test_wer']:.2f} | "
                f"{_distinct(r)} | {_last_evals(r)} | {_run_links(link_root, r)} |"
            )
        lines.append("")
    return "\n".join(lines)


def _distinct(run: Mapping) -> str:
    """`12 of 500`, marked when collapsed; `–` for reports written before it was counted."""
    if run.get("dev_distinct_hypotheses") is None:
        return "–"
    text = f"{run['dev_distinct_hypotheses']} of {run['dev_utterances']}"
    return f"**{text} (collapsed)**" if collapsed(run) else text


def _run_links(link_root: str, run: dict) -> str:
    """`run dir | config` cells: the run directory as it was under OUT, linked to its committed
    copy in the mirror when there is one (else to the run directory), and its config likewise."""
    shown = os.path.relpath(run["model_dir"])
    if shown.startswith(".."):
        shown = run["model_dir"]
    where = run.get("mirror_dir") or run["model_dir"]
    config = os.path.join(where, "operative_config.gin")
    if not os.path.exists(config):
        config = run["operative_config"]
    return (
        f"[{shown}]({_rel(link_root, where)}) | [operative_config.gin]({_rel(link_root, config)})"
    )


def _last_evals(run: Mapping) -> str:
    """`31.5 / 31.0 (steps 800 / 1,000)`: the run's dev WER at its last two periodic
    evaluations; `–` without a learning curve."""
    tail = run.get("dev_wer_last_evals") or []
    if not tail:
        return "–"
    wers = " / ".join(f"{e['dev_wer']:.1f}" for e in tail)
    steps = " / ".join(f"{e['step']:,}" for e in tail)
    return f"{wers} (step{'s' if len(tail) > 1 else ''} {steps})"


def _partial_line(result: Mapping) -> str:
    """`**Partial: 40 of 75 jobs finished.** Missing: ...` (at most 12 groups named)."""
    groups = result.get("missing", [])
    shown = groups[:12]
    more = ""
    if len(groups) > len(shown):
        more = f"; and {len(groups) - len(shown)} more (`missing_jobs` in study.json)"
    return (
        f"**Partial: {result['jobs_done']} of {result['jobs_total']} jobs finished** (teacher, "
        "pseudo-label and student jobs with results in the study directory or in "
        f"`{MIRROR}/`). Missing: {'; '.join(shown)}{more}."
    )


def _comparisons_section(comparisons: Sequence[Mapping]) -> list[str]:
    """`## Comparisons (paired by seed)`: one row per comparison (`paired_comparison`)."""
    lines = [
        "## Comparisons (paired by seed)",
        "",
        "WER of method A minus WER of method B, in points: the mean over the seeds both have of "
        "the per-seed difference ± the 95 % CI (t-interval) of that mean (negative: A is better). "
        "A run's seed fixes its student's initial weights and the order in which it reads its "
        "data, so two runs of one seed differ mostly in what they learn from; pairing them "
        "removes the spread they share, which the intervals of the table above include (less "
        "so against the baseline and for the other frame rate or mixed data, where the data or "
        'the student differ). "A better" / "B better": the interval excludes 0; "no '
        'separation": it does not.',
        "",
        "| arm | A | B | test A − B | dev A − B | seeds | verdict (test) |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in comparisons:
        test = c["test"] or {}
        seeds = ", ".join(map(str, test.get("seeds", []))) or "–"
        row = [c["arm"], c["a"], c["b"], _difference(c["test"]), _difference(c["dev"]), seeds]
        lines.append("| " + " | ".join(row + [_comparison_verdict(c)]) + " |")
    return lines


def _extra_seeds_note(result: Mapping) -> str:
    """` (more in some cells, `StudyPlan.extra_seeds`: teacher-bad/hard 3, 4)`; "" without."""
    extra = result.get("extra_seeds")
    if not extra:
        return ""
    cells = "; ".join(f"{k} {', '.join(map(str, v))}" for k, v in extra.items())
    return f" (more in some cells, `StudyPlan.extra_seeds`: {cells})"


def _precision_section(result: Mapping) -> list[str]:
    """`## Precision`: how many cells meet the target (`precision`), and a row for each that
    does not, main grid first, with the `extra_seeds` binding that gives it the seeds it needs."""
    target = result["precision_target"]
    rule = (
        f"at least {target['min_seeds']} seeds and a 95 % interval of the test WER mean within "
        f"±{target['ci95']:g} points (`report.CI_TARGET`)"
    )
    checked = [s for s in (result["baseline"], *result["cells"]) if "precision" in s]
    missed = [s for s in checked if not s["precision"]["meets_target"]]
    missed.sort(key=lambda s: not s["precision"]["main_grid"])  # stable
    lines = ["## Precision", ""]
    if not missed:
        return lines + [
            f"Every cell ({len(checked)}, the baseline included) meets the target: {rule}."
        ]
    main = [s for s in checked if s["precision"]["main_grid"]]
    other = [s for s in checked if not s["precision"]["main_grid"]]
    lines += [
        f"Target: {rule}. Main grid (the no-KD baseline and the teachers' arms): "
        f"{_count_met(main)} cells meet it"
        + (f"; other arms: {_count_met(other)}." if other else ".")
        + " Seeds needed: the fewest whose t-interval at the cell's sample sd is within the "
        "target (an estimate: more seeds measure another sd). To run them, add the line to the "
        "preset's gin file (a `--gin_bindings` would change the study's command, and the "
        "mirror holds one command's runs) and rerun it: the extra seeds run after all others.",
        "",
        "| arm | method | seeds run | test WER | sd | seeds needed | line for the preset |",
        "|---|---|---|---|---|---|---|",
    ]
    extra = {k: tuple(v) for k, v in result.get("extra_seeds", {}).items()}
    lines += [_precision_row(s, extra) for s in missed]
    added = {
        s["precision"]["cell"]: tuple(s["precision"]["extra_seeds"])
        for s in missed
        if s["precision"]["extra_seeds"]
    }
    if len(added) > 1:
        lines += ["", f"All of them in one binding: {_extra_seeds_line({**extra, **added})}"]
    return lines


def _count_met(summaries: Sequence[Mapping]) -> str:
    return f"{sum(s['precision']['meets_target'] for s in summaries)} of {len(summaries)}"


def _precision_row(summary: Mapping, extra: Mapping[str, tuple]) -> str:
    """A cell short of the target; `extra`: the plan's `extra_seeds`, kept in its line."""
    p = summary["precision"]
    arm, _, method = p["cell"].partition("/")
    if not p["main_grid"]:
        arm += " (noise arm)" if arm.startswith("noise-") else " (outside the main grid)"
    line = _no_line(p)
    if p["extra_seeds"]:
        line = _extra_seeds_line({**extra, p["cell"]: tuple(p["extra_seeds"])})
    row = [arm, method, f"{len(p['seeds'])} of {len(p['planned'])}", _fmt(summary, "test")]
    row += ["–" if p["sd"] is None else f"{p['sd']:.2f}", _seeds_needed(p), line]
    return "| " + " | ".join(row) + " |"


def _seeds_needed(p: Mapping) -> str:
    if p["seeds_needed"] is not None:
        return str(p["seeds_needed"])
    return f">= {MIN_SEEDS} (no sd below 2 seeds)" if p["sd"] is None else f"> {MAX_SEEDS}"


def _no_line(p: Mapping) -> str:
    pending = sorted(set(p["planned"]) - set(p["seeds"]))
    if pending:
        return f"– (planned seeds {', '.join(map(str, pending))} not evaluated yet)"
    return "–"


def _extra_seeds_line(extra: Mapping[str, tuple]) -> str:
    """`` `StudyPlan.extra_seeds = {'teacher-bad/hard': (3, 4)}` ``."""
    return (
        "`StudyPlan.extra_seeds = {" + ", ".join(f"{k!r}: {v!r}" for k, v in extra.items()) + "}`"
    )


def _difference(diff: Mapping | None) -> str:
    """`-1.0 ± 1.2`, `-1.0` with one seed, `–` without a common seed."""
    if diff is None:
        return "–"
    mean = round(diff["mean"], 1) + 0.0  # + 0.0: "+0.0", never "-0.0"
    if diff["ci95"] is None:
        return f"{mean:+.1f}"
    return f"{mean:+.1f} ± {diff['ci95']:.1f}"


def _comparison_verdict(comparison: Mapping) -> str:
    """The test verdict, `missing: <method>` for a cell without runs, and the collapsed seeds."""
    if comparison["missing"]:
        return "missing: " + "; ".join(comparison["missing"])  # names may hold commas
    text = stats.paired_verdict(comparison["test"], comparison["a"], comparison["b"])
    seeds = comparison["collapsed_seeds"]
    if seeds:
        text += f" (seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))} collapsed)"
    return text


def _convergence_section(result: Mapping) -> list[str]:
    """`## Convergence`: per teacher, the baseline and every cell, the mean dev WER over seeds at
    the last two periodic evaluations during training."""
    within = result.get("converged_within", CONVERGED_WITHIN)
    lines = [
        "## Convergence",
        "",
        "Dev WER % at the last two periodic evaluations during training (the run's "
        "`eval/history.jsonl`; the dev batches that evaluation reads, which may be fewer than the "
        "whole dev set of the table), mean over the seeds that have them. **Converged**: "
        f'|last − previous| ≤ {within:g} point. "–": no learning curve with two evaluations.',
        "",
        "| run | steps | dev WER, previous / last | change | converged |",
        "|---|---|---|---|---|",
    ]
    rows = [(f"teacher {t['name']}", t.get("convergence")) for t in result["teachers"]]
    rows.append(("no-KD baseline", result["baseline"].get("convergence")))
    rows += [(f"{c['arm']} / {c['method']}", c.get("convergence")) for c in result["cells"]]
    for name, conv in rows:
        if not conv:
            lines.append(f"| {name} | – | – | – | – |")
            continue
        steps = " / ".join(f"{s:,}" for s in conv["steps"]) if conv["steps"] else "differ"
        prev, last = conv["dev_wer"]
        seeds = ""
        if conv.get("of_runs", 1) > 1 and conv["num_runs"] < conv["of_runs"]:
            seeds = f" ({conv['num_runs']} of {conv['of_runs']} seeds)"
        lines.append(
            f"| {name} | {steps} | {prev:.1f} / {last:.1f}{seeds} | {conv['change']:+.1f} | "
            f"{'yes' if conv['converged'] else '**no**'} |"
        )
    return lines


def _cell(cell: dict | None) -> str:
    if not cell:
        return "–"
    link = f"#{_anchor(cell['arm'], cell['method'])}"
    lines = [f"[{_fmt(cell, 'dev')} / {_fmt(cell, 'test')}]({link})"]
    rel = cell.get("test_rel_wer_reduction")
    if rel is not None:
        lines.append(f"{rel:+.1%}")
    conv = cell.get("convergence")
    if conv and not conv["converged"]:
        lines.append("[not converged](#convergence)")
    return "<br>".join(lines + _collapsed_note(cell))


def _collapsed_note(summary: Mapping) -> list[str]:
    """`["k of n collapsed"]` for a cell or the baseline with collapsed runs, else `[]`."""
    k = summary.get("collapsed_runs")
    return [f"{k} of {summary['num_runs']} collapsed"] if k else []


# ---- plot ---------------------------------------------------------------------------------------


def plot(result: dict, path: str) -> None:
    """Student test WER against teacher WER on the pseudo-labelled split, one line per method, with
    95 % CI error bars; the no-KD baseline as a band; the noise arm in a second panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    teachers = {f"teacher-{t['name']}": t for t in result["teachers"]}
    quality = {arm: t.get("pseudo_label_wer") or t.get("dev_wer") for arm, t in teachers.items()}
    noise = {f"noise-{n['noise_rate']:g}": n for n in result["noise_labels"]}
    noise_wer = {arm: n.get("label_wer", n.get("teacher_wer")) for arm, n in noise.items()}
    panels = [
        (quality, "teacher WER on the pseudo-labelled split (pseudo-label quality), %",
         "Student WER vs teacher WER"),
    ]  # fmt: skip
    if any(c["arm"] in noise_wer for c in result["cells"]):
        panels.append(
            (noise_wer, "label WER after controlled noise, %",
             "Controlled label noise (rescored by the teacher)")
        )  # fmt: skip
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels) + 1, 4.5), squeeze=False)
    for ax, (x_of_arm, xlabel, title) in zip(axes[0], panels, strict=True):
        known = [x for x in x_of_arm.values() if x is not None]
        # Methods share x positions (one per teacher): dodge them apart a little.
        dodge = 0.006 * (max(known) - min(known) if len(known) > 1 else 1.0)
        for i, m in enumerate(result["methods"]):
            shift = (i - (len(result["methods"]) - 1) / 2) * dodge
            pts = sorted(
                (
                    x_of_arm[c["arm"]],
                    c["test"]["mean"],
                    c["test"]["ci95"] or 0.0,
                    bool(c.get("collapsed_runs")),
                )
                for c in result["cells"]
                if c["method"] == m["name"] and x_of_arm.get(c["arm"]) is not None and "test" in c
            )
            if pts:
                xs, ys, es, collapsed_cells = zip(*pts, strict=True)
                xs = [x + shift for x in xs]
                ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=m["name"])
                for x, y, marked in zip(xs, ys, collapsed_cells, strict=True):
                    if marked:
                        ax.plot(x, y, "kx", markersize=9, zorder=3)
        if any(c.get("collapsed_runs") and c["arm"] in x_of_arm for c in result["cells"]):
            ax.plot([], [], "kx", label="a seed collapsed to one output")
        _baseline_band(ax, result["baseline"])
        ax.set_xlabel(xlabel)
        ax.set_ylabel("student test WER, %")
        ax.set_title(title)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _baseline_band(ax, baseline: Mapping) -> None:
    if "test" not in baseline:
        return
    mean, half = baseline["test"]["mean"], baseline["test"]["ci95"] or 0.0
    ax.axhline(mean, color="gray", linestyle="--", label="no-KD baseline")
    ax.axhspan(mean - half, mean + half, color="gray", alpha=0.15)


def write(result: dict, results_dir: str, command: str) -> list[str]:
    """Writes study.json, study.md and study.png into `results_dir`; returns their paths."""
    os.makedirs(results_dir, exist_ok=True)
    paths = [os.path.join(results_dir, f"study.{ext}") for ext in ("json", "md", "png")]
    with open(paths[0], "w", encoding="utf-8") as f:
        json.dump({**result, "command": command}, f, indent=1)
    with open(paths[1], "w", encoding="utf-8") as f:
        f.write(format_markdown(result, results_dir, command) + "\n")
    plot(result, paths[2])
    return paths
