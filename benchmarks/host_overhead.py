"""The host's fixed cost per batch of the main-process stages, where pixels cost nothing.

    python -m streamaug.benchmarks.host_overhead --json benchmarks/results/host_overhead_cpu.json

On a GPU the stages only *launch* kernels, so the host's time per batch, not the pixel
work, bounds the feed when images are small: H100 run 2 fed 32² batches of 256 at 6.6 ms
each against DALI's 4.5 ms (``benchmarks/results/gpu/``). This measures that host time on
the CPU, with batches of ``--batch`` 3×8×8 uint8 images, whose pixel work is a few µs per op,
so what is left is Python, torch's dispatcher and the per-row parameter and matrix work.

For each stage (the bench's ``Compose`` on the Kornia backend, the Compose of every
geometric op, and the output format ``float32`` + normalize), it reports:

* **ATen ops per batch**, counted with ``torch.profiler`` (exact, and independent of the
  machine's load), and those on image-sized tensors;
* **ms per batch**: the fastest of ``--repeats`` timed runs of ``--calls`` calls, on one
  intra-op thread (as the loader runs its main-process stages on a busy machine).

It also reports the main process's CPU time to *receive* a batch from two reading workers
(``StreamLoader(num_workers=2)`` with the stages in the workers, 3×16×16 images): unpickling,
the shared memory of the images, counting and handing it on.

The ATen count leaves out numpy work: where work moved from torch to numpy, the ms column,
not the count, says what it saved.
"""
from __future__ import annotations

import argparse
import time

import torch

from streamaug.benchmarks.cli_arguments import at_least_one


def stages():
    from streamaug.loader.output_format import OutputFormat
    from streamaug.ops import Compose, Flip, GaussianNoise, RandomResizedCrop, Rotate, Shear, Translate

    bench = Compose([Flip(p=0.5), Rotate(30), Shear(x=15, y=15), GaussianNoise(0.05)], seed=0)
    every = Compose([Flip(p=0.5), Rotate(30), Shear(x=15, y=15), Translate(0.1),
                     RandomResizedCrop((0.5, 1.0))], seed=0)
    fmt = OutputFormat(torch.float32, ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), False)
    return {
        "bench Compose (flip, rotate, shear, noise)": lambda x: bench(x),
        "geometric Compose (flip, rotate, shear, translate, resized crop)": lambda x: every(x),
        "output format (float32, normalize)": lambda x: fmt(x),
    }


def aten_ops(fn, x, image_numel: int) -> tuple[int, int]:
    """ATen ops one call runs (nested ones included), and how many of them had an image-sized input."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):                    # past first-call set-up
        fn(x)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        fn(x)
    total = big = 0
    for e in prof.events():
        if not e.name.startswith("aten::"):
            continue
        total += 1
        sizes = [s for s in (e.input_shapes or []) if isinstance(s, list) and s]
        big += any(torch.Size(s).numel() >= image_numel for s in sizes)
    return total, big


def ms_per_call(fn, x, calls: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn(x)
        best = min(best, (time.perf_counter() - t0) / calls)
    return best * 1e3


def receive_ms(batch: int, repeats: int, workers: int = 2) -> dict:
    """Main-process CPU ms per batch taken from ``workers`` reading workers that also run the
    stages (so the main process only receives, counts and hands on): the fastest of
    ``repeats`` passes over 16 batches of 3×16×16 npy images (196 KiB a batch of 256, so the
    images travel through shared memory, as real ones do; the small tensors in the pickle)."""
    import tempfile

    import numpy as np

    from streamaug.loader import StreamLoader, write_shards
    from streamaug.ops import Compose, Flip, Rotate

    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        data = (rng.integers(0, 256, (16 * batch, 16, 16, 3), np.uint8), rng.integers(0, 10, 16 * batch))
        index = write_shards(data, tmp, maxcount=4 * batch, progress=False)
        loader = StreamLoader(index.urls, batch_size=batch, num_workers=workers, seed=0, device="cpu", index=index,
                              augment=Compose([Flip(), Rotate(10)]), stages_in_workers=True)
        with loader:
            best = float("inf")
            for _ in range(repeats + 1):                   # the first pass starts the workers
                c0, n = time.process_time(), 0
                for _ in loader:
                    n += 1
                best = min(best, (time.process_time() - c0) / n)
        return {"main_process_cpu_ms_per_batch": best * 1e3, "workers": workers, "batches": n}


def measure(batch: int, calls: int, repeats: int) -> dict:
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x = torch.randint(0, 256, (batch, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        rows = {}
        for name, fn in stages().items():
            total, big = aten_ops(fn, x, x.numel())
            rows[name] = {"aten_ops": total, "aten_ops_on_images": big, "ms_per_batch": ms_per_call(fn, x, calls, repeats)}
        rows["receive"] = receive_ms(batch, repeats)
        return rows
    finally:
        torch.set_num_threads(saved)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=at_least_one, default=256)
    p.add_argument("--calls", type=at_least_one, default=50)
    p.add_argument("--repeats", type=at_least_one, default=5)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    rows = measure(args.batch, args.calls, args.repeats)
    print(f"batch {args.batch} of 3×8×8 uint8, CPU, 1 intra-op thread; fastest of {args.repeats} × {args.calls} calls")
    print("| stage | ATen ops | on images | ms per batch |")
    print("| --- | ---: | ---: | ---: |")
    receive = rows.pop("receive")
    for name, r in rows.items():
        print(f"| {name} | {r['aten_ops']} | {r['aten_ops_on_images']} | {r['ms_per_batch']:.3f} |")
    print(f"receiving a batch from {receive['workers']} reading workers (stages run there): "
          f"{receive['main_process_cpu_ms_per_batch']:.3f} ms of the main process's CPU")
    rows["receive"] = receive
    if args.json:
        from streamaug.benchmarks.timing import write_result

        write_result(args.json, {"batch": args.batch, "image": [3, 8, 8], "calls": args.calls,
                                 "repeats": args.repeats, "threads": 1, "stages": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
