"""Plots learning curves (dev WER against training minutes) of runs from eval/history.jsonl.

Usage:
  python tools/plot_curves.py --run old=runs/teacher_old --run new=results/recipe/teacher.json \\
      [--x train_minutes|cpu_minutes|step] [--metric dev/wer] [--metric train/wer] \\
      --output docs/curves.png [--title 'Teacher recipes']

Each run's curve comes from the history `bin/train` writes at every periodic evaluation
(`tfkd.training.history`), read from the run directory, or from a probe's summary
(`results/recipe/<probe>.json` of tools/recipe_probes.py, whose `curve` is that history), so a
plot of committed probes needs no run directories. The first `--metric` is drawn solid, further
ones (e.g. the train-subset WER of gin/eval/train_subset.gin) dashed or dotted in the same
colour. Minutes count the training loop without evaluation: `train_minutes` in wall time,
`cpu_minutes` in process CPU time (comparable when other jobs share the machine). Prints a
markdown table: per run, the best value of the first metric (lowest), where it was reached, and
the last point.
"""

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tfkd import cli  # noqa: E402  (after the path; no TensorFlow)

X_AXES = {
    "train_minutes": ("train_seconds", 60.0, "training minutes (evaluation excluded)"),
    "cpu_minutes": ("cpu_seconds", 60.0, "process CPU minutes (evaluation excluded)"),
    "step": ("step", 1.0, "step"),
}
LINESTYLES = ("-", "--", ":", "-.")
PRODUCE = (
    "train with periodic evaluation, e.g. bin/train ... --gin_bindings='train.eval_every = 500'"
)


def _parse_run(text):
    label, sep, directory = text.partition("=")
    if not sep or not label or not directory:
        raise argparse.ArgumentTypeError(f"--run takes LABEL=DIR, got {text!r}")
    return label, directory


def _parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--run",
        action="append",
        type=_parse_run,
        required=True,
        help="LABEL=DIR (a bin/train run) or LABEL=FILE.json (a probe summary with a `curve`)",
    )
    parser.add_argument("--x", choices=sorted(X_AXES), default="train_minutes")
    parser.add_argument("--metric", action="append", default=None, help="default dev/wer")
    parser.add_argument("--output", required=True, help="PNG path")
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)
    args.metric = args.metric or ["dev/wer"]
    return args


def _probe_curve(path):
    """The `curve` of a probe summary JSON, or None when the file has none."""
    try:
        with open(path) as f:
            summary = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise SystemExit(f"{path}: not a readable probe summary ({e})") from None
    curve = summary.get("curve") if isinstance(summary, dict) else None
    return curve if isinstance(curve, list) else None


def load_runs(runs, metrics):
    """`{label: records}` of the runs' histories; raises SystemExit naming the runs without one
    (one line; `tfkd.cli.run` makes it exit code 2)."""
    from tfkd.training import history

    loaded, errors = {}, []
    for label, directory in runs:
        if directory.endswith(".json"):
            records = _probe_curve(directory)
            where = f"{directory} (no `curve`: not a tools/recipe_probes.py summary)"
        else:
            records = history.read_history(directory)
            where = f"{history.history_path(directory)}: {PRODUCE}"
        if not records:
            errors.append(f"{label}: no records in {where}")
        elif not any(metrics[0] in r for r in records):
            names = sorted({k for r in records for k in r})
            errors.append(f"{label}: no {metrics[0]!r} in {directory}'s history (it has {names})")
        else:
            loaded[label] = records
    if errors:
        raise SystemExit("; ".join(errors))
    return loaded


def _minutes(record, key):
    return record.get(key, float("nan")) / 60.0


def summary_table(runs, metrics, x):
    """Markdown: per run the best (lowest) first metric, where it was reached, the last point."""
    metric = metrics[0]
    key = X_AXES[x][0] if x != "step" else "train_seconds"
    unit = "CPU min" if key == "cpu_seconds" else "train min"
    others = "".join(f" last {m} |" for m in metrics[1:])
    lines = [
        f"| run | best {metric} | at step | at {unit} | last step | last {unit} | last {metric} |"
        + others,
        "|---|---|---|---|---|---|---|" + "---|" * len(metrics[1:]),
    ]
    for label, records in runs.items():
        points = [r for r in records if metric in r]
        best = min(points, key=lambda r: r[metric])
        last = points[-1]
        extra = "".join(f" {last[m]:.2f} |" if m in last else " – |" for m in metrics[1:])
        lines.append(
            f"| {label} | {best[metric]:.2f} | {best['step']} | {_minutes(best, key):.1f} | "
            f"{last['step']} | {_minutes(last, key):.1f} | {last[metric]:.2f} |" + extra
        )
    return "\n".join(lines)


def plot(runs, metrics, x, output, title=None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key, scale, xlabel = X_AXES[x]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    for i, (label, records) in enumerate(runs.items()):
        color = f"C{i % 10}"
        for j, metric in enumerate(metrics):
            points = [r for r in records if metric in r and key in r]
            if not points:
                continue
            ax.plot(
                [r[key] / scale for r in points],
                [r[metric] for r in points],
                linestyle=LINESTYLES[j % len(LINESTYLES)],
                marker="o",
                markersize=3,
                color=color,
                label=f"{label} {metric}",
            )
    ax.set_xlabel(xlabel)
    wer = all(m.endswith("/wer") for m in metrics)
    ax.set_ylabel("WER (%)" if wer else ", ".join(metrics))
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    directory = os.path.dirname(output)
    if directory:
        os.makedirs(directory, exist_ok=True)
    fig.savefig(output, dpi=120, bbox_inches="tight")
    plt.close(fig)


def main(argv=None) -> int:
    args = _parse_args(argv)
    runs = load_runs(args.run, args.metric)
    plot(runs, args.metric, args.x, args.output, args.title)
    print(summary_table(runs, args.metric, args.x))
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, "tools/plot_curves.py"))
