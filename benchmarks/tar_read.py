"""Tar reading alone: streamaug's ustar reader against ``tarfile``, side by side.

    python -m streamaug.benchmarks.tar_read --json benchmarks/results/tar_read_cpu.json

Reads every member of the bench's shards with :func:`streamaug.loader.tar_members.tar_members`
as the loader does (sizes checked, end marker required), once with ``fast=True`` (plain
ustar and pax headers parsed by :class:`~streamaug.loader.ustar_reader.UstarReader`) and
once with ``fast=False`` (``tarfile`` throughout), alternating, on one thread. The shards:
the bench's 20,000 32×32 ``.npy`` and 2,000 224×224 ``.jpg`` (written by streamaug, plain
ustar), and the same 32×32 samples written by webdataset's own ``ShardWriter``, which puts
a pax header before every member. Reports samples/s for each and the ratio.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

from streamaug.benchmarks.cli_arguments import at_least_one


def webdataset_copy(index, out: str) -> list[str]:
    """The same samples, written by ``webdataset.ShardWriter`` (a pax header per member)."""
    import webdataset as wds

    from streamaug.loader.decode_limits import DecodeLimits
    from streamaug.loader.shard_stream import open_shard
    from streamaug.loader.tar_members import shard_samples

    os.makedirs(out, exist_ok=True)
    done = os.path.join(out, "done")
    if not os.path.exists(done):
        with wds.ShardWriter(os.path.join(out, "wds-%06d.tar"), maxcount=500, verbose=0) as sink:
            for url in index.urls:
                for sample in shard_samples(url, open_shard(url, 60), DecodeLimits(), _raise):
                    sink.write({k: v for k, v in sample.items() if k != "__url__"})
        open(done, "w").close()
    return sorted(os.path.join(out, f) for f in os.listdir(out) if f.endswith(".tar"))


def _raise(err):
    raise err


def read_all(urls: list[str], fast: bool) -> int:
    from streamaug.loader.decode_limits import DecodeLimits
    from streamaug.loader.shard_stream import open_shard
    from streamaug.loader.tar_members import shard_samples

    n = 0
    for url in urls:
        stream = open_shard(url, 60)
        try:
            n += sum(1 for _ in shard_samples(url, stream, DecodeLimits(), _raise, fast=fast))
        finally:
            stream.close()
    return n


def compare(urls: list[str], repeats: int) -> dict:
    best = {True: float("inf"), False: float("inf")}
    samples = read_all(urls, True)                      # warm-up (page cache, imports)
    for _ in range(repeats):
        for fast in (True, False):
            start = time.perf_counter()
            n = read_all(urls, fast)
            best[fast] = min(best[fast], time.perf_counter() - start)
            if n != samples:
                raise RuntimeError(f"fast={fast} read {n} samples, {samples} expected")
    return {"samples": samples, "ustar_reader_samples_per_s": samples / best[True],
            "tarfile_samples_per_s": samples / best[False], "ratio": best[False] / best[True]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=at_least_one, default=5)
    p.add_argument("--quick", action="store_true", help="the quick bench's 512 and 64 samples: checks, measures nothing")
    p.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "streamaug-bench-data"))
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    from streamaug.benchmarks.bench_data import make_bench_shards

    n32, n224 = (512, 64) if args.quick else (20000, 2000)
    npy32 = make_bench_shards(args.data, "npy32", n32)
    jpg224 = make_bench_shards(args.data, "jpg224", n224)
    sets = {"npy32 (streamaug, ustar)": npy32.urls,
            "npy32 (webdataset ShardWriter, pax per member)": webdataset_copy(npy32, os.path.join(args.data,
                                                                                               f"npy32-{n32}-wds")),
            "jpg224 (streamaug, ustar)": jpg224.urls}
    rows = {}
    print("| shards | samples | ustar reader samples/s | tarfile samples/s | ratio |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, urls in sets.items():
        r = rows[name] = compare(urls, args.repeats)
        print(f"| {name} | {r['samples']:,} | {r['ustar_reader_samples_per_s']:,.0f} | "
              f"{r['tarfile_samples_per_s']:,.0f} | {r['ratio']:.2f}× |")
    if args.json:
        from streamaug.benchmarks.timing import write_result

        write_result(args.json, {"quick": args.quick, "repeats": args.repeats, "best_of": "fastest pass of each",
                                 "results": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
