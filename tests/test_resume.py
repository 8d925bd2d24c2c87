"""Resume from ``state_dict()`` at the start, middle and end of an epoch: bit-identical."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from loader_states import states_after_each
from streamaug.loader import StreamLoader


def make(index, workers, shuffle=20):
    return StreamLoader(index.urls, batch_size=7, num_workers=workers, seed=11, shuffle=shuffle)


def flat(batches):
    return [(tuple(b.keys), b[0].clone(), b[1].clone()) for b in batches]


def same(a, b):
    return len(a) == len(b) and all(ka == kb and torch.equal(xa, xb) and torch.equal(ya, yb)
                                    for (ka, xa, ya), (kb, xb, yb) in zip(a, b))


@pytest.mark.parametrize("shuffle", [20, 0], ids=["buffer", "dataset-order"])
@pytest.mark.parametrize("workers", [0, 2, 3])
@pytest.mark.parametrize("stop_at", ["start", "middle", "middle_odd", "end"])
def test_resume_gives_identical_remaining_batches(npy_shards, workers, stop_at, shuffle):
    index, _, _ = npy_shards
    reference = make(index, workers, shuffle)
    epoch0 = flat(reference)
    epoch1 = flat(reference)
    cut = {"start": 0, "middle": 6, "middle_odd": 7, "end": len(epoch0)}[stop_at]

    first = make(index, workers, shuffle)
    it = iter(first)
    seen = flat(next(it) for _ in range(cut))
    state = first.state_dict()
    del it, first

    resumed = make(index, workers, shuffle)
    resumed.load_state_dict(state)
    rest = flat(resumed)
    if stop_at == "end":            # a finished epoch resumes into the next one
        assert same(rest, epoch1)
    else:
        assert same(seen + rest, epoch0)
    if stop_at == "end":            # the last batch handed on moved the position to the next epoch
        assert (state["epoch"], state["batches_done"]) == (1, 0)
        older = make(index, workers, shuffle)    # states saved as (epoch, all its batches) before 0.2 say the same
        older.load_state_dict(dict(state, epoch=0, batches_done=cut))
        assert same(flat(older), epoch1)
    else:
        assert state["batches_done"] == cut and state["epoch"] == 0
    assert len(repr(state)) < 4096, "state is positions and seeds, not data"


def test_state_from_a_different_setup_is_refused(npy_shards):
    index, _, _ = npy_shards
    state = make(index, 0).state_dict()
    other = StreamLoader(index.urls, batch_size=8, seed=11)
    with pytest.raises(ValueError, match="batch_size: saved 7, this loader 8"):
        other.load_state_dict(state)


@pytest.mark.parametrize("field, value, message", [
    ("batches_done", -2, "'batches_done' must be an int >= 0, got -2"),       # red team s33: accepted, and
    ("batches_done", 2.5, "'batches_done' must be an int >= 0, got 2.5"),     # ran out of step with it
    ("epoch", "1", "'epoch' must be an int >= 0, got '1'"),
    ("explicit_epoch", "no", "'explicit_epoch' must be true or false, got 'no'"),
    ("next_epoch", "1", r"'next_epoch' must be an int >= 0 or null, got '1'"),
    ("next_epoch", -1, r"'next_epoch' must be an int >= 0 or null, got -1"),
    ("stats", None, "'stats' must be a dict, got NoneType"),
])
def test_a_malformed_state_is_refused_naming_the_field(npy_shards, field, value, message):
    index, _, _ = npy_shards
    state = dict(make(index, 0).state_dict(), **{field: value})
    with pytest.raises(ValueError, match=message):
        make(index, 0).load_state_dict(state)


def test_reader_errors_before_the_resume_point_are_not_counted_again(tmp_path):
    """A duplicate member in one shard, counted once in a whole pass; resumed after every
    batch, the passed-over prefix is not counted again (it was after batches 5 to 9)."""
    import io
    import tarfile

    from streamaug.loader import write_shards

    rng = np.random.default_rng(0)
    index = write_shards((rng.integers(0, 256, (80, 4, 4, 3), dtype=np.uint8), rng.integers(0, 2, 80)),
                         str(tmp_path), maxcount=20, progress=False)
    with tarfile.open(index.urls[1]) as t:
        members = [(m, t.extractfile(m).read()) for m in t.getmembers()]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
        for i, (m, data) in enumerate(members):
            t.addfile(m, io.BytesIO(data))
            if i == 1:
                t.addfile(m, io.BytesIO(data))                 # key.cls twice in one sample
    open(index.urls[1], "wb").write(buf.getvalue())

    def make():
        return StreamLoader(index.urls, batch_size=8, num_workers=2, on_error="skip", shuffle=0, device="cpu")
    with make() as full:
        n = sum(1 for _ in full)
        assert full.stats.skipped == {"duplicate_key": 1}
    states = states_after_each(make, n - 1)
    for taken in range(n):
        with make() as resumed:
            resumed.load_state_dict(states[taken])
            assert sum(1 for _ in resumed) == n - taken
            assert resumed.stats.skipped == {"duplicate_key": 1}, taken


def _shards_with_lost_samples(tmp: str):
    """Three indexed shards with samples lost to skipped errors: one that does not decode, a bad
    label, an image of the wrong size, and a shard four samples shorter than its index says."""
    from shard_factory import good_members, npy_bytes, write_custom

    a = good_members(20, 0)
    a[2 * 5] = ("s_00005.npy", b"not an npy")
    a[2 * 9 + 1] = ("s_00009.cls", b"abc")
    b = good_members(20, 20)
    b[2 * 3] = ("s_00023.npy", npy_bytes(np.zeros((6, 6, 3), np.uint8)))
    c = good_members(16, 40)
    return write_custom(tmp, {"a.tar": a, "b.tar": b, "c.tar": c},
                        {"a.tar": [10, 10], "b.tar": [10, 10], "c.tar": [10, 10]})


@pytest.mark.parametrize("workers,shuffle", [(0, 0), (2, 0), (2, 8)])
def test_resume_after_lost_samples_is_exact(tmp_path, workers, shuffle):
    """Lost samples keep their place in their batch (filled there by a repeat), so a resume at
    any batch gives the uninterrupted pass's remaining batches, padding included; before, each
    loss shifted that worker's later batches and a resume started one sample early per loss."""
    index = _shards_with_lost_samples(str(tmp_path))

    def make():
        return StreamLoader(index.urls, batch_size=4, num_workers=workers, on_error="skip", shuffle=shuffle,
                            seed=3, device="cpu", index=index)
    with make() as full:
        batches = list(full)
        reference = flat(batches)
        padding = [b.is_padding.clone() for b in batches]
        skipped = dict(full.stats.skipped)
    assert skipped == {"format_mismatch": 1, "bad_label": 1, "image_size": 1, "index_mismatch": 4}
    assert sum(int(p.sum()) for p in padding) == 7
    states = states_after_each(make, len(reference) - 1)
    for taken in range(len(reference)):
        with make() as resumed:
            resumed.load_state_dict(states[taken])
            rest = list(resumed)
            assert same(flat(rest), reference[taken:]), taken
            assert [b.is_padding.tolist() for b in rest] == [p.tolist() for p in padding[taken:]], taken
            assert dict(resumed.stats.skipped) == skipped, taken


