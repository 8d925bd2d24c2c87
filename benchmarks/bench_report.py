"""Write ``streamaug bench`` results: JSON with machine info, PNG plots, a markdown table."""
from __future__ import annotations

import contextlib
import io
import operator
import os

from streamaug.benchmarks.bench_rounds import paired
from streamaug.benchmarks.timing import write_result

PEERS = ("dataloader-albumentations", "dali-only", "webdataset-kornia-unfused")


def _rows(results, section):
    return [r for r in results if r.get("section") == section and r["status"] == "ok"]


def headline(results) -> dict:
    """The ratios the targets are stated in, per dataset: each the median of its values paired
    by round (``bench_rounds``), which ``*_rounds`` lists."""
    out = {}
    for data in dict.fromkeys(r["data"] for r in _rows(results, "pipelines")):
        rows = {r["pipeline"]: r for r in _rows(results, "pipelines") if r["data"] == data}
        ours = [r for p, r in rows.items() if p.startswith("streamaug") and "+smote" not in p]
        peers = [rows[p] for p in PEERS if p in rows]
        if not ours or not peers:
            continue
        best, peer = max(ours, key=lambda r: r["samples_per_s"]), max(peers, key=lambda r: r["samples_per_s"])
        entry = {"best_streamaug": best["pipeline"], "best_peer": peer["pipeline"],
                 "feed_ratio_best_streamaug": best.get("feed_ratio")}
        entry["best_vs_best_peer"], entry["best_vs_best_peer_rounds"] = paired(best, peer, operator.truediv)
        if "dali-only" in rows:
            entry["best_vs_dali_only"], entry["best_vs_dali_only_rounds"] = paired(best, rows["dali-only"],
                                                                                   operator.truediv)
        twins = [p for p in rows if p.endswith("+smote") and p.replace("+smote", "") in rows]
        if twins:      # the cost on the fastest configuration that has a balanced twin
            base = max(twins, key=lambda p: rows[p.replace("+smote", "")]["samples_per_s"])
            entry["smote_pipeline"] = base
            entry["smote_throughput_cost"], entry["smote_throughput_cost_rounds"] = paired(
                rows[base], rows[base.replace("+smote", "")], lambda smote, plain: 1 - smote / plain)
        out[data] = entry
    return out


def markdown(results) -> str:
    gpu = any("peak_gpu_mib" in r for r in _rows(results, "pipelines"))
    busy = next((r["busy"]["workers"] for r in _rows(results, "pipelines") if "busy" in r), 0)
    rounds = max((len(r.get("rounds", ())) for r in _rows(results, "pipelines")), default=1)
    lines = ["| data | pipeline | samples/s |" + (" by round |" if rounds > 1 else "") + (f" with {busy} busy | busy/idle | load |" if busy else "")
             + " CPU ms/sample | peak RSS MiB |" + (" peak GPU MiB |" if gpu else "") + " feed ratio |",
             "| --- | --- | ---: |" + (" ---: |" if rounds > 1 else "") + (" ---: | ---: | ---: |" if busy else "")
             + " ---: | ---: |"
             + (" ---: |" if gpu else "") + " ---: |"]
    for r in _rows(results, "pipelines"):
        feed = f"{r['feed_ratio']:.2f}" if r.get("feed_ratio") is not None else "-"
        mem = f" {r.get('peak_gpu_mib', 0):,.0f} |" if gpu else ""
        loaded = ""
        if busy:
            loaded = (f" {r['busy']['samples_per_s']:,.0f} | {r['busy_vs_idle']:.2f} | {r['loadavg'][0]:.1f} |"
                      if "busy" in r else " - | - | - |")
        by_round = (" " + ", ".join(f"{x['samples_per_s']:,.0f}" if x["status"] == "ok" else "failed"
                                    for x in r.get("rounds", ())) + " |") if rounds > 1 else ""
        lines.append(f"| {r['data']} | {r['pipeline']} | {r['samples_per_s']:,.0f} |{by_round}{loaded} "
                     f"{r['cpu_s_per_sample'] * 1e3:.2f} | {r['peak_rss_mib']:,.0f} |{mem} {feed} |")
    if _rows(results, "scaling"):        # sections a run did not have (the GPU check's) are left out
        lines += ["", "| scaling: N | samples/s | CPU ms/sample | peak RSS MiB |", "| ---: | ---: | ---: | ---: |"]
        for r in sorted(_rows(results, "scaling"), key=lambda r: r["n"]):
            lines.append(f"| {r['n']:,} | {r['samples_per_s']:,.0f} | {r['cpu_s_per_sample'] * 1e3:.3f} "
                         f"| {r['peak_rss_mib']:,.0f} |")
    for section, key in (("workers", "workers"), ("batch", "batch")):
        if _rows(results, section):
            lines += ["", f"| {section} | samples/s |", "| ---: | ---: |"]
            lines += [f"| {r[key]} | {r['samples_per_s']:,.0f} |" for r in _rows(results, section)]
    lines += ["", "| data | target ratio | measured |" + (" by round |" if rounds > 1 else ""),
              "| --- | --- | ---: |" + (" --- |" if rounds > 1 else "")]

    def line(data, what, h, key, fmt):
        by_round = (", ".join(fmt(v) for v in h[f"{key}_rounds"]) or "not paired: a ratio of medians"
                    if rounds > 1 else None)
        lines.append(f"| {data} | {what} | {fmt(h[key])} |" + (f" {by_round} |" if by_round is not None else ""))
    for data, h in headline(results).items():
        line(data, f"best streamaug ({h['best_streamaug']}) / best peer ({h['best_peer']})", h, "best_vs_best_peer",
             lambda v: f"{v:.2f}×")
        if h.get("feed_ratio_best_streamaug") is not None:
            lines.append(f"| {data} | feed ratio of {h['best_streamaug']} | {h['feed_ratio_best_streamaug']:.2f} |"
                         + (" (first round) |" if rounds > 1 else ""))
        if "smote_throughput_cost" in h:
            line(data, f"throughput cost of balancing + SMOTE ({h['smote_pipeline']})", h, "smote_throughput_cost",
                 lambda v: f"{v * 100:.0f}%")
        if "best_vs_dali_only" in h:
            line(data, "best streamaug / DALI-only", h, "best_vs_dali_only", lambda v: f"{v:.2f}×")
    return "\n".join(lines) + "\n"


