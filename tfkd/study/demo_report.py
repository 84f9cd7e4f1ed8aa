"""`make demo`'s report: OUT/summary.json and OUT/summary.md (the tables of docs/demo.md), from
what its stages wrote (`tfkd.study.demo`). Nothing here imports TensorFlow."""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import re

from tfkd.study.demo import STUDENTS, Context, demo_jobs
from tfkd.study.jobs import read_json, stamp_path


def _stage_seconds(ctx: Context) -> dict[str, float]:
    """{stage: wall time of its last successful run}, in demo order (the baseline's too when this
    run skips it)."""
    out = {}
    for job in demo_jobs(dataclasses.replace(ctx, baseline=True)):
        if job.always:  # the summary itself: not a stage of the run it reports
            continue
        stamp = read_json(stamp_path(ctx.out, job.name))
        if stamp is not None:
            out[job.name] = stamp["seconds"]
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
        found = [read_json(os.path.join(ctx.data, "records", f"{s}.manifest.json")) for s in splits]
        n = [m.get("num_utterances") if m else None for m in found]
        counts["labelled"] = None if None in n else sum(n)
        parts.append(f"{_count(counts['labelled'])} labelled")
    if pseudo:
        counts["pseudo_labelled"] = (read_json(ctx.path("pseudo", "manifest.json")) or {}).get(
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
        dev = read_json(ctx.path(name, "eval", "dev.json"))
        test = read_json(ctx.path(name, "eval", "test.json"))
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
    pseudo = read_json(ctx.path("pseudo", "manifest.json")) or {}
    tflite = read_json(ctx.path("export", "tflite_eval.json")) or []
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
