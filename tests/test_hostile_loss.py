"""Issue #14, items 4, 5, 7 and 8: no silent loss and no silently wrong data.

Shards are written by webdataset's TarWriter or Python's tarfile, then cut,
duplicated or mislabelled here.
"""
from __future__ import annotations

import gzip
import io
import tarfile

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from shard_factory import good_members, npy_bytes, write_custom, write_tar
from streamaug.loader import StreamError, StreamLoader

N = 16


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def stream(urls, **kw):
    kw.setdefault("batch_size", 4)
    kw.setdefault("index", False)
    if kw["index"] is False:
        kw.setdefault("num_classes", 2)
    return StreamLoader(urls, shuffle=0, device="cpu", **kw)


def keys_of(loader):
    return [k for b in loader for k in b.keys]


def wds_shard(path: str, n: int = N) -> list[tarfile.TarInfo]:
    """``n`` samples written by webdataset's TarWriter; returns the members as tarfile sees them."""
    with wds.TarWriter(path) as sink:
        for i in range(n):
            sink.write({"__key__": f"s_{i:05d}", "npy": np.full((8, 8, 3), i, np.uint8), "cls": i % 2})
    with tarfile.open(path) as tar:
        return tar.getmembers()


def expected(k: int) -> list[str]:
    return [f"s_{i:05d}" for i in range(k)]


# --- item 4: truncation without an index ---

