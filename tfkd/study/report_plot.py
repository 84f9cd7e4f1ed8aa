"""The study's plot, `study.png`: student test WER against the teacher's (or the noisy labels')
WER, from what `tfkd.study.report.collect` gathered."""

from __future__ import annotations

from collections.abc import Mapping


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
