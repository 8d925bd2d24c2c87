"""Random oversampling: repeats of real samples (``ClassBalancer(synthesizer=None)``)."""
from __future__ import annotations

import numpy as np
import torch

from .class_reservoir import ClassReservoir
from .synthesizer import Synthesizer, Synthetic, as_dtype, class_label, take


class RandomOversampler(Synthesizer):
    """``synthesizer=None``: repeat random reservoir members of the class (no
    interpolation); the augmentation ops then make the repeats differ."""

    def __init__(self):
        super().__init__(k_neighbors=1)

    def prepare(self, reservoir: ClassReservoir, classes: list[int]) -> None:
        """Nothing to build: repeats need no neighbours."""

    def synthesize(self, reservoir: ClassReservoir, c: int, count: int, rng: np.random.Generator,
                   dtype: torch.dtype = torch.float32) -> Synthetic:
        members = reservoir.members(c)
        if len(members) == 0:
            raise ValueError(f"{class_label(c, self.class_names)} has no samples in the reservoir yet; nothing to repeat")
        rows, entries = take(members, reservoir.entries[c], rng.integers(0, len(members), count))
        return Synthetic(as_dtype(rows, dtype), entries, [None] * count, np.zeros(count))

    def __repr__(self) -> str:
        return "RandomOversampler()"
