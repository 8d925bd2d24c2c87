"""JPEG decode + resize with and without the reduced DCT scale (PIL ``draft``), side by side.

``python -m streamaug.benchmarks.draft_decode --json benchmarks/results/draft_decode_cpu.json``

scikit-learn's two 427×640 sample photos, JPEG quality 92, decoded and resized to each
``--sizes`` target the loader's way (``decode_image_at_least`` then ``resize_image``) and
the full way (``decode_image`` then ``resize_image``), alternating, on one thread; the
median of ``--repeats`` rounds. What ``StreamLoader(resize=..., jpeg_draft=True)`` saves
per image in its workers.
"""
from __future__ import annotations

import argparse
import io
import statistics
import time


def photos() -> list[bytes]:
    from PIL import Image
    from sklearn.datasets import load_sample_images

    out = []
    for image in load_sample_images().images:
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="JPEG", quality=92)
        out.append(buf.getvalue())
    return out


def per_image_ms(decode, data: list[bytes], size: tuple[int, int], rounds: int) -> float:
    from streamaug.loader.image_codec import resize_image

    start = time.perf_counter()
    for _ in range(rounds):
        for raw in data:
            resize_image(decode(raw, size), size)
    return (time.perf_counter() - start) * 1e3 / (rounds * len(data))


def measure(size: tuple[int, int], repeats: int, rounds: int) -> dict:
    from streamaug.loader.image_codec import decode_image, decode_image_at_least

    data = photos()
    full_way = lambda raw, size: decode_image(raw, "jpg")              # noqa: E731
    draft_way = lambda raw, size: decode_image_at_least(raw, "jpg", size)  # noqa: E731
    per_image_ms(draft_way, data, size, 2)                              # warm-up
    full, draft = [], []
    for _ in range(repeats):             # alternating, so drift hits both alike
        full.append(per_image_ms(full_way, data, size, rounds))
        draft.append(per_image_ms(draft_way, data, size, rounds))
    f, d = statistics.median(full), statistics.median(draft)
    return {"size": list(size), "full_ms": round(f, 3), "draft_ms": round(d, 3), "speedup": round(f / d, 2)}


def main(argv=None) -> None:
    import torch

    from streamaug.benchmarks.cli_arguments import at_least_one

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", default=["100x150", "200x300", "224x224"],
                   help="targets HxW (427x640 photos)")
    p.add_argument("--repeats", type=at_least_one, default=5)
    p.add_argument("--rounds", type=at_least_one, default=20, help="decodes of each photo per timed round")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    try:
        sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes]
        if any(len(s) != 2 or min(s) < 1 for s in sizes):
            raise ValueError
    except ValueError:
        p.error(f"--sizes takes HxW targets such as 100x150, got {args.sizes}")
    torch.set_num_threads(1)
    rows = [measure(s, args.repeats, args.rounds) for s in sizes]
    print("| target | full decode + resize, ms/image | draft decode + resize | speed-up |")
    print("| --- | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['size'][0]}×{r['size'][1]} | {r['full_ms']:.2f} | {r['draft_ms']:.2f} | {r['speedup']:.2f}× |")
    if args.json:
        from streamaug.benchmarks.busy_workers import load_average
        from streamaug.benchmarks.timing import write_result

        write_result(args.json, {"photos": "sklearn sample images, 427x640, JPEG q92", "repeats": args.repeats,
                                 "rounds": args.rounds, "results": rows, "loadavg": load_average()})


if __name__ == "__main__":
    main()
