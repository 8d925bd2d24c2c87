"""A process forked while a loader's reading workers run (``os.fork()`` in the training
loop, a fork-started ``multiprocessing`` child) holds a copy of the loader. Whatever the
child does with that copy (close it, free it, exit, or iterate it), the parent's pass goes
on with the same batches, and the child's own pass is the one the parent would read.

torch's own DataLoader loses its workers when such a child exits (``multiprocessing``'s
exit hook in the child terminates them): ``test_torch_dataloader_loses_its_workers_so``
keeps that reference point honest.

Each case runs in its own interpreter: a forked pytest would run the rest of the session.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from streamaug.loader import write_shards

SCRIPT = textwrap.dedent("""
    import gc, hashlib, os, sys
    from streamaug.loader import StreamLoader

    def digest(batches):
        h = hashlib.sha256()
        for x, y in batches:
            h.update(x.numpy().tobytes()); h.update(y.numpy().tobytes())
        return h.hexdigest()

    def make():
        return StreamLoader("shards/", batch_size=16, num_workers=2, seed=3, shuffle=100)

    mode = sys.argv[1]
    reference = make()
    want = [digest(list(reference)) for _ in range(1)]
    reference.set_epoch(1)
    want.append(digest(list(reference)))
    reference.close()

    loader = make()
    it = iter(loader)
    seen = [next(it) for _ in range(4)]
    pid = os.fork()
    if pid == 0:
        if mode == "close":
            loader.close()
        elif mode == "free":
            del it, loader, seen
            gc.collect()
        elif mode == "continue":        # the parent's pass, here: torch said "Invalid iterator state"
            try:
                next(it)
            except RuntimeError as e:
                os._exit(0 if "started before os.fork()" in str(e) else 4)
            os._exit(5)
        elif mode == "iterate":
            loader.set_epoch(1)
            ok = digest(list(loader)) == want[1]
            loader.close()
            os._exit(0 if ok else 3)
        if mode == "exit":
            sys.exit(0)            # atexit: the loader's finalizer and multiprocessing's exit hook
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, ("child", status)
    seen += list(it)
    assert digest(seen) == want[0], "the parent's pass changed"
    loader.set_epoch(1)
    assert digest(list(loader)) == want[1], "the parent's next pass changed"
    print("ok", len(seen))
""")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("fork")
    rng = np.random.default_rng(0)
    write_shards((rng.integers(0, 256, (480, 8, 8, 3), np.uint8), rng.integers(0, 4, 480)),
                 str(root / "shards"), maxcount=60, progress=False)
    (root / "fork_job.py").write_text(SCRIPT)
    return root


@pytest.mark.parametrize("mode", ["close", "free", "exit", "iterate", "continue", "nothing"])
def test_parent_pass_survives_what_a_forked_child_does_with_its_copy(folder, mode):
    done = subprocess.run([sys.executable, "fork_job.py", mode], cwd=folder, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["ok", "30"]


def test_torch_dataloader_loses_its_workers_so(tmp_path):
    """The reference point the module docstring states: a plain persistent-worker DataLoader
    with a child that exits normally fails in the parent."""
    script = textwrap.dedent("""
        import os, sys, torch
        from torch.utils.data import DataLoader, TensorDataset
        dl = DataLoader(TensorDataset(torch.arange(800.)), batch_size=16, num_workers=2, persistent_workers=True)
        for i, b in enumerate(dl):
            if i == 3:
                pid = os.fork()
                if pid == 0:
                    sys.exit(0)
                os.waitpid(pid, 0)
        print("survived")
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "survived" not in done.stdout, (done.stdout, done.stderr[-2000:])
