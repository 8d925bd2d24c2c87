"""With an index, a lost sample keeps its place: whatever loses it (the decode, the size rule,
or the tar reader: a repeated key, a member over the limit, a shard cut short or missing),
that place is filled in its own batch and every later sample keeps its planned position.
Each loss is counted once, however many workers or ranks read past it."""
from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image

from loader_states import state_after, states_after_each
from shard_factory import good_members, write_custom
from streamaug.loader import StreamError, StreamLoader


def planned(i: int) -> str:
    return f"s_{i:05d}"


def shards_losing(kind: str, tmp: str, with_c: bool = False):
    """Shards a (s_00000..07) and b (s_00008..15), indexed as whole, with one kind of reader loss
    (``"none"``: none). ``"missing_shard"`` (or ``with_c``) lists a shard c of 4 between them;
    ``"missing_shard"`` then removes it."""
    os.makedirs(tmp, exist_ok=True)
    a, b = good_members(8), good_members(8, start=8)
    files, counts = {"a.tar": a, "b.tar": b}, {"a.tar": [4, 4], "b.tar": [4, 4]}
    if kind == "duplicate_key":
        a[4], a[5] = ("s_00000.npy", a[4][1]), ("s_00000.cls", a[5][1])      # s_00002 stored as s_00000
    elif kind == "member_too_large":
        a[5] = ("s_00002.cls", b"0" + b" " * 3000)                           # over max_member_bytes below
    elif kind == "short_shard":
        files["a.tar"] = a[:12]                         # complete, but s_00006 and s_00007 are not in it
    if kind == "missing_shard" or with_c:
        files = {"a.tar": a, "c.tar": good_members(4, start=100), "b.tar": b}
        counts = {"a.tar": [4, 4], "c.tar": [2, 2], "b.tar": [4, 4]}
    index = write_custom(tmp, files, counts)
    if kind == "missing_shard":
        os.remove(index.urls[1])
    return index


LOST_KEYS = {"duplicate_key": ["s_00002"], "member_too_large": ["s_00002"], "short_shard": ["s_00006", "s_00007"],
             "missing_shard": [f"s_{i:05d}" for i in range(100, 104)]}


# shuffle=0: dataset order (a worker reads its batches' runs, passing over the others');
# shuffle=1: shard order shuffled without a buffer (a worker reads one contiguous run)
LAYOUTS = pytest.mark.parametrize("shuffle", [0, 1], ids=["dataset-order", "contiguous"])


@LAYOUTS
@pytest.mark.parametrize("kind", sorted(LOST_KEYS))
@pytest.mark.parametrize("workers", [0, 2])
def test_reader_losses_keep_their_places(tmp_path, kind, workers, shuffle):
    """Row for row, the batches equal those of the same shards with nothing lost, except that each
    lost sample's row is padding."""
    def rows(index):
        with StreamLoader(index.urls, batch_size=4, num_workers=workers, shuffle=shuffle, on_error="skip", device="cpu",
                          index=index, max_member_bytes=2048) as loader:
            out = [(k, bool(p)) for b in loader for k, p in zip(b.keys, b.is_padding.tolist())]
            return out, dict(loader.stats.skipped)
    intact, _ = rows(shards_losing("none", str(tmp_path / "intact"), with_c=kind == "missing_shard"))
    got, skipped = rows(shards_losing(kind, str(tmp_path / "lossy")))
    lost = LOST_KEYS[kind]
    assert len(got) == len(intact)
    for (key, padding), (want, _) in zip(got, intact):
        assert padding if want in lost else (key, padding) == (want, False), (key, want)
    reason = "index_mismatch" if kind == "short_shard" else kind
    assert skipped == {reason: len(lost)}


def one_shard_losing_one(tmp: str, kind: str):
    members = good_members(20)
    if kind == "member_too_large":
        members[7] = ("s_00003.cls", b"1" + b" " * 3000)
    else:
        members[6], members[7] = ("s_00000.npy", members[6][1]), ("s_00000.cls", members[7][1])
    return write_custom(tmp, {"a.tar": members}, {"a.tar": [10, 10]})


