"""The study's results page, `study.md`, from what `tfkd.study.report.collect` gathered.

The main table (student WER by method × teacher), then the paired comparisons, the precision of
each cell against the study's target, the noise arm, the values chosen on dev, convergence and,
last, every run with links to its directory and operative config (relative to the page).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from tfkd.study import stats
from tfkd.study.mirror import MIRROR
from tfkd.study.plan import BASELINE_ARM, setting_name
from tfkd.study.report import CONVERGED_WITHIN, MAX_SEEDS, MIN_SEEDS, collapsed


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
    groups = [(BASELINE_ARM, "baseline", base.get("runs", []))]
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
        f"`{MIRROR}/`). Missing: {'; '.join(shown)}{more}.{_remaining_text(result)}"
    )


def _remaining_text(result: Mapping) -> str:
    """` Estimated: about 30.2 h of job time for the 58 missing jobs (...).`; "" without one."""
    rest = result.get("remaining")
    if not rest or not rest["jobs"]:
        return ""
    hours = rest["job_seconds"] / 3600
    text = (
        f" Estimated: about {hours:.1f} h of job time for {rest['jobs']} of the missing jobs "
        f"({hours / 2:.1f} h of wall time two at a time), each at the median time of the "
        "finished jobs of its method (students) or kind"
    )
    if rest["unestimated"]:
        text += f"; {rest['unestimated']} more have no finished job alike"
    return text + "."


def _comparisons_section(comparisons: Sequence[Mapping]) -> list[str]:
    """`## Comparisons (paired by seed)`: one row per comparison (`report.paired_comparison`)."""
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
        "| arm | A | B | test A − B | dev A − B | seeds (which) | verdict (test) |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in comparisons:
        test = c["test"] or {}
        ids = test.get("seeds", [])
        seeds = f"{len(ids)} ({', '.join(map(str, ids))})" if ids else "–"
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
    """`## Precision`: how many cells meet the target (`report.precision`), and a row for each that
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
        f'|last − previous| ≤ {within:g} point. "–": no learning curve with two evaluations. '
        "A learning rate annealed to zero at the last step makes the last two evaluations close "
        "by construction, so the last column gives the whole curve (the mean at every step the "
        "seeds evaluated): one still falling steeply before the anneal was stopped by its "
        "budget of steps, not by its labels.",
        "",
        "| run | steps | dev WER, previous / last | change | converged | learning curve |",
        "|---|---|---|---|---|---|",
    ]
    rows = [(f"teacher {t['name']}", t.get("convergence")) for t in result["teachers"]]
    rows.append(("no-KD baseline", result["baseline"].get("convergence")))
    rows += [(f"{c['arm']} / {c['method']}", c.get("convergence")) for c in result["cells"]]
    for name, conv in rows:
        if not conv:
            lines.append(f"| {name} | – | – | – | – | – |")
            continue
        steps = " / ".join(f"{s:,}" for s in conv["steps"]) if conv["steps"] else "differ"
        prev, last = conv["dev_wer"]
        seeds = ""
        if conv.get("of_runs", 1) > 1 and conv["num_runs"] < conv["of_runs"]:
            seeds = f" ({conv['num_runs']} of {conv['of_runs']} seeds)"
        lines.append(
            f"| {name} | {steps} | {prev:.1f} / {last:.1f}{seeds} | {conv['change']:+.1f} | "
            f"{'yes' if conv['converged'] else '**no**'} | {_curve(conv.get('curve') or [])} |"
        )
    return lines


def _curve(curve: list[Mapping]) -> str:
    """`76.4, 55.6, 45.3 (steps 1,000–3,000, every 1,000)`; the steps listed when uneven."""
    if not curve:
        return "–"
    wers = ", ".join(f"{p['dev_wer']:.1f}" for p in curve)
    steps = [p["step"] for p in curve]
    gaps = {b - a for a, b in zip(steps, steps[1:], strict=False)}
    if len(steps) == 1:
        where = f"step {steps[0]:,}"
    elif len(gaps) == 1:
        where = f"steps {steps[0]:,}–{steps[-1]:,}, every {gaps.pop():,}"
    else:
        where = "steps " + ", ".join(f"{s:,}" for s in steps)
    return f"{wers} ({where})"


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
