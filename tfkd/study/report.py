"""The study's results: `study.json`, `study.md` and `study.png` from what its jobs wrote.

Every number comes from a `bin/evaluate` report (`<model dir>/eval/{dev,test}.json`) or a
`bin/pseudo_label` manifest; the JSON keeps, for every cell, the runs it averages with their
model directories and operative configs, and the markdown links each number to them.

`collect` gathers them, with each cell's convergence, its precision against the study's target
and the paired comparisons of the paper's claims; `write` writes the three files (the page:
`tfkd.study.report_markdown`, the plot: `tfkd.study.report_plot`). Each run is read from OUT when
it is there, else from the committed mirror (`tfkd.study.mirror`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
from collections.abc import Mapping, Sequence

from tfkd.study import plan_jobs, stats
from tfkd.study.jobs import Job, read_json, stamp_path
from tfkd.study.mirror import (
    EVAL_FILES,
    HISTORY_FILE,
    MANIFEST,
    MIRROR_STAMP,
    OPERATIVE_CONFIG,
    SPLITS,
    WALL_TIME,
    WALL_TIME_NOTE,
    job_dir,
    mirror_root,
    mirrored,
    source_dir,
    study_file,
)
from tfkd.study.plan import BASELINE_ARM, StudyPlan, cell_key
from tfkd.study.report_plot import plot

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


# ---- reading runs -------------------------------------------------------------------------------


def _run_record(plan: StudyPlan, model_dir: str, mirror: str | None) -> dict | None:
    """WERs of one evaluated run (from OUT, else the mirror), with where it lives and its last
    two periodic dev WERs; None before it is evaluated."""
    src = source_dir(plan, mirror, model_dir, EVAL_FILES)
    if src is None:
        return None
    evals = {s: read_json(os.path.join(src, "eval", f"{s}.json")) for s in SPLITS}
    curve = dev_wer_curve(os.path.join(src, HISTORY_FILE))
    copy = mirrored(plan, mirror, model_dir)
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
        "dev_wer_last_evals": curve[-2:],
        "dev_wer_curve": curve,
    }


def dev_wer_curve(history_path: str) -> list[dict]:
    """`[{"step", "dev_wer"}]` of every periodic evaluation with a dev WER in a learning curve
    (`eval/history.jsonl`), oldest first; [] without one. Lines that are not complete records
    (a writer killed mid-line) are skipped."""
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
    return [{"step": s, "dev_wer": by_step[s]} for s in sorted(by_step)]


def convergence(runs: Sequence[Mapping]) -> dict | None:
    """Over the runs with two periodic dev WERs: their means at the last two evaluations, the
    change, and `converged` (|change| <= `CONVERGED_WITHIN`); `steps` when the runs share them;
    `curve`, the mean learning curve at the steps they all evaluated. None when no run has two."""
    with_two = [r for r in runs if len(r.get("dev_wer_last_evals") or ()) == 2]
    if not with_two:
        return None
    tails = [r["dev_wer_last_evals"] for r in with_two]
    curves = [{e["step"]: e["dev_wer"] for e in r["dev_wer_curve"]} for r in with_two]
    shared = sorted(set.intersection(*(set(c) for c in curves)))
    curve = [{"step": s, "dev_wer": sum(c[s] for c in curves) / len(curves)} for s in shared]
    steps = {tuple(e["step"] for e in tail) for tail in tails}
    means = [sum(t[i]["dev_wer"] for t in tails) / len(tails) for i in (0, 1)]
    change = means[1] - means[0]
    return {
        "steps": list(steps.pop()) if len(steps) == 1 else None,
        "dev_wer": means,
        "change": change,
        "converged": abs(change) <= CONVERGED_WITHIN,
        "curve": curve,
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
    baseline_runs = cells.pop((BASELINE_ARM, plan.baseline_method), [])
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
        "measured_note": _read_text(study_file(plan, mirror, WALL_TIME_NOTE)),
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
            b_cell = (BASELINE_ARM, b) if kind == AGAINST_BASELINE else (arm, b)
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


# ---- pseudo-labels, tuning, time and progress ---------------------------------------------------


def _read_manifest(plan: StudyPlan, mirror: str | None, pseudo_dir: str) -> dict | None:
    src = source_dir(plan, mirror, pseudo_dir, (MANIFEST,))
    return read_json(os.path.join(src, MANIFEST)) if src else None


def _tuned_values(plan: StudyPlan, mirror: str | None, method: str) -> dict | None:
    """`plan_jobs.tuned_values(plan, method)` from OUT's tuning runs, else from the mirror's;
    None until every tuning run of the method is evaluated in one of them."""
    plans = [plan]
    if mirror is not None:
        plans.append(dataclasses.replace(plan, out_dir=mirror))
    for p in plans:
        try:
            return plan_jobs.tuned_values(p, method)
        except RuntimeError:
            continue
    return None


def _measured_seconds(plan: StudyPlan, mirror: str | None) -> float | None:
    from tfkd.study.scheduler import WallClock

    path = study_file(plan, mirror, WALL_TIME)
    return WallClock(path).seconds() if path else None


def _job_progress(plan: StudyPlan, jobs: Sequence[Job], mirror: str | None) -> dict:
    """Over the teacher, pseudo-label and student jobs (data jobs are not counted):
    `jobs_total`; `jobs_done`, those whose results (their outputs: eval reports or manifest)
    are in OUT or the mirror; `job_seconds`, the sum of their stamped wall times (OUT's stamp,
    else the mirror's copy); `partial` when some are missing, `missing_jobs` their names and
    `missing` the same grouped by teacher, pseudo-labels and cell (`_missing_groups`);
    `remaining` (`_remaining`), an estimate of the missing jobs' time."""
    planned = [j for j in jobs if "kind" in j.info]
    done, missing, seconds = [], [], 0.0
    times: dict[tuple, list[float]] = {}
    for job in planned:
        run_dir = job_dir(job)
        names = [os.path.relpath(p, run_dir) for p in job.outputs]
        if source_dir(plan, mirror, run_dir, names) is None:
            missing.append(job)
            continue
        done.append(job)
        stamp = read_json(stamp_path(plan.out_dir, job.name))
        if stamp is None and mirror is not None:
            stamp = read_json(os.path.join(mirrored(plan, mirror, run_dir), MIRROR_STAMP))
        job_seconds = float((stamp or {}).get("seconds", 0.0))
        seconds += job_seconds
        if job_seconds:
            for key in _time_keys(job):
                times.setdefault(key, []).append(job_seconds)
    return {
        "job_seconds": seconds,
        "remaining": _remaining(missing, times),
        "jobs_done": len(done),
        "jobs_total": len(planned),
        "partial": bool(missing),
        "missing_jobs": [j.name for j in missing],
        "missing": _missing_groups(missing),
    }


def _time_keys(job: Job) -> tuple[tuple, ...]:
    """What a job's time predicts, most specific first: a student's method, then its kind."""
    kind = job.info["kind"]
    if kind == "student":
        return (("student", job.info["method"]), ("student",))
    return ((kind,),)


def _remaining(missing: Sequence[Job], times: Mapping[tuple, Sequence[float]]) -> dict:
    """`job_seconds`: the missing jobs' time, each at the median stamped time of the finished
    jobs it resembles most (`_time_keys`); `jobs`: how many that covers; `unestimated`: those
    with no finished job alike."""
    total, estimated = 0.0, 0
    for job in missing:
        known = next((times[k] for k in _time_keys(job) if times.get(k)), None)
        if known is not None:
            total += statistics.median(known)
            estimated += 1
    return {"job_seconds": total, "jobs": estimated, "unestimated": len(missing) - estimated}


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
        elif info["arm"] == BASELINE_ARM:
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


# ---- writing ------------------------------------------------------------------------------------


def write(result: dict, results_dir: str, command: str) -> list[str]:
    """Writes study.json, study.md and study.png into `results_dir`; returns their paths."""
    from tfkd.study.report_markdown import format_markdown  # the page reads this module's names

    os.makedirs(results_dir, exist_ok=True)
    paths = [os.path.join(results_dir, f"study.{ext}") for ext in ("json", "md", "png")]
    with open(paths[0], "w", encoding="utf-8") as f:
        json.dump({**result, "command": command}, f, indent=1)
    with open(paths[1], "w", encoding="utf-8") as f:
        f.write(format_markdown(result, results_dir, command) + "\n")
    plot(result, paths[2])
    return paths