@LAYOUTS
@pytest.mark.parametrize("kind", ["member_too_large", "duplicate_key"])
@pytest.mark.parametrize("workers,world_size", [(0, 1), (2, 1), (3, 1), (0, 2), (2, 3)])
def test_one_loss_is_counted_once_however_many_readers_pass_it(tmp_path, kind, workers, world_size, shuffle):
    """Before, every reader of a later part of the shard counted it again on its way there, and the
    shard's short count was counted once more as ``index_mismatch``."""
    index = one_shard_losing_one(str(tmp_path), kind)
    total: dict = {}
    for rank in range(world_size):
        with StreamLoader(index.urls, batch_size=2, num_workers=workers, shuffle=shuffle, on_error="skip",
                          device="cpu", index=index, max_member_bytes=2048, world_size=world_size,
                          rank=rank) as loader:
            list(loader)
            for reason, n in loader.stats.skipped.items():
                total[reason] = total.get(reason, 0) + n
    assert total == {kind: 1}


def png(side: int, broken: bool = False) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((side, side, 3), side * 10, np.uint8)).save(buf, format="PNG")
    data = buf.getvalue()
    return data[:33] + b"\x00" * 40 if broken else data     # signature and IHDR whole: only the decode fails


@pytest.mark.parametrize("workers", [0, 2])
def test_a_batch_with_no_good_row_before_any_size_is_known_pads_in_one_size(tmp_path, workers):
    """No image shape in the index and a worker whose first batch has no good row: the rows it
    borrows set the size (the most common among them), so they are never of mixed sizes."""
    a = []
    for i, side in enumerate([8, 6, 8, 8]):
        a += [(f"s_{i:05d}.png", png(side)), (f"s_{i:05d}.cls", b"0")]
    b = []
    for i in range(4, 8):
        b += [(f"s_{i:05d}.png", png(8, broken=True)), (f"s_{i:05d}.cls", b"1")]
    index = write_custom(str(tmp_path), {"a.tar": a, "b.tar": b}, {"a.tar": [4, 0], "b.tar": [0, 4]}, image_shape=None)

    def make():
        return StreamLoader(index.urls, batch_size=4, num_workers=workers, shuffle=0, on_error="skip",
                            device="cpu", index=index)
    with make() as loader:
        batches = sorted(loader, key=lambda b: b.batch_id)
    assert [tuple(b[0].shape) for b in batches] == [(4, 3, 8, 8)] * 2
    assert batches[1].is_padding.all() and "s_00001" not in batches[1].keys
    with make() as resumed:
        resumed.load_state_dict(state_after(make, 1))
        (rest,) = list(resumed)
    assert rest.keys == batches[1].keys and (rest[0] == batches[1][0]).all()


@pytest.mark.parametrize("workers", [0, 2])
def test_without_an_index_shape_every_worker_and_resume_checks_the_same_size(tmp_path, workers):
    """Samples 0-11 are 8x8, 12-23 are 6x6, and the index has no image shape. The dataset's first
    samples set the size for every worker and resume point (before, each worker adopted its
    own first batch's size, and so did a resume: 6x6 batches appeared, and skip counts moved)."""
    from shard_factory import npy_bytes

    def members(start, side):
        out = []
        for i in range(start, start + 12):
            out += [(f"s_{i:05d}.npy", npy_bytes(np.full((side, side, 3), i, np.uint8))), (f"s_{i:05d}.cls", b"0")]
        return out
    index = write_custom(str(tmp_path), {"a.tar": members(0, 8), "b.tar": members(12, 6)},
                         {"a.tar": [12, 0], "b.tar": [12, 0]}, num_classes=2, image_shape=None)

    def make():
        return StreamLoader(index.urls, batch_size=4, num_workers=workers, shuffle=0, on_error="skip",
                            device="cpu", index=index)
    with make() as loader:
        whole = [(b.keys, b[0].clone()) for b in loader]
        skipped = dict(loader.stats.skipped)
    assert skipped == {"image_size": 12} and {tuple(x.shape) for _, x in whole} == {(4, 3, 8, 8)}
    states = states_after_each(make, len(whole) - 1)
    for taken in range(len(whole)):
        with make() as resumed:
            resumed.load_state_dict(states[taken])
            rest = [(b.keys, b[0].clone()) for b in resumed]
            assert dict(resumed.stats.skipped) == skipped, taken
        assert [k for k, _ in rest] == [k for k, _ in whole[taken:]], taken
        assert all((x == y).all() for (_, x), (_, y) in zip(rest, whole[taken:])), taken


