"""``decode="dali"``: decoding one batch ahead against decoding in place, side by side.

    python -m streamaug.benchmarks.decode_overlap --json benchmarks/results/decode_overlap_cpu.json

The loader starts DALI on batch ``i+1`` before it hands batch ``i`` to the caller
(:func:`streamaug.loader.device_decode.decode_ahead`), so the decode runs on DALI's
threads while the training step runs. This measures what that buys. The batches are the
bench's 224×224 JPEGs, read from their shards; one :class:`DaliImageDecoder` decodes them
on this machine's device (DALI's CPU decoder here, nvJPEG on a GPU). Two ways, alternating,
both through ``decode_ahead``:

* ``in place`` (``decoder.ahead = False``, the loader's choice on the CPU): decode the batch,
  then run the step;
* ``ahead`` (``decoder.ahead = True``, the loader's choice on CUDA).

The step stands in for training. ``wait``: the host sleeps for as long as one decode takes
(a GPU-bound step, where the host waits for the device). ``compute``: the host runs torch
matrix products for about as long (a CPU-bound step, which competes with DALI's threads
for the cores). Reports ms per batch for each and the ratio in place / ahead; 2× is the
most overlap can give when the step takes as long as the decode.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

from streamaug.benchmarks.cli_arguments import at_least_one


def encoded_batches(index, batch: int) -> list[tuple[list[bytes], list[str], list[str], list[int]]]:
    """``(encoded, keys, urls, labels)`` per batch, read from the shards as the workers read them."""
    from streamaug.loader.decode_limits import DecodeLimits
    from streamaug.loader.shard_stream import open_shard
    from streamaug.loader.tar_members import shard_samples

    def fail(err):
        raise err
    rows = []
    for url in index.urls:
        stream = open_shard(url, 60)
        try:
            rows += [(s["jpg"], s["__key__"], url, int(s["cls"])) for s in shard_samples(url, stream, DecodeLimits(), fail)]
        finally:
            stream.close()
    chunks = [rows[i:i + batch] for i in range(0, len(rows) - batch + 1, batch)]
    return [tuple(map(list, zip(*c))) for c in chunks]


def in_flight(chunks):
    from streamaug.core.flight import BatchInFlight

    for i, (encoded, keys, urls, labels) in enumerate(chunks):
        n = len(keys)
        b = BatchInFlight(torch.empty(n, 3, 0, 0, dtype=torch.uint8), torch.tensor(labels), keys, urls,
                          torch.zeros(n, dtype=torch.bool), i)
        b.encoded = encoded
        yield b


def compute_step(seconds: float):
    """A torch CPU step of about ``seconds``: matrix products, calibrated here."""
    a = torch.randn(256, 256)
    t0, k = time.perf_counter(), 0
    while time.perf_counter() - t0 < 0.2:
        a @ a
        k += 1
    reps = max(1, round(k * seconds / (time.perf_counter() - t0)))

    def step():
        for _ in range(reps):
            a @ a
    return step


def one_pass(chunks, decoder, step, ahead: bool) -> float:
    from streamaug.loader.device_decode import decode_ahead

    decoder.ahead = ahead
    t0 = time.perf_counter()
    for _ in decode_ahead(in_flight(chunks), decoder, "raise"):
        step()
    return (time.perf_counter() - t0) / len(chunks)


def measure(chunks, device: torch.device, repeats: int) -> dict:
    from streamaug.loader.device_decode import DaliImageDecoder

    decoder = DaliImageDecoder(device, 3)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    one_pass(chunks, decoder, lambda: None, False)                       # warm-up: build the pipeline
    decode = min(one_pass(chunks, decoder, sync, False) for _ in range(repeats))
    steps = {"wait": lambda: time.sleep(decode), "compute": compute_step(decode)}
    out = {"batches": len(chunks), "batch": len(chunks[0][0]), "decoder_threads": decoder.threads,
           "decode_alone_ms": decode * 1e3, "steps": {}}
    for name, step in steps.items():
        best = {False: float("inf"), True: float("inf")}
        for _ in range(repeats):
            for ahead in (False, True):
                best[ahead] = min(best[ahead], one_pass(chunks, decoder, step, ahead))
        out["steps"][name] = {"in_place_ms_per_batch": best[False] * 1e3, "ahead_ms_per_batch": best[True] * 1e3,
                              "ratio": best[False] / best[True]}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=at_least_one, default=3)
    p.add_argument("--batch", type=at_least_one, default=128)
    p.add_argument("--quick", action="store_true", help="64 images in batches of 16: checks, measures nothing")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "streamaug-bench-data"))
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    from streamaug.benchmarks.bench_data import make_bench_shards

    n, batch = (64, 16) if args.quick else (1024, args.batch)
    chunks = encoded_batches(make_bench_shards(args.data, "jpg224", 64 if args.quick else 2000), batch)
    chunks = chunks[:n // batch]
    r = measure(chunks, torch.device(args.device), args.repeats)
    print(f"decode alone: {r['decode_alone_ms']:.1f} ms per batch of {r['batch']} ({r['decoder_threads']} DALI threads)")
    print("| step | in place ms/batch | ahead ms/batch | in place / ahead |")
    print("| --- | ---: | ---: | ---: |")
    for name, s in r["steps"].items():
        print(f"| {name} | {s['in_place_ms_per_batch']:.1f} | {s['ahead_ms_per_batch']:.1f} | {s['ratio']:.2f}× |")
    if args.json:
        from streamaug.benchmarks.timing import write_result

        write_result(args.json, {"quick": args.quick, "repeats": args.repeats, "device": args.device,
                                 "best_of": "fastest pass of each", **r})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