def plots(results, out: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    pipe = _rows(results, "pipelines")
    kinds = list(dict.fromkeys(r["data"] for r in pipe)) or ["npy32"]
    fig, axes = plt.subplots(1, len(kinds) + 1, figsize=(5 * len(kinds) + 5, 4), dpi=100)
    for ax, data in zip(axes[:-1], kinds):
        rows = [r for r in pipe if r["data"] == data]
        ax.barh([r["pipeline"] for r in rows], [r["samples_per_s"] for r in rows],
                color=["tab:green" if r["pipeline"].startswith("streamaug") else "tab:gray" for r in rows])
        ax.set_title(f"{data}: samples/s (higher is better)")
    rows = [r for r in pipe if r.get("feed_ratio") is not None]
    axes[-1].barh([f"{r['data']} {r['pipeline']}" for r in rows], [r["feed_ratio"] for r in rows])
    axes[-1].axvline(1.0, color="k", lw=0.8)
    axes[-1].set_title("feed ratio (1.0 = loader is free)")
    fig.tight_layout()
    paths.append(os.path.join(out, "throughput.png"))
    fig.savefig(paths[-1])
    plt.close(fig)
    scaling = sorted(_rows(results, "scaling"), key=lambda r: r["n"])
    if scaling:
        fig, ax = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
        ns = [r["n"] for r in scaling]
        ax[0].plot(ns, [r["cpu_s_per_sample"] * 1e3 for r in scaling], "o-")
        ax[0].set(xscale="log", xlabel="dataset size (samples)", ylabel="CPU ms per sample",
                  title="cost per sample, balancing on")
        ax[1].plot(ns, [r["peak_rss_mib"] for r in scaling], "o-")
        ax[1].set(xscale="log", xlabel="dataset size (samples)", ylabel="peak RSS (MiB)", title="memory", ylim=(0, None))
        fig.tight_layout()
        paths.append(os.path.join(out, "scaling.png"))
        fig.savefig(paths[-1])
        plt.close(fig)
    return paths


def write_report(results: list[dict], out: str, quick: bool = False, complete: bool = True) -> None:
    """``complete=False``: a run still going (or stopped) saves what it has, quietly, with
    ``"complete": false`` in the JSON and a line saying so atop the table."""
    os.makedirs(out, exist_ok=True)
    table = markdown(results)
    if quick:
        table = ("**Quick run (--quick): tiny sizes that check the harness runs end to end. The ratios below "
                 "are not measurements.**\n\n" + table)
    if not complete:
        table = "**Incomplete run: the cells below are those finished so far.**\n\n" + table
    with open(os.path.join(out, "bench.md"), "w") as f:
        f.write(table)
    images = plots(results, out)
    payload = {"quick": quick, "complete": complete, "headline": headline(results), "cells": results}
    if complete:
        write_result(os.path.join(out, "bench.json"), payload)
        print(table)
        print("wrote " + ", ".join([os.path.join(out, "bench.md")] + images))
        return
    with contextlib.redirect_stdout(io.StringIO()):
        write_result(os.path.join(out, "bench.json"), payload)