def first_member_too_large(tmp: str, at: int, n: int):
    """``n`` samples as webdataset's TarWriter writes them (``.png`` before ``.txt``); sample
    ``at``'s png, its first member, is over the ``max_member_bytes=150`` the tests use."""
    import webdataset as wds

    from streamaug.loader import build_index

    path = os.path.join(tmp, "a.tar")
    rng = np.random.default_rng(0)
    with wds.TarWriter(path) as sink:
        for i in range(n):
            pixels = rng.integers(0, 256, (8, 8, 3), np.uint8) if i == at else np.full((8, 8, 3), i, np.uint8)
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, format="PNG")
            sink.write({"__key__": f"s_{i:05d}", "png": buf.getvalue(), "txt": str(i % 2)})
    return build_index([path], progress=False, workers=1)


@pytest.mark.parametrize("at,counted", [(11, 1), (8, 0), (5, 1)], ids=["rank-1's-first", "dropped", "rank-0's"])
@pytest.mark.parametrize("workers", [0, 2])
def test_a_first_member_error_belongs_to_its_own_sample(tmp_path, at, counted, workers):
    """22 samples, two ranks, batch 4, ``drop_last``: rank 0 plans samples 0-7, rank 1 11-18. An
    error in a sample's first member was read while the sample before it was still open, and was
    taken for that sample's (red team: a loss at 11 counted by nobody, one at the dropped 8
    counted, and raised under ``"raise"``)."""
    index = first_member_too_large(str(tmp_path), at, 22)
    total, padding = {}, 0
    for rank in range(2):
        with StreamLoader(index.urls, batch_size=4, num_workers=workers, shuffle=0, on_error="skip", device="cpu",
                          index=index, max_member_bytes=150, world_size=2, rank=rank, drop_last=True) as loader:
            padding += sum(int(b.is_padding.sum()) for b in loader)
            for reason, n in loader.stats.skipped.items():
                total[reason] = total.get(reason, 0) + n
    assert total == ({"member_too_large": 1} if counted else {}) and padding == counted
    for rank in range(2):
        owner = (at < 8) == (rank == 0) and counted
        with StreamLoader(index.urls, batch_size=4, shuffle=0, device="cpu", index=index, max_member_bytes=150,
                          world_size=2, rank=rank, drop_last=True) as loader:
            if owner:
                with pytest.raises(Exception, match="max_member_bytes"):
                    list(loader)
            else:
                assert len(list(loader)) == 2


@pytest.mark.parametrize("workers", [0, 2])
def test_a_wrap_around_reread_counts_nothing(tmp_path, workers):
    """Three ranks over 10 samples: rank 2 re-reads samples 0 and 1 as padding. Sample 1 does not
    decode; summed over ranks it is counted once (the re-read counted it again)."""
    members = good_members(10)
    members[2] = ("s_00001.npy", b"not an npy")
    index = write_custom(str(tmp_path), {"a.tar": members}, {"a.tar": [5, 5]})
    total = {}
    for rank in range(3):
        with StreamLoader(index.urls, batch_size=2, num_workers=workers, shuffle=0, on_error="skip", device="cpu",
                          index=index, world_size=3, rank=rank) as loader:
            list(loader)
            for reason, n in loader.stats.skipped.items():
                total[reason] = total.get(reason, 0) + n
    assert total == {"format_mismatch": 1}


