"""Rounds: the pipelines section of ``streamaug bench`` runs each cell several times,
interleaved, and states its ratios paired by round.

Cells run one after another, so a ratio of two cells is also a ratio of two moments of a
shared machine: on the 2-core CI kind, two runs of one cell minutes apart read 727 and 944
samples/s, enough to move a 15% target either way. So the pipelines run in rounds, every
pipeline once per round, the order reversed in every other round (A B C, C B A, A B C), so a
steady drift over an even number of rounds falls on each pipeline alike (over an odd number,
the first order runs once more); each pipeline's rate is the median over its
rounds, and each ratio (best streamaug / best peer, the balance + SMOTE cost) is taken within
each round, where the two cells ran minutes apart at most, and stated as the median of those
paired ratios, with every round's value beside it.
"""
from __future__ import annotations

from statistics import median

# what a round measures, kept per round; with the rest of MEASURED, it is not the cell's configuration
ROUND_KEYS = ("samples_per_s", "cpu_s_per_sample", "busy_vs_idle", "peak_rss_mib", "peak_gpu_mib", "loadavg")
MEASURED = ROUND_KEYS + ("round", "status", "error", "busy", "samples_per_pass", "feed_ratio", "fed_samples_per_s",
                         "resident_samples_per_s")


def interleaved(names: list[str], rounds: int) -> list[tuple[int, str]]:
    """``(round, name)`` in the order to run them: ``names`` in order, then reversed, and so on."""
    return [(r, name) for r in range(rounds) for name in (names if r % 2 == 0 else names[::-1])]


def merge_rounds(runs: list[dict]) -> dict:
    """One cell from the runs of it in each round (``spawn``'s results, each with ``"round"``):
    the median of the rounds that finished, each round's figures under ``"rounds"``, and the
    feed ratio from the round that measured it. Failed if no round finished."""
    runs = sorted(runs, key=lambda r: r["round"])
    ok = [r for r in runs if r["status"] == "ok"]
    per_round = [{"round": r["round"], "status": r["status"],
                  **({k: r[k] for k in ROUND_KEYS if k in r} if r["status"] == "ok" else {"error": r.get("error")}),
                  **({"busy_samples_per_s": r["busy"]["samples_per_s"]} if "busy" in r else {})} for r in runs]
    config = {k: v for k, v in runs[0].items() if k not in MEASURED}
    if not ok:
        return {**config, "status": "failed", "error": runs[-1].get("error", ""), "rounds": per_round}
    out = {**config, "status": "ok", "rounds": per_round,
           "samples_per_s": median(r["samples_per_s"] for r in ok),
           "cpu_s_per_sample": median(r["cpu_s_per_sample"] for r in ok),
           "samples_per_pass": ok[0]["samples_per_pass"], "loadavg": ok[-1]["loadavg"],
           "peak_rss_mib": max(r["peak_rss_mib"] for r in ok)}
    if any("peak_gpu_mib" in r for r in ok):
        out["peak_gpu_mib"] = max(r.get("peak_gpu_mib", 0.0) for r in ok)
    busy = [r for r in ok if "busy" in r]
    if busy:
        out["busy"] = {**busy[-1]["busy"], "samples_per_s": median(r["busy"]["samples_per_s"] for r in busy)}
        out["busy_vs_idle"] = median(r["busy_vs_idle"] for r in busy)     # (paired by round, as the ratios)
    fed = next((r for r in ok if "feed_ratio" in r), None)
    if fed is not None:
        out.update({k: fed[k] for k in ("fed_samples_per_s", "resident_samples_per_s", "feed_ratio")})
    return out


def paired(a: dict, b: dict, value) -> tuple[float, list[float]]:
    """The median of ``value(a_rate, b_rate)`` over the rounds both cells finished, and those
    values; cells with no round in common (a GPU check's, or kept from an older report) give the
    value of their medians, and no values (not paired)."""
    ra = {r["round"]: r["samples_per_s"] for r in a.get("rounds", ()) if r["status"] == "ok"}
    rb = {r["round"]: r["samples_per_s"] for r in b.get("rounds", ()) if r["status"] == "ok"}
    values = [value(ra[i], rb[i]) for i in sorted(ra.keys() & rb.keys())]
    return (median(values), values) if values else (value(a["samples_per_s"], b["samples_per_s"]), [])
