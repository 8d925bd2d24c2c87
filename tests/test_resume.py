"""Resume from ``state_dict()`` at the start, middle and end of an epoch: bit-identical."""
from __future__ import annotations

import pytest
import torch

from streamaug.loader import StreamLoader


def make(index, workers):
    return StreamLoader(index.urls, batch_size=7, num_workers=workers, seed=11, shuffle=20)


def flat(batches):
    return [(tuple(b.keys), b[0].clone(), b[1].clone()) for b in batches]


def same(a, b):
    return len(a) == len(b) and all(ka == kb and torch.equal(xa, xb) and torch.equal(ya, yb)
                                    for (ka, xa, ya), (kb, xb, yb) in zip(a, b))


@pytest.mark.parametrize("workers", [0, 2, 3])
@pytest.mark.parametrize("stop_at", ["start", "middle", "middle_odd", "end"])
def test_resume_gives_identical_remaining_batches(npy_shards, workers, stop_at):
    index, _, _ = npy_shards
    reference = make(index, workers)
    epoch0 = flat(reference)
    epoch1 = flat(reference)
    cut = {"start": 0, "middle": 6, "middle_odd": 7, "end": len(epoch0)}[stop_at]

    first = make(index, workers)
    it = iter(first)
    seen = flat(next(it) for _ in range(cut))
    state = first.state_dict()
    del it, first

    resumed = make(index, workers)
    resumed.load_state_dict(state)
    rest = flat(resumed)
    if stop_at == "end":            # a finished epoch resumes into the next one
        assert same(rest, epoch1)
    else:
        assert same(seen + rest, epoch0)
    assert state["batches_done"] == cut and state["epoch"] == 0
    assert len(repr(state)) < 4096, "state is positions and seeds, not data"


def test_state_from_a_different_setup_is_refused(npy_shards):
    index, _, _ = npy_shards
    state = make(index, 0).state_dict()
    other = StreamLoader(index.urls, batch_size=8, seed=11)
    with pytest.raises(ValueError, match="batch_size: saved 7, this loader 8"):
        other.load_state_dict(state)