@pytest.mark.parametrize("index", [True, False], ids=["index", "no-index"])
def test_a_sample_with_two_refused_members_is_one_loss_and_an_ignored_member_none(tmp_path, index):
    """Sample 3's png and txt are both over the limit: one lost sample, counted once (it was
    counted per member). A ``__meta__.json`` and an extension-less member over the limit are
    fields of no sample: nothing is lost, so nothing is counted or raised (they were)."""
    members = good_members(8)
    members[6], members[7] = ("s_00003.npy", b"\x93NUMPY" + b" " * 3000), ("s_00003.cls", b"1" + b" " * 3000)
    members[8:8] = [("__meta__.json", b" " * 3000), ("junk", b" " * 3000)]
    built = write_custom(str(tmp_path), {"a.tar": members}, {"a.tar": [4, 4]})
    kw = dict(index=built) if index else dict(index=False, num_classes=2)
    with StreamLoader(built.urls, batch_size=4, shuffle=0, on_error="skip", device="cpu", max_member_bytes=2048,
                      **kw) as loader:
        rows = [(k, bool(p)) for b in loader for k, p in zip(b.keys, b.is_padding.tolist())]
    assert loader.stats.skipped == {"member_too_large": 1}
    real = [k for k, p in rows if not p]
    assert real == [planned(i) for i in range(8) if i != 3]
    assert len(rows) == (8 if index else 7)
    members[6], members[7] = good_members(8)[6], good_members(8)[7]
    os.makedirs(tmp_path / "clean")
    clean = write_custom(str(tmp_path / "clean"), {"a.tar": members}, {"a.tar": [4, 4]})
    kw = dict(index=clean) if index else dict(index=False, num_classes=2)
    with StreamLoader(clean.urls, batch_size=4, shuffle=0, device="cpu", max_member_bytes=2048, **kw) as loader:
        assert len([k for b in loader for k in b.keys]) == 8          # on_error="raise": nothing raised


@pytest.mark.parametrize("index", [True, False], ids=["index", "no-index"])
def test_a_cut_inside_the_next_samples_first_member_keeps_the_sample_before(tmp_path, index):
    """The shard is cut inside ``s_00005.npy``'s data, its first member: that header was read
    whole, so ``s_00004`` had ended and arrives (it was lost with the cut sample, red team)."""
    import tarfile

    members = good_members(8)                                   # .npy first, as in each sample
    path = tmp_path / "a.tar"
    built = write_custom(str(tmp_path), {"a.tar": members}, {"a.tar": [4, 4]})
    with tarfile.open(path) as tar:
        first5 = next(m for m in tar.getmembers() if m.name == "s_00005.npy")
    data = path.read_bytes()
    path.write_bytes(data[:first5.offset_data + 100])
    kw = dict(index=built) if index else dict(index=False, num_classes=2)
    with StreamLoader([str(path)], batch_size=4, shuffle=0, on_error="skip", device="cpu", **kw) as loader:
        real = [k for b in loader for k, p in zip(b.keys, b.is_padding.tolist()) if not p]
    assert real == [planned(i) for i in range(5)]
    assert loader.stats.skipped == {"truncated_shard": 3 if index else 1}


@LAYOUTS
@pytest.mark.parametrize("workers", [0, 2])
def test_a_cut_inside_a_sample_past_the_index_count_keeps_every_planned_sample(tmp_path, workers, shuffle):
    """Shard a holds its 8 indexed samples whole, then one more cut inside its data: the extra is
    one counted ``index_mismatch`` and every planned sample keeps its place (the shard's last one
    was dropped uncounted and every later one moved up a place, red team)."""
    import tarfile

    built = write_custom(str(tmp_path), {"a.tar": good_members(8) + good_members(1, start=900),
                                         "b.tar": good_members(8, start=8)}, {"a.tar": [4, 4], "b.tar": [4, 4]})
    path = tmp_path / "a.tar"
    with tarfile.open(path) as tar:
        extra = next(m for m in tar.getmembers() if m.name == "s_00900.npy")
    path.write_bytes(path.read_bytes()[:extra.offset_data + 20])
    with StreamLoader(built.urls, batch_size=2, shuffle=shuffle, num_workers=workers, index=built,
                      on_error="skip", device="cpu", persistent_workers=False) as loader:
        rows = [(k, p) for b in loader for k, p in zip(b.keys, b.is_padding.tolist())]
    if shuffle == 0:
        assert rows == [(planned(i), False) for i in range(16)]
    else:
        assert sorted(rows) == [(planned(i), False) for i in range(16)]
    assert loader.stats.skipped == {"index_mismatch": 1}
    with pytest.raises(StreamError, match="more samples than the index count 8 and is cut inside them") as info:
        list(StreamLoader(built.urls, batch_size=2, shuffle=0, index=built, device="cpu"))
    assert (info.value.shard, info.value.key) == (str(path), "s_00900.npy")     # the member the cut is in
