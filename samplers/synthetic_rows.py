"""Append a batch's synthetic rows: one per slot, made from its class's reservoir.

A slot whose class has no sample in any reservoir (none readable in the dataset, or none
seen yet without an index) is filled with a repeat of a real sample, flagged ``is_padding``,
so the batch keeps its planned size and the shortfall is counted, never hidden.
"""
from __future__ import annotations

import numpy as np
import torch

from streamaug.core.flight import BatchInFlight

from .class_reservoir import ClassReservoir
from .synthesizer import Synthesizer, as_dtype


def append_synthetic_rows(batch: BatchInFlight, classes: np.ndarray, synthesizer: Synthesizer,
                          reservoir: ClassReservoir, rng: np.random.Generator) -> list[int]:
    """Append one row per entry of ``classes`` to ``batch``: synthesized where the class's
    reservoir holds samples, else a flagged repeat. Returns the classes repeated instead."""
    like = batch.images
    dtype = torch.uint8 if like.dtype == torch.uint8 else torch.float32
    wanted = classes.tolist()
    unfilled = [i for i, c in enumerate(wanted) if not reservoir.size[c]]
    new_rows, new_labels, prov, padding = [], [], [], []
    for c in sorted(set(wanted)):
        positions = [i for i, v in enumerate(wanted) if v == c and i not in unfilled]
        if not positions:
            continue
        syn = synthesizer.synthesize(reservoir, c, len(positions), rng, dtype=dtype)
        new_rows.append(as_dtype(syn.values, dtype))        # a no-op unless a subclass returned floats
        new_labels += [c] * len(positions)
        prov += [{"seed": s, "neighbour": p, "u": float(u)}
                 for s, p, u in zip(syn.seed_entries, syn.partner_entries, syn.u)]
        padding += [False] * len(positions)
    for p in unfilled:                   # no sample of the class anywhere: repeat a real one, flagged
        row, c = padding_row(batch, reservoir, rng, wanted[p])
        new_rows.append(as_dtype(row, dtype))
        new_labels.append(c)
        prov.append(None)
        padding.append(True)
    if new_rows:
        values = torch.cat(new_rows).to(like.dtype)
        batch.extend(values.to(like.device), new_labels,
                     [f"synthetic:{p['seed'][1]}" if p else "padding" for p in prov],
                     [p["seed"][0] if p else "" for p in prov], prov, [not q for q in padding], padding)
    return [wanted[p] for p in unfilled]


def padding_row(batch: BatchInFlight, reservoir: ClassReservoir, rng: np.random.Generator,
                wanted: int) -> tuple[torch.Tensor, int]:
    """A real sample to repeat in a slot of class ``wanted``, which has none: a member of a
    filled reservoir (a class, then a member, drawn uniformly), else one of the batch's real
    rows, drawn uniformly. (It was the first member of the first filled class, else the
    batch's first real row: a class with no readable sample had one image repeated in
    every one of its slots in a batch.)"""
    filled = np.flatnonzero(reservoir.size)
    if len(filled):
        c = int(filled[rng.integers(len(filled))])
        i = int(rng.integers(reservoir.size[c]))
        return reservoir.members(c)[i:i + 1].float(), c
    real = batch.real.nonzero().flatten().tolist()
    if real:
        r = real[int(rng.integers(len(real)))]
        return batch.images[r:r + 1].float(), int(batch.labels[r])
    raise ValueError(f"class {wanted} has no readable sample (see loader.stats.skipped) and batch "
                     f"{batch.batch_id} has no real row to repeat in its place")