def test_a_lost_sample_is_padded_in_its_own_batch(tmp_path):
    """Without shuffling, the batch that planned ``s_00005`` repeats a good row of its own in that
    place, and the next batch starts at ``s_00008`` as planned."""
    index = _shards_with_lost_samples(str(tmp_path))
    with StreamLoader(index.urls, batch_size=4, on_error="skip", shuffle=0, device="cpu", index=index) as loader:
        batches = list(loader)
    where = next(i for i, b in enumerate(batches) if "s_00004" in b.keys)
    lost_batch, after = batches[where], batches[where + 1]
    assert lost_batch.keys[0] == "s_00004" and lost_batch.keys[2:] == ["s_00006", "s_00007"]
    assert lost_batch.is_padding.tolist() == [False, True, False, False]
    assert lost_batch.keys[1] in ("s_00004", "s_00006", "s_00007")
    assert after.keys[0] == "s_00008"


@pytest.mark.parametrize("explicit", [False, True], ids=["self-advancing", "set_epoch"])
def test_set_epoch_that_drops_a_restored_mid_epoch_position_warns(npy_shards, explicit):
    """Red team s40: a restored mid-epoch position replaced by set_epoch of another epoch lost
    the epoch's other batches without a word (Lightning resuming a max_steps run). Setting the
    state's own epoch, or the next one after a state taken at an epoch's end, says nothing."""
    import warnings

    index, _, _ = npy_shards
    source = make(index, 0)
    if explicit:
        source.set_epoch(1)
    it = iter(source)
    next(it), next(it)
    mid = source.state_dict()
    for _ in it:
        pass
    end = source.state_dict()
    epoch = source.epoch if explicit else 0

    def warned(state, chosen):
        loader = make(index, 0)
        loader.load_state_dict(state)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loader.set_epoch(chosen)
        return [str(w.message) for w in caught if "replaces the position" in str(w.message)]

    got = warned(mid, epoch + 1)
    assert len(got) == 1 and got[0].startswith(
        f"set_epoch({epoch + 1}) replaces the position load_state_dict() restored, 2 batches into epoch {epoch}: "
        f"the rest of epoch {epoch} is not read, and epoch {epoch + 1} starts at its first batch"), got
    assert warned(mid, epoch) == []
    assert warned(end, epoch + 1) == [] and warned(end, epoch + 5) == [], "an epoch's end holds no position to lose"
    went_on = make(index, 0)                   # set_epoch(1) while epoch 0's pass ran: the state names 1 as next
    it = iter(went_on)
    next(it)
    went_on.set_epoch(1)
    with pytest.warns(UserWarning, match="while a pass of epoch 0 ran"):
        next(it)
    named = went_on.state_dict()
    assert (named["epoch"], named["batches_done"], named["next_epoch"]) == (0, 2, 1)
    got = warned(named, 1)                     # (review s40: the reason the warning gave was wrong here)
    assert len(got) == 1 and "the rest of epoch 0 is not read" in got[0] and \
        "The state was saved while a pass of epoch 0 went on after set_epoch(1)" in got[0], got


