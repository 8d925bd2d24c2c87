"""Peak memory of reading a shard whose sample carries many large fields nobody reads
(per-sample side data: masks, features, raw sensor dumps), against the same shard with one.

    python -m streamaug.benchmarks.unused_fields_memory --fields 48 --mib 16 \
        --json benchmarks/results/unused_fields_memory_cpu.json

Each shard is a ``.tar.gz`` of two samples (a 4×4 PNG and a ``.cls``); the first also has
``--fields`` members of ``--mib`` MiB of zeros (each under ``max_member_bytes``), so the file
is small on disk. Each count is read by a fresh process (a loader with no workers), and its
peak resident memory (``ru_maxrss``) is reported.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile

READ = """
import resource, sys, warnings
from streamaug.loader import StreamLoader
warnings.simplefilter("ignore")
keys = [k for b in StreamLoader(sys.argv[1], batch_size=1, shuffle=0, index=False, num_classes=2, device="cpu")
        for k in b.keys]
assert keys == ["a", "b"], keys
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""


def write_shard(path: str, fields: int, mib: int) -> None:
    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(buf, format="PNG")
    zeros = b"\0" * (mib << 20)
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        add("a.cls", b"0")
        add("a.png", buf.getvalue())
        for k in range(fields):
            add(f"a.x{k:03d}", zeros)
        add("b.cls", b"1")
        add("b.png", buf.getvalue())


def peak_mb(fields: int, mib: int, folder: str) -> dict:
    path = os.path.join(folder, f"s{fields}.tar.gz")
    write_shard(path, fields, mib)
    out = subprocess.run([sys.executable, "-c", READ, path], capture_output=True, text=True, check=True)
    return {"fields": fields, "mib_each": mib, "shard_mb": round(os.path.getsize(path) / 1e6, 1),
            "peak_rss_mb": int(out.stdout.strip().splitlines()[-1])}


def main(argv=None) -> None:
    from streamaug.benchmarks.machine_info import machine_info
    from streamaug.benchmarks.cli_arguments import at_least_one

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fields", type=at_least_one, default=48)
    p.add_argument("--mib", type=at_least_one, default=16)
    p.add_argument("--json", help="write the rows and machine info here")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="unused-fields-") as folder:
        rows = [peak_mb(n, args.mib, folder) for n in (1, args.fields)]
    for r in rows:
        print(f"{r['fields']} unused field(s) of {r['mib_each']} MiB ({r['shard_mb']} MB .tar.gz): "
              f"peak {r['peak_rss_mb']} MB resident")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "machine": machine_info()}, f, indent=1)


if __name__ == "__main__":
    main()
