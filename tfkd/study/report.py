"""The study's results: `study.json`, `study.md` and `study.png` from what its jobs wrote.

Every number comes from a `bin/evaluate` report (`<model dir>/eval/{dev,test}.json`) or a
`bin/pseudo_label` manifest; the JSON keeps, for every cell, the runs it averages with their
model directories and operative configs, and the markdown links each number to them.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence

from tfkd.study import stats
from tfkd.study.jobs import Job, read_json, stamp_path
from tfkd.study.plan import StudyPlan, setting_name

SPLITS = ("dev", "test")


def _run_record(model_dir: str) -> dict | None:
    """WERs of one evaluated run, with where it lives; None before it is evaluated."""
    evals = {s: read_json(os.path.join(model_dir, "eval", f"{s}.json")) for s in SPLITS}
    if any(e is None for e in evals.values()):
        return None
    return {
        "dev_wer": evals["dev"]["wer"],
        "test_wer": evals["test"]["wer"],
        "step": evals["dev"].get("step"),
        "dev_distinct_hypotheses": evals["dev"].get("distinct_hypotheses"),
        "dev_utterances": evals["dev"].get("utterances"),
        "model_dir": model_dir,
        "operative_config": os.path.join(model_dir, "operative_config.gin"),
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
    return out


# OUT/wall_time.note: what the measured times leave out or add by hand (e.g. jobs carried over
# from another run of the same configuration), shown after the "Measured" line.
WALL_TIME_NOTE = "wall_time.note"


def _read_text(path: str) -> str | None:
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return " ".join(f.read().split()) or None


def collect(plan: StudyPlan, jobs: Sequence[Job], seconds: float | None = None) -> dict:
    """Gathers everything the tables and the plot show (works on a partly finished study)."""
    teachers = []
    for t in plan.teachers:
        record = _run_record(plan.teacher_dir(t.name)) or {}
        manifest = read_json(os.path.join(plan.pseudo_dir(t.name), "manifest.json")) or {}
        teachers.append(
            {
                "name": t.name,
                "description": t.description,
                "num_steps": t.num_steps,
                **record,
                "train_unlabeled_wer": manifest.get("teacher_wer"),
                "pseudo_label_utterances": manifest.get("utterances"),
            }
        )
    chosen = {}
    for method in plan.tuning:
        try:
            chosen[method] = plan.tuned_values(method)
        except RuntimeError:
            chosen[method] = None
    cells: dict[tuple[str, str], list[dict]] = {}
    tuning_runs = []
    for job in jobs:
        info = job.info
        if info.get("kind") != "student":
            continue
        record = _run_record(info["model_dir"])
        if record is None:
            continue
        record = {**record, "seed": info["seed"], "setting": info["setting"]}
        if "tuning" in info:
            tuning_runs.append({"method": info["method"], "values": info["tuning"], **record})
            if chosen.get(info["method"]) != info["tuning"]:
                continue  # a value not chosen: reported with the tuning runs only
        cells.setdefault((info["arm"], info["method"]), []).append(record)
    baseline_runs = cells.pop(("no-kd", plan.baseline_method), [])
    baseline = _summary(baseline_runs)
    out_cells = []
    for (arm, method), runs in sorted(cells.items()):
        runs = sorted(runs, key=lambda r: r["seed"])
        cell = {"arm": arm, "method": method, **_summary(runs), "runs": runs}
        base = baseline.get("test", {}).get("mean")
        if base and "test" in cell:
            cell["test_rel_wer_reduction"] = stats.relative_reduction(cell["test"]["mean"], base)
        out_cells.append(cell)
    noise = []
    for rate in plan.noise_rates:
        manifest = read_json(
            os.path.join(plan.pseudo_dir(plan.noise_teacher, rate), "manifest.json")
        )
        noise.append({"noise_rate": rate, **_label_quality(manifest)})
    return {
        "preset": plan.name,
        "out_dir": plan.out_dir,
        "seeds": list(plan.seeds),
        "measured_seconds": seconds,
        "measured_note": _read_text(os.path.join(plan.out_dir, WALL_TIME_NOTE)),
        **_job_progress(plan, jobs),
        "teachers": teachers,
        "baseline": {**baseline, "runs": sorted(baseline_runs, key=lambda r: r["seed"])},
        "methods": [
            {"name": m.name, "note": m.note, "frame_rate_differs": m.frame_rate_differs}
            for m in plan.methods
            if m.name != plan.baseline_method
        ],
        "not_applicable": dict(plan.not_applicable),
        "cells": out_cells,
        "chosen_on_dev": {
            m: {"values": v, "teacher": plan.tuning_teacher, "seed": plan.seeds[0]}
            for m, v in chosen.items()
        },
        "tuning_runs": tuning_runs,
        "noise_labels": noise,
    }


def _job_progress(plan: StudyPlan, jobs: Sequence[Job]) -> dict:
    """`job_seconds` (the sum of the stamped jobs' own wall times), `jobs_done` and `jobs_total`
    over the teacher, pseudo-label and student jobs (data jobs are not stamped)."""
    stamps = [read_json(stamp_path(plan.out_dir, j.name)) for j in jobs if "kind" in j.info]
    done = [s for s in stamps if s is not None]
    return {
        "job_seconds": sum(s.get("seconds", 0.0) for s in done),
        "jobs_done": len(done),
        "jobs_total": len(stamps),
    }


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
        f"Command: `{command}`",
        "",
    ]
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
        f"seeds {result['seeds']}; the second line of each cell is the "
        "relative test WER reduction against the no-KD baseline. Each number links to its runs. "
        f'"k of n collapsed": k seeds emit (nearly) one output for every utterance (distinct '
        f"dev outputs fewer than {stats.COLLAPSED_BELOW:.0%} of the utterances); near 90 % WER "
        "such a constant guess scores like a student that learned a little, so those cells say "
        "nothing about the method.",
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
            "–" if t.get("train_unlabeled_wer") is None else f"{t['train_unlabeled_wer']:.1f}",
        ]
        for m in methods:
            row.append(_cell(cells.get((arm, m))))
        row += ["n/a"] * len(na)
        lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        f"**No-KD baseline** (ground truth of `train-labeled` only): dev {_fmt(base, 'dev')}, "
        f"test {_fmt(base, 'test')}"
        + "".join(f", {note}" for note in _collapsed_note(base))
        + f" ([runs](#{_anchor('no-kd', 'baseline')})).",
    ]
    for name, why in na.items():
        lines += ["", f"**{name}: n/a.** {why}"]
    notes = [m for m in result["methods"] if m["note"]]
    if notes:
        lines += [""] + [f"- **{m['name']}**: {m['note']}" for m in notes]
    noise_cells = [c for c in result["cells"] if c["arm"].startswith("noise-")]
    if noise_cells:
        lines += ["", "## Controlled label noise", ""]
        noise_methods = sorted({c["method"] for c in noise_cells}, key=methods.index)
        lines += [
            "Pseudo-labels of the noise teacher corrupted at a word-piece error rate, then "
            "rescored by that teacher (its scores reflect its belief in the corrupted labels).",
            "",
            "| noise | label WER on train-unlabeled | " + " | ".join(noise_methods) + " |",
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
        for m, c in result["chosen_on_dev"].items():
            runs = [r for r in result["tuning_runs"] if r["method"] == m]
            tried = ", ".join(
                f"{setting_name(r['values'])}: dev {r['dev_wer']:.1f}"
                for r in sorted(runs, key=lambda r: setting_name(r["values"]))
            )
            lines.append(
                f"- **{m}**: {setting_name(c['values'] or {})} (lowest dev WER of the runs "
                f"that did not collapse, with teacher "
                f"{c['teacher']}, seed {c['seed']}; tried {tried or 'nothing yet'})"
            )
    lines += ["", "## Runs", ""]
    for t in result["teachers"]:
        if "dev_wer" not in t:
            continue
        anchor = _anchor("teacher", t["name"])
        lines += [f'<a id="{anchor}"></a>', f"**teacher {t['name']}**", ""]
        lines += ["| dev WER | test WER | run | config |", "|---|---|---|---|"]
        lines += [f"| {t['dev_wer']:.2f} | {t['test_wer']:.2f} | {_run_links(link_root, t)} |", ""]
    groups = [("no-kd", "baseline", base.get("runs", []))]
    groups += [(c["arm"], c["method"], c["runs"]) for c in result["cells"]]
    for arm, method, runs in groups:
        lines += [f'<a id="{_anchor(arm, method)}"></a>', f"**{arm} / {method}**", ""]
        lines += [
            "| seed | dev WER | test WER | distinct dev outputs | run | config |",
            "|---|---|---|---|---|---|",
        ]
        for r in runs:
            lines.append(
                f"| {r['seed']} | {r['dev_wer']:.2f} | {r['test_wer']:.2f} | "
                f"{_distinct(r)} | {_run_links(link_root, r)} |"
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
    """`run dir | config` cells: the run directory, and the committed copy of its config."""
    shown = os.path.relpath(run["model_dir"])
    if shown.startswith(".."):
        shown = run["model_dir"]
    config = run.get("config_copy", run["operative_config"])
    return (
        f"[{shown}]({_rel(link_root, run['model_dir'])}) | "
        f"[operative_config.gin]({_rel(link_root, config)})"
    )


def _copy_configs(result: dict, results_dir: str) -> None:
    """Copies each run's operative config to `results_dir/configs/` and records the copy as
    `config_copy`: run directories are not committed, the results and their configs are."""
    runs = [t for t in result["teachers"] if "operative_config" in t]
    runs += result["baseline"].get("runs", []) + result["tuning_runs"]
    runs += [r for c in result["cells"] for r in c["runs"]]
    for run in runs:
        src = run["operative_config"]
        if not os.path.exists(src):
            continue
        name = os.path.relpath(run["model_dir"], result["out_dir"]).replace(os.sep, "__")
        dst = os.path.join(results_dir, "configs", name + ".gin")
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copyfile(src, dst)
        run["config_copy"] = dst


def _cell(cell: dict | None) -> str:
    if not cell:
        return "–"
    link = f"#{_anchor(cell['arm'], cell['method'])}"
    lines = [f"[{_fmt(cell, 'dev')} / {_fmt(cell, 'test')}]({link})"]
    rel = cell.get("test_rel_wer_reduction")
    if rel is not None:
        lines.append(f"{rel:+.1%}")
    return "<br>".join(lines + _collapsed_note(cell))


def _collapsed_note(summary: Mapping) -> list[str]:
    """`["k of n collapsed"]` for a cell or the baseline with collapsed runs, else `[]`."""
    k = summary.get("collapsed_runs")
    return [f"{k} of {summary['num_runs']} collapsed"] if k else []


# ---- plot ---------------------------------------------------------------------------------------


def plot(result: dict, path: str) -> None:
    """Student test WER against teacher WER on train-unlabeled, one line per method, with
    95 % CI error bars; the no-KD baseline as a band; the noise arm in a second panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    teachers = {f"teacher-{t['name']}": t for t in result["teachers"]}
    quality = {arm: t.get("train_unlabeled_wer") or t.get("dev_wer") for arm, t in teachers.items()}
    noise = {f"noise-{n['noise_rate']:g}": n for n in result["noise_labels"]}
    noise_wer = {arm: n.get("label_wer", n.get("teacher_wer")) for arm, n in noise.items()}
    panels = [
        (quality, "teacher WER on train-unlabeled (pseudo-label quality), %",
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
    _copy_configs(result, results_dir)
    paths = [os.path.join(results_dir, f"study.{ext}") for ext in ("json", "md", "png")]
    with open(paths[0], "w", encoding="utf-8") as f:
        json.dump({**result, "command": command}, f, indent=1)
    with open(paths[1], "w", encoding="utf-8") as f:
        f.write(format_markdown(result, results_dir, command) + "\n")
    plot(result, paths[2])
    return paths