@pytest.mark.parametrize("saved_workers, loaded_workers", [(0, 2), (2, 0)])
def test_an_unshuffled_state_resumes_across_a_change_of_workers(npy_shards, saved_workers, loaded_workers):
    """Red team s40: with an index and no shuffling, batches are the same for any num_workers
    (dataset order; every plug-in draws from (seed, epoch, rank, batch)), yet a state was refused
    across a change of workers. Shuffled, the buffer mixes each worker's run: still refused."""
    from streamaug.ops import Compose, Flip, GaussianNoise
    from streamaug.samplers import ClassBalancer

    def unshuffled(workers):
        return StreamLoader(npy_shards[0].urls, batch_size=7, num_workers=workers, seed=11, shuffle=False,
                            augment=Compose([Flip(p=0.5), GaussianNoise(0.05)]), balance=ClassBalancer())

    whole = flat(unshuffled(loaded_workers))
    first = unshuffled(saved_workers)
    it = iter(first)
    seen = flat(next(it) for _ in range(5))
    state = first.state_dict()
    del it
    first.close()
    resumed = unshuffled(loaded_workers)
    resumed.load_state_dict(state)
    assert same(seen + flat(resumed), whole)
    with pytest.raises(ValueError, match=f"num_workers: saved {saved_workers}, this loader {loaded_workers}"):
        make(npy_shards[0], loaded_workers).load_state_dict(make(npy_shards[0], saved_workers).state_dict())


def state_five_batches_in(index, workers: int, explicit: bool) -> dict:
    first = make(index, workers)
    if explicit:
        first.set_epoch(0)
    it = iter(first)
    for _ in range(5):
        next(it)
    return first.state_dict()


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("explicit", [True, False], ids=["set_epoch", "no-set_epoch"])
def test_a_batch_looked_at_after_load_state_dict(npy_shards, workers, explicit):
    """Port red team s41: ``next(iter(loader))`` after ``load_state_dict`` (a shape check, a logging
    callback) took the restored position: with ``set_epoch`` the loop then read the epoch from batch
    0 again, without it the loop began the next epoch; both silently. With ``set_epoch`` the loop
    now resumes where the state says (the look is read again, as its batch); without, it is a new
    epoch, as a DataLoader's next iter() is, and a warning says how to resume instead."""
    index, _, _ = npy_shards
    reference = make(index, workers)
    if explicit:
        reference.set_epoch(0)
    epoch0 = [b.keys for b in reference]
    resumed = make(index, workers)
    resumed.load_state_dict(state_five_batches_in(index, workers, explicit))
    assert next(iter(resumed)).keys == epoch0[5]
    if explicit:
        resumed.set_epoch(0)
        assert [b.keys for b in resumed] == epoch0[5:]
        return
    with pytest.warns(UserWarning, match=r"iter\(loader\) starts epoch 1: the pass that resumed epoch 0 at batch 5 "
                                         r"\(load_state_dict\) was left after 1 batches.*call set_epoch\(0\)"):
        keys = [b.keys for b in resumed]
    assert keys != epoch0[5:] and len(keys) == len(epoch0)


def test_a_resumed_loop_broken_part_way_is_not_a_look(npy_shards):
    """Review s41: after a resumed loop broke part-way, the next pass of the epoch went back to the
    restored batch (it re-read the batches the loop had read); only a look (one batch) does."""
    index, _, _ = npy_shards
    resumed = make(index, 0)
    resumed.load_state_dict(state_five_batches_in(index, 0, explicit=True))
    resumed.set_epoch(0)
    for i, _ in enumerate(resumed):
        if i == 2:
            break
    fresh = make(index, 0)
    fresh.set_epoch(0)
    assert [b.keys for b in resumed] == [b.keys for b in fresh], "the epoch again from its start, as without a resume"
