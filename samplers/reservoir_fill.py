"""Fill a balancer's class reservoirs from the dataset, once, before the first batch.

A label-only pass over the shards (no image is decoded) lists each needed class's samples; a
class with at most ``reservoir_size`` keeps all of them, a larger one the ``reservoir_size``
with the smallest hash of ``(seed, shard file name, key)`` (a seeded uniform subset); then only
those are read and decoded. The reservoirs are a pure function of the data and the seed, so a
balancer's state with an index is its position alone (see ``ClassBalancer.state_dict``).
"""
from __future__ import annotations

import torch

from streamaug.core.seeding import derive_seed
from streamaug.core.shard_names import shard_file_name

from .class_reservoir import ClassReservoir


def needed_classes(class_counts: list[int], targets: dict[int, int], uses_all_classes: bool) -> set[int]:
    """The classes whose reservoirs are filled: those synthesized, or every class present for
    synthesizers that look at other classes (Borderline-SMOTE, ADASYN)."""
    if uses_all_classes:
        return {c for c, n in enumerate(class_counts) if n}
    return {c for c, n in targets.items() if n and class_counts[c]}


def shard_names(urls) -> dict[str, str]:
    """Each shard url's file name, numbered (``name#1``) where two urls share one: the file name,
    not the path, so a dataset that moved, or is mounted elsewhere on another node, keeps its
    reservoirs, as the loader state's fingerprint assumes; two shards of one name in two folders
    are told apart by their order."""
    names: dict[str, str] = {}
    for url in urls:
        if url not in names:
            base = shard_file_name(url)
            same = sum(n.split("#")[0] == base for n in names.values())
            names[url] = base if not same else f"{base}#{same}"
    return names


def fill_reservoirs(rows, reservoir: ClassReservoir, needed: set[int], reservoir_size: int, seed: int,
                    feature_fn, class_label) -> list[tuple[str, int, str]]:
    """Fill ``reservoir`` with the ``needed`` classes' samples read through ``rows`` (the loader's
    row source: ``labels(keep)`` and ``fetch(pairs, feature_fn, missing="skip")``), then fix it.
    Returns what could not be read, as ``(reason, count, example)`` skips for the loader's stats."""
    listed: dict[int, list[tuple[str, str]]] = {c: [] for c in needed}
    in_order: dict[str, None] = {}     # shard urls as the label pass meets them (numbering same names)
    for url, key, label in rows.labels(lambda c: c in needed):
        listed[label].append((url, key))
        in_order.setdefault(url)
    names = shard_names(in_order)
    chosen = {}
    for c, pairs in listed.items():
        if len(pairs) > reservoir_size:
            rank = sorted(range(len(pairs)), key=lambda i: derive_seed(seed, "reservoir", names[pairs[i][0]],
                                                                       pairs[i][1]))
            pairs = [pairs[i] for i in sorted(rank[:reservoir_size])]
        chosen[c] = pairs
    fetched = rows.fetch([p for pairs in chosen.values() for p in pairs], feature_fn, missing="skip") \
        if chosen else {}
    skips = []
    for c, pairs in chosen.items():
        have = [p for p in pairs if p in fetched]
        if len(have) < len(pairs):
            lost = len(pairs) - len(have)
            skips.append(("reservoir_unreadable", lost, f"{class_label(c)}: {lost} listed samples could not be read"))
        if have:              # (a subset stands for the whole class: see other_class_share)
            reservoir.fill(c, torch.stack([fetched[p] for p in have]), have, represents=len(listed[c]))
    reservoir.fixed = True      # nothing is added later: neighbour tables are built once
    return skips