def _cuts(members):
    first5, second5 = sorted((x for x in members if x.name.startswith("s_00005.")), key=lambda x: x.offset)
    end = members[-1].offset_data + ((members[-1].size + 511) // 512) * 512
    return {   # name: (byte offset to cut at, samples that must arrive whole)
        "at a sample boundary": (first5.offset, 4),          # s_00004 was still open: it is lost, not guessed
        "between members of a sample": (second5.offset, 5),
        "inside a member header": (second5.offset + 100, 5),
        "inside member data": (second5.offset_data + 1, 5),
        "only the end-of-archive marker missing": (end, N - 1),
    }


@pytest.mark.parametrize("cut", ["at a sample boundary", "between members of a sample", "inside a member header",
                                 "inside member data", "only the end-of-archive marker missing"])
def test_truncated_shard_without_index_is_an_error_or_a_counted_loss(tmp_path, cut):
    members = wds_shard("a.tar")
    offset, whole = _cuts(members)[cut]
    data = open("a.tar", "rb").read()
    open("a.tar", "wb").write(data[:offset])
    with pytest.raises(StreamError) as err:
        list(stream(["a.tar"]))
    assert err.value.reason == "truncated_shard" and err.value.shard == "a.tar"
    assert "corrupt or truncated" in str(err.value)
    loader = stream(["a.tar"], on_error="skip")
    assert keys_of(loader) == expected(whole), "complete samples arrive once, the cut one never"
    assert loader.stats.skipped == {"truncated_shard": 1}


def test_complete_shard_with_trailing_padding_is_fine(tmp_path):
    wds_shard("a.tar")
    loader = stream(["a.tar"], on_error="raise")
    assert keys_of(loader) == expected(N) and loader.stats.skipped == {}


def test_truncated_gzip_shard(tmp_path):
    with wds.TarWriter("a.tar.gz", compress=True) as sink:
        for i in range(N):
            sink.write({"__key__": f"s_{i:05d}", "npy": np.random.default_rng(i).integers(0, 255, (32, 32, 3),
                                                                                         dtype=np.uint8),
                        "cls": i % 2})
    data = open("a.tar.gz", "rb").read()
    open("a.tar.gz", "wb").write(data[:len(data) // 2])
    with pytest.raises(StreamError) as err:
        list(stream(["a.tar.gz"]))
    assert err.value.reason in ("truncated_shard", "corrupt_shard") and err.value.shard == "a.tar.gz"
    loader = stream(["a.tar.gz"], on_error="skip")
    keys = keys_of(loader)
    assert 0 < len(keys) < N and keys == expected(len(keys))
    assert sum(loader.stats.skipped.values()) == 1


@pytest.mark.parametrize("indexed", [False, True])
@pytest.mark.parametrize("workers", [0, 2])
def test_a_gzip_shard_failing_its_checksum_is_named_or_counted_as_kept(tmp_path, indexed, workers):
    """Fuzz s41: a .tar.gz whose CRC-32 fails was read as good for most sizes. Its samples are
    all read before the trailer is: "raise" names it; "skip" hands them on (nothing is lost, and
    they cannot be taken back) and counts them in stats.kept, as an index's wrong class counts are."""
    from streamaug.loader import build_index

    wds_shard("a.tar")
    good = gzip.compress(open("a.tar", "rb").read(), mtime=0)
    open("a.tar.gz", "wb").write(good)
    if indexed:
        build_index("a.tar.gz", progress=False)
    bad = bytearray(good)
    bad[-8] ^= 1
    open("a.tar.gz", "wb").write(bytes(bad))
    kw = {"index": "index.json"} if indexed else {}
    seen = []
    with pytest.raises(StreamError, match="gzip stream fails past the archive's end marker") as err:
        for batch in stream(["a.tar.gz"], num_workers=workers, **kw):
            seen += batch.keys
    assert err.value.reason == "gzip_check_failed" and err.value.shard.endswith("a.tar.gz")
    assert seen == expected(N), "every batch comes first (review s41: with an index the last was held back)"
    loader = stream(["a.tar.gz"], num_workers=workers, on_error="skip", **kw)
    assert sorted(keys_of(loader)) == expected(N)
    assert loader.stats.skipped == {} and loader.stats.kept == {"gzip_check_failed": N}
    with pytest.raises(StreamError, match="gzip stream fails"):
        build_index("a.tar.gz", out="again.json", progress=False, on_error="skip")    # an index never lists it


def _gz_failing_check(name: str, members) -> None:
    write_tar("plain.tar", members)
    bad = bytearray(gzip.compress(open("plain.tar", "rb").read(), mtime=0))
    bad[-8] ^= 1
    open(name, "wb").write(bytes(bad))


@pytest.mark.parametrize("held, indexed, skipped", [
    (12, 16, {"index_mismatch": 4}),          # the index says more: those are lost, the rest kept
    (16, 12, {"index_mismatch": 4}),          # the shard holds more: extras passed over, not "cut inside them"
    (16, 16, {}),
])
def test_a_gzip_check_failing_after_an_index_mismatch_counts_both(tmp_path, held, indexed, skipped):
    """Review s41: the kept count hid an index that said more (4 samples padded, counted nowhere),
    and extras before the failed check were "cut inside them" and counted one too many."""
    index = write_custom(str(tmp_path), {"a.tar.gz": good_members(indexed)}, {"a.tar.gz": [(indexed + 1) // 2,
                                                                                          indexed // 2]})
    _gz_failing_check("a.tar.gz", good_members(held))                # written over the indexed one
    loader = stream(["a.tar.gz"], index=index, on_error="skip", batch_size=4)
    keys = keys_of(loader)
    assert set(keys) == set(expected(min(held, indexed))) and len(keys) == indexed
    assert loader.stats.skipped == skipped and loader.stats.kept == {"gzip_check_failed": min(held, indexed)}


@pytest.mark.parametrize("indexed", [False, True])
def test_a_gzip_check_failing_after_a_refused_member_keeps_only_the_samples_handed_on(tmp_path, indexed):
    """Review s41: with an index the kept count was the index's, the lost place included (16 + 1
    for 16 samples)."""
    from streamaug.loader import build_index

    members = good_members(16)
    write_tar("plain.tar", members)
    open("a.tar.gz", "wb").write(gzip.compress(open("plain.tar", "rb").read(), mtime=0))
    index = build_index("a.tar.gz", progress=False) if indexed else None
    members[2 * 5] = ("s_00005.npy", bytes(4000))                 # over max_member_bytes below
    _gz_failing_check("a.tar.gz", members)
    loader = stream(["a.tar.gz"], on_error="skip", max_member_bytes=3000, **({"index": index} if index else {}))
    assert set(keys_of(loader)) == set(expected(16)) - {"s_00005"}
    assert loader.stats.skipped == {"member_too_large": 1} and loader.stats.kept == {"gzip_check_failed": 15}


def test_truncated_shard_in_a_list_loses_only_its_tail(tmp_path):
    wds_shard("a.tar")
    members = wds_shard("b.tar")
    data = open("b.tar", "rb").read()
    open("b.tar", "wb").write(data[:_cuts(members)["inside member data"][0]])
    loader = stream(["a.tar", "b.tar"], on_error="skip", num_workers=2)
    keys = keys_of(loader)
    assert sorted(keys) == sorted(expected(N) + expected(5)) and len(keys) == N + 5
    assert loader.stats.skipped == {"truncated_shard": 1}


@pytest.mark.parametrize("gone", ["removed", "a folder now"])
@pytest.mark.parametrize("workers", [0, 2])
def test_a_shard_gone_before_an_unindexed_pass_is_counted_once(tmp_path, gone, workers):
    """Fuzz s41: without an index a shard's size is unknown, and a shard removed (or made a
    folder) after the loader was built was counted as 2**62 skipped samples."""
    import os

    wds_shard("a.tar")
    wds_shard("b.tar")
    loader = stream(["a.tar", "b.tar"], on_error="skip", num_workers=workers)
    os.remove("b.tar")
    if gone == "a folder now":
        os.mkdir("b.tar")
    assert sorted(keys_of(loader)) == sorted(expected(N))
    assert loader.stats.skipped == {"missing_shard" if gone == "removed" else "unreadable_shard": 1}


# --- item 5: the index's per-class counts ---

@pytest.mark.parametrize("workers", [0, 2])
def test_wrong_class_counts_with_right_totals_are_caught(tmp_path, workers):
    # labels alternate 0/1: the shards hold [3, 3] each; the index claims [4, 2] for b.tar
    index = write_custom(".", {"a.tar": good_members(6), "b.tar": good_members(6, 6)},
                         {"a.tar": [3, 3], "b.tar": [4, 2]})
    with pytest.raises(StreamError) as err:      # (a StreamError crossing workers is issue #14 item 9)
        list(stream(index.urls, index=index, batch_size=2))
    assert err.value.reason == "index_mismatch" and err.value.shard.endswith("b.tar")
    assert "per-class counts [4, 2] differ from the shard's [3, 3]" in str(err.value)
    loader = stream(index.urls, index=index, batch_size=2, num_workers=workers, on_error="skip")
    assert len(keys_of(loader)) == 12, "the samples themselves are all delivered"
    # (newcomer 2, s32: counted as skipped, although every sample was handed on)
    assert loader.stats.skipped == {} and loader.stats.kept == {"index_mismatch": 1}
    assert "per-class counts [4, 2] differ" in loader.stats.examples["index_mismatch"]


def test_right_class_counts_pass_when_a_shard_is_split_between_workers(tmp_path):
    index = write_custom(".", {"a.tar": good_members(12)}, {"a.tar": [6, 6]})
    loader = stream(index.urls, index=index, batch_size=2, num_workers=2)
    assert sorted(keys_of(loader)) == expected(12) and loader.stats.skipped == {}


# --- item 7: duplicate keys ---

def test_repeated_member_in_one_sample_loses_only_the_copy(tmp_path):
    members = good_members(3)
    write_tar("a.tar", members[:2] + [("s_00000.cls", b"1")] + members[2:])
    with pytest.raises(StreamError) as err:
        list(stream(["a.tar"]))
    assert err.value.reason == "duplicate_key" and err.value.key == "s_00000"
    assert err.value.value == "s_00000.cls" and err.value.shard == "a.tar"
    loader = stream(["a.tar"], on_error="skip")
    batches = list(loader)
    assert [k for b in batches for k in b.keys] == expected(3), "the rest of the shard is kept"
    assert batches[0][1][0].item() == 0, "the first copy is kept"
    assert loader.stats.skipped == {"duplicate_key": 1}


def test_key_repeated_later_in_the_shard_is_dropped_and_named(tmp_path):
    members = good_members(4)
    write_tar("a.tar", members[:4] + members[:2] + members[4:])      # s_00000 again after s_00001
    with pytest.raises(StreamError) as err:
        list(stream(["a.tar"]))
    assert err.value.reason == "duplicate_key" and err.value.key == "s_00000" and "earlier" in str(err.value)
    loader = stream(["a.tar"], on_error="skip")
    assert keys_of(loader) == expected(4) and loader.stats.skipped == {"duplicate_key": 1}


def test_same_key_in_two_shards_is_not_a_duplicate(tmp_path):
    write_tar("a.tar", good_members(2))
    write_tar("b.tar", good_members(2))
    assert keys_of(stream(["a.tar", "b.tar"])) == expected(2) * 2


# --- item 8: mixed sizes, one rule on every path ---

def png(side: int, value: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (side, side), (value, value, value)).save(buf, format="PNG")
    return buf.getvalue()


def odd_first(ext: str) -> list[tuple[str, bytes]]:
    encode = (lambda side: npy_bytes(np.zeros((side, side, 3), np.uint8))) if ext == "npy" else png
    out = [("odd.%s" % ext, encode(5)), ("odd.cls", b"0")]
    for i in range(7):
        out += [(f"s_{i:05d}.{ext}", encode(8)), (f"s_{i:05d}.cls", str(i % 2).encode())]
    return out


DECODES = [("npy", "cpu"), ("png", "cpu"), ("png", "dali")]


@pytest.mark.parametrize("ext,decode", DECODES)
def test_odd_first_image_is_the_error_not_the_good_ones(tmp_path, ext, decode):
    if decode == "dali":
        pytest.importorskip("nvidia.dali")
    write_tar("a.tar", odd_first(ext))
    with pytest.raises(StreamError) as err:
        list(stream(["a.tar"], decode=decode))
    assert err.value.reason == "image_size" and err.value.key == "odd" and err.value.value == (5, 5, 3)
    loader = stream(["a.tar"], decode=decode, on_error="skip")
    batches = list(loader)
    assert [k for b in batches for k in b.keys] == expected(7)
    assert {tuple(b[0].shape[1:]) for b in batches} == {(3, 8, 8)}
    assert loader.stats.skipped == {"image_size": 1}


@pytest.mark.parametrize("ext,decode", DECODES)
def test_odd_image_later_in_the_stream(tmp_path, ext, decode):
    if decode == "dali":
        pytest.importorskip("nvidia.dali")
    members = odd_first(ext)
    write_tar("a.tar", members[2:8] + members[:2] + members[8:])
    loader = stream(["a.tar"], decode=decode, on_error="skip", batch_size=2)
    batches = list(loader)
    assert [k for b in batches for k in b.keys] == expected(7)
    assert {tuple(b[0].shape[1:]) for b in batches} == {(3, 8, 8)} and loader.stats.skipped == {"image_size": 1}


def test_index_shape_wins_over_the_first_batch(tmp_path):
    small = npy_bytes(np.zeros((6, 6, 3), np.uint8))
    members = [(n, small) if n.endswith(".npy") and int(n[2:7]) < 3 else (n, d) for n, d in good_members(6)]
    index = write_custom(".", {"a.tar": members}, {"a.tar": [3, 3]}, image_shape=(8, 8, 3))
    loader = stream(index.urls, index=index, on_error="skip")
    batches = list(loader)
    assert {tuple(b[0].shape[1:]) for b in batches} == {(3, 8, 8)}, "most of the first batch is 6x6, yet 8x8 rules"
    assert loader.stats.skipped == {"image_size": 3}


@pytest.mark.parametrize("position", ["first", "middle", "last"])
def test_shard_listed_with_count_zero_is_read_and_checked(tmp_path, position):
    shards = {"a.tar": good_members(4), "b.tar": good_members(4, 4)}
    counts = {"a.tar": [2, 2], "b.tar": [2, 2]}
    names = {"first": ["z.tar", "a.tar", "b.tar"], "middle": ["a.tar", "z.tar", "b.tar"],
             "last": ["a.tar", "b.tar", "z.tar"]}[position]
    shards["z.tar"], counts["z.tar"] = good_members(3, 8), [0, 0]      # holds 3, listed as 0
    index = write_custom(".", {n: shards[n] for n in names}, {n: counts[n] for n in names})
    with pytest.raises(StreamError) as err:
        list(stream(index.urls, index=index))
    assert err.value.reason == "index_mismatch" and err.value.shard.endswith("z.tar") and err.value.value == 3
    loader = stream(index.urls, index=index, on_error="skip")
    assert sorted(keys_of(loader)) == expected(8) and loader.stats.skipped == {"index_mismatch": 1}


def test_truly_empty_shard_listed_with_count_zero_is_fine(tmp_path):
    index = write_custom(".", {"a.tar": good_members(4), "z.tar": []}, {"a.tar": [2, 2], "z.tar": [0, 0]})
    loader = stream(index.urls, index=index)
    assert keys_of(loader) == expected(4) and loader.stats.skipped == {}


@pytest.mark.parametrize("long_name", [False, True], ids=["ustar-reader", "tarfile"])
def test_a_second_tar_joined_on_with_cat_is_an_error_not_a_silent_loss(long_name):
    """``cat a.tar b.tar`` (or ``pipe:cat dir/*.tar``) ends with the first archive's end marker:
    tarfile and webdataset stop there, and the second archive's samples were lost with no word
    (red team). Now what follows the marker must be zeros: otherwise a ``trailing_data`` error
    naming the shard, after every sample of the first archive; under skip, counted. With a GNU
    long name (GNU ``L`` header) the first archive is read by tarfile, past the fast reader."""
    from streamaug.loader import build_index

    for n in (0, 1):
        members = []
        for i in range(5):
            key = ("x" * 120 if long_name and i == 2 else "") + f"s{n}_{i}"
            members += [(f"{key}.npy", npy_bytes(np.full((4, 4, 3), i, np.uint8))), (f"{key}.cls", str(i % 2).encode())]
        with tarfile.open(f"p{n}.tar", "w", format=tarfile.GNU_FORMAT) as tar:
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    with open("merged.tar", "wb") as f:
        f.write(open("p0.tar", "rb").read() + open("p1.tar", "rb").read())
    with open("merged_gz.tar", "wb") as f:                # a .tar.gz joined on to a plain tar (red team)
        f.write(open("p0.tar", "rb").read() + gzip.compress(open("p1.tar", "rb").read()))
    for url in ("merged.tar", "pipe:cat p0.tar p1.tar", "merged_gz.tar"):
        with pytest.raises(StreamError, match="a second archive .* follows the end-of-archive marker") as info:
            list(stream(url, batch_size=1))
        assert (info.value.reason, info.value.shard) == ("trailing_data", url)
        loader = stream(url, on_error="skip")
        keys = [k for b in loader for k in b.keys]
        assert len(keys) == 5 and loader.stats.skipped == {"trailing_data": 1}, url
    with pytest.raises(StreamError, match="tar --concatenate"):
        build_index("merged.tar", progress=False)
    open("q0.tar", "wb").write(open("p0.tar", "rb").read())
    index = build_index("q0.tar", out="q0.json", progress=False)      # indexed, then joined on (s41: it was
    open("q0.tar", "ab").write(open("p1.tar", "rb").read())             # an index mismatch "cut inside extras")
    with pytest.raises(StreamError) as info:
        list(stream("q0.tar", index=index))
    assert info.value.reason == "trailing_data"
    loader = stream("q0.tar", index=index, on_error="skip")
    assert len(keys_of(loader)) == 5 and loader.stats.skipped == {"trailing_data": 1}
    assert len([k for b in stream("p0.tar") for k in b.keys]) == 5       # zero padding after the marker is fine
    with open("junk.tar", "wb") as f:           # bytes that are no tar header: passed over, as tar passes them
        f.write(open("p0.tar", "rb").read() + b"not a header" + bytes(500) + b"x" * 3000)
    assert len([k for b in stream("junk.tar") for k in b.keys]) == 5


# --- links and unused fields (red team s33) ---

@pytest.mark.parametrize("fast", [True, False], ids=["ustar", "tarfile"])
def test_a_linked_member_is_a_counted_loss_not_a_silent_one(tmp_path, fast):
    """Red team s33: GNU tar stores a second name of a hard-linked file as a link member, with no
    data; the reader passed it over as webdataset does, so the sample vanished uncounted (or, with
    only its image linked, was called imageless). Written by GNU tar itself; symlinks by tarfile."""
    import os
    import shutil
    import subprocess

    from streamaug.loader import build_index
    from streamaug.loader.decode_limits import DecodeLimits
    from streamaug.loader.tar_reader import open_shard
    from streamaug.loader.tar_members import shard_samples

    src = tmp_path / "src"
    src.mkdir()
    for name, data in good_members(4):
        (src / name).write_bytes(data)
    os.remove(src / "s_00001.npy")
    os.remove(src / "s_00001.cls")
    os.link(src / "s_00000.npy", src / "s_00001.npy")             # s_00001: a duplicate of s_00000,
    os.link(src / "s_00000.cls", src / "s_00001.cls")             # hard-linked, as dedup tools leave it
    if shutil.which("tar"):
        subprocess.run(["tar", "--sort=name", "-cf", "gnu.tar", "-C", str(src), "."], check=True)
    with tarfile.open("sym.tar", "w") as tar:
        for name, data in good_members(3):
            info = tarfile.TarInfo(name)
            if name == "s_00002.npy":
                info.type, info.linkname = tarfile.SYMTYPE, "s_00000.npy"
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    for url, lost, target in [("gnu.tar", "./s_00001", "./s_00000.cls"), ("sym.tar", "s_00002", "s_00000.npy")]:
        if url == "gnu.tar" and not shutil.which("tar"):
            continue
        with pytest.raises(StreamError, match="link") as err:
            list(stream([url]))
        assert err.value.reason == "link_member" and err.value.shard == url and err.value.value == target
        assert "--hard-dereference" in str(err.value)
        loader = stream([url], on_error="skip")
        keys = keys_of(loader)
        assert lost.lstrip("./") not in [k.lstrip("./") for k in keys] and len(keys) == (3 if url == "gnu.tar" else 2)
        assert loader.stats.skipped == {"link_member": 1}
        got = [s["__key__"] for s in shard_samples(url, open_shard(url, 60), DecodeLimits(), lambda e: None, fast=fast)]
        assert len(got) == len(keys), "both tar readers pass it over the same way"
        with pytest.raises(StreamError, match="link"):
            build_index(url, out=str(tmp_path / f"{url}.json"), progress=False)


def test_a_link_no_one_reads_loses_nothing(tmp_path):
    """Review s33: a hard-linked side field (``.meta``), which the loader never reads, spoiled its sample."""
    with tarfile.open("a.tar", "w") as tar:
        for name, data in good_members(3) + [("s_00001.meta", None)]:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.linkname = tarfile.LNKTYPE, "s_00000.cls"
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    loader = stream(["a.tar"])
    assert keys_of(loader) == expected(3) and not loader.stats.skipped


def test_fields_no_one_reads_are_named_but_not_held(tmp_path):
    """Red team s33: every field of a sample was held until the sample ended, so a 3.5 MB .tar.gz
    of many large unused fields took 1 GB. Their data is now dropped as each arrives."""
    from streamaug.loader.decode_limits import DecodeLimits
    from streamaug.loader.tar_members import shard_samples
    from streamaug.loader.tar_reader import open_shard

    with wds.TarWriter("a.tar") as sink:
        for i in range(3):
            sink.write({"__key__": f"s_{i:05d}", "npy": np.full((8, 8, 3), i, np.uint8), "cls": i % 2,
                        "mask.png": b"\0" * 100_000, "caption.txt": b"a cat", "meta.json": b"{}", "json": b"{}"})
    (sample, *_) = shard_samples("a.tar", open_shard("a.tar", 60), DecodeLimits(), None)
    assert sample["mask.png"] is None and sample["caption.txt"] is None and sample["meta.json"] is None
    assert sample["cls"] == b"0" and sample["json"] == b"{}" and sample["npy"][:6] == b"\x93NUMPY"
    assert keys_of(stream(["a.tar"])) == expected(3)
    small = stream(["a.tar"], max_member_bytes=50_000, on_error="skip")    # mask.png is over it, and unread:
    assert keys_of(small) == expected(3) and not small.stats.skipped        # nothing lost, nothing counted
    with wds.TarWriter("b.tar") as sink:
        sink.write({"__key__": "s_00000", "mask.png": b"\0" * 100, "cls": 0})
    with pytest.raises(StreamError, match="no image field") as err:
        list(stream(["b.tar"]))
    assert err.value.value == ["cls", "mask.png"], "a field not held is still named"
