"""The demo's summary: mean ± std over seeds, and which differences are within the seeds' spread."""
from __future__ import annotations

import numpy as np

METRICS = ("samples_per_s", "balanced_accuracy", "macro_f1", "minority_recall", "train_minority_recall",
           "minority_rows_per_batch")


def summarize(runs: dict[str, list[dict]]) -> dict:
    """Mean and sample std (ddof=1; 0 with one seed) of each metric per arm."""
    def std(v):
        return float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
    return {a: {m: {"mean": float(np.mean([r[m] for r in rs])), "std": std([r[m] for r in rs])} for m in METRICS}
            for a, rs in runs.items()}


def within_noise(a: dict, b: dict) -> bool:
    """|mean_a − mean_b| smaller than the seeds' spread: the larger of the two stds."""
    return abs(a["mean"] - b["mean"]) < max(a["std"], b["std"])


def table(summary: dict, labels: dict[str, str], baseline: str = "plain") -> str:
    """Markdown table; Δ is balanced accuracy vs ``baseline`` (vs the first arm if absent),
    marked ``~`` when within the seeds' spread; ``≈ best`` marks arms within the spread of the best."""
    arms = list(summary)
    base = baseline if baseline in summary else arms[0]
    best = max(arms, key=lambda a: summary[a]["balanced_accuracy"]["mean"])
    lines = ["| arm | balanced accuracy | Δ vs " + base + " | macro-F1 | minority recall | minority recall (train) "
             "| minority rows/batch | samples/s |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for a in arms:
        s = summary[a]
        bal = s["balanced_accuracy"]
        delta = bal["mean"] - summary[base]["balanced_accuracy"]["mean"]
        mark = " ~" if a != base and within_noise(bal, summary[base]["balanced_accuracy"]) else ""
        tag = " **best**" if a == best else (" ≈ best" if within_noise(bal, summary[best]["balanced_accuracy"]) else "")
        cells = [f"{bal['mean']:.3f} ± {bal['std']:.3f}{tag}", "" if a == base else f"{delta * 100:+.1f}{mark}"]
        cells += [f"{s[m]['mean']:.3f} ± {s[m]['std']:.3f}" for m in ("macro_f1", "minority_recall",
                                                                      "train_minority_recall")]
        cells += [f"{s['minority_rows_per_batch']['mean']:.1f}", f"{s['samples_per_s']['mean']:,.0f}"]
        lines.append(f"| {a}: {labels[a]} | " + " | ".join(cells) + " |")
    lines.append("Δ in points of balanced accuracy; ~ = |Δ| below the seeds' spread (the larger std of the two "
                 "arms), i.e. not a difference these seeds can show; ≈ best = within that spread of the best arm.")
    return "\n".join(lines)


def plot_curves(runs: dict[str, list[dict]], labels: dict[str, str], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for a, rs in runs.items():
        steps = [s for s, _ in rs[0]["curve"]]
        acc = np.array([[v for _, v in r["curve"]] for r in rs])
        ax.plot(steps, acc.mean(0), label=f"{a}: {labels[a]}")
        ax.fill_between(steps, acc.min(0), acc.max(0), alpha=0.15)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("balanced accuracy (test)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
