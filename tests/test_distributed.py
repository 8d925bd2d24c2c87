"""torchrun jobs on CPU with gloo: disjoint complete ranks, equal lengths, kill + resume, balancing."""
from __future__ import annotations

import collections
import json
import os

import pytest

from shard_factory import good_members, make_shards, write_custom
from torchrun_job import free_port, run_torchrun

pytestmark = pytest.mark.slow
TIMEOUT = 180


def torchrun(*args, nproc=2, check=True):
    return run_torchrun(["-m", "streamaug.benchmarks.train", *args], nproc=nproc, timeout=TIMEOUT, check=check)


def read_trace(prefix, rank):
    with open(f"{prefix}-rank{rank}.jsonl") as f:
        rows = [json.loads(line) for line in f]
    return [r for r in rows if "keys" in r], next((r["summary"] for r in rows if "summary" in r), None)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    index, _, labels = make_shards(str(tmp / "shards"), n=200, maxcount=30)
    return index, labels, str(tmp / "shards")


def test_two_ranks_two_workers_disjoint_complete_equal(shards, tmp_path):
    index, _, folder = shards
    torchrun("--data", folder, "--epochs", 1, "--batch-size", 16, "--workers", 2, "--trace", tmp_path / "t")
    per_rank = [read_trace(tmp_path / "t", r)[0] for r in range(2)]
    real = [{k for b in batches for k, pad in zip(b["keys"], b["padding"]) if not pad} for batches in per_rank]
    assert not real[0] & real[1], "ranks are disjoint"
    assert real[0] | real[1] == {f"train_{i:08d}" for i in range(200)}, "together they are complete"
    assert len(per_rank[0]) == len(per_rank[1]) == 7
    summary = read_trace(tmp_path / "t", 0)[1]
    assert summary["world_size"] == 2 and len(summary["samples_per_s_per_rank"]) == 2
    assert sum(summary["global_class_mix"]) == 200


def test_uneven_shards_give_equal_batch_counts(tmp_path):
    shards = {"a.tar": good_members(7), "b.tar": good_members(2, 7), "c.tar": good_members(11, 9)}
    write_custom(str(tmp_path), shards, {"a.tar": [4, 3], "b.tar": [1, 1], "c.tar": [5, 6]})
    torchrun("--data", tmp_path, "--epochs", 1, "--batch-size", 4, "--workers", 2, "--trace", tmp_path / "t")
    per_rank = [read_trace(tmp_path / "t", r)[0] for r in range(2)]
    assert len(per_rank[0]) == len(per_rank[1]) == 3
    real = [k for batches in per_rank for b in batches for k, p in zip(b["keys"], b["padding"]) if not p]
    assert sorted(real) == sorted(f"s_{i:05d}" for i in range(20))


def test_killed_mid_epoch_and_resumed_matches_uninterrupted(shards, tmp_path):
    _, _, folder = shards
    common = ["--data", folder, "--epochs", 2, "--batch-size", 16, "--workers", 2, "--balance", "--augment"]
    torchrun(*common, "--trace", tmp_path / "ref")
    # (folders that do not exist yet, as in the README's command: newcomer s32 found them not made)
    run, ckpt = tmp_path / "logs" / "run", tmp_path / "ckpt" / "run"
    torchrun(*common, "--trace", run, "--ckpt", ckpt, "--stop-after", 9)
    assert os.path.exists(f"{ckpt}-rank0.pt") and os.path.exists(f"{ckpt}-rank1.pt")
    assert read_trace(run, 0)[1] is None, "the first run really stopped early"
    torchrun(*common, "--trace", run, "--ckpt", ckpt, "--resume")
    for rank in range(2):
        ref, run_rows = read_trace(tmp_path / "ref", rank)[0], read_trace(run, rank)[0]
        assert len(ref) == len(run_rows) > 9
        assert [(b["keys"], b["pixels"]) for b in run_rows] == [(b["keys"], b["pixels"]) for b in ref]


def test_balancer_meets_global_targets_across_ranks(shards, tmp_path):
    from imblearn.utils import check_sampling_strategy
    import numpy as np

    index, labels, folder = shards
    torchrun("--data", folder, "--epochs", 1, "--batch-size", 16, "--workers", 2, "--balance",
             "--trace", tmp_path / "t")
    counts = collections.Counter()
    lengths = []
    for rank in range(2):
        batches, _ = read_trace(tmp_path / "t", rank)
        lengths.append(len(batches))
        for b in batches:
            counts.update(lab for lab, pad in zip(b["labels"], b["padding"]) if not pad)
    base = collections.Counter(labels.tolist())
    target = {c: base[c] + n for c, n in check_sampling_strategy("auto", np.asarray(labels), "over-sampling").items()}
    assert dict(counts) == {c: target.get(c, base[c]) for c in base}
    assert lengths[0] == lengths[1]
    summary = read_trace(tmp_path / "t", 0)[1]
    assert summary["global_class_mix"] == [counts[c] for c in range(4)]


def test_the_train_job_checkpoints_each_epoch_and_a_restart_continues_with_the_next(shards, tmp_path):
    """Newcomer s32: the README's --ckpt wrote nothing unless --stop-after was given, so
    "add --resume to continue" had nothing to continue from."""
    from streamaug.benchmarks.train import main

    folder = shards[2]
    common = ["--data", folder, "--batch-size", "32", "--workers", "0", "--augment"]
    assert main([*common, "--epochs", "2", "--trace", str(tmp_path / "ref")]) == 0
    ckpt = tmp_path / "new" / "run"
    assert main([*common, "--epochs", "1", "--ckpt", str(ckpt), "--ckpt-every", "3"]) == 0
    assert os.path.exists(f"{ckpt}-rank0.pt") and not os.path.exists(f"{ckpt}-rank0.pt.partial")
    assert main([*common, "--epochs", "2", "--ckpt", str(ckpt), "--resume", "--trace", str(tmp_path / "run")]) == 0
    ref, run = read_trace(tmp_path / "ref", 0)[0], read_trace(tmp_path / "run", 0)[0]
    assert len(ref) == 14 and len(run) == 7           # (epoch 1 only: the checkpoint was at epoch 0's end)
    assert [(b["keys"], b["pixels"], b["step"]) for b in run] == [(b["keys"], b["pixels"], b["step"]) for b in ref[7:]]


def test_train_job_names_a_bad_data_argument(tmp_path):
    from streamaug.benchmarks.train import main

    with pytest.raises(SystemExit, match="is not a folder of shards; for a URL pattern pass --index"):
        main(["--data", str(tmp_path / "missing-{000..003}.tar")])
    with pytest.raises(SystemExit, match=r"--ckpt-every must be 0 \(epoch ends only\) or a number of steps > 0, got -1"):
        main(["--data", str(tmp_path), "--ckpt-every", "-1"])


def test_the_train_job_called_in_process_returns_and_leaves_the_callers_group(shards, tmp_path):
    """Red team: once the job ended the process itself (os._exit after its last step), a caller
    that ran ``main()`` under its own process group lost everything after the call, and a pytest
    run exited 0 without running the tests after it. It also destroyed the caller's group."""
    import subprocess
    import sys

    folder = shards[2]
    script = f"""
import os, torch.distributed as dist
from streamaug.benchmarks.train import main
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str({free_port()}))
dist.init_process_group("gloo", rank=0, world_size=1)
code = main(["--data", {folder!r}, "--batch-size", "16", "--workers", "0"])
print("returned", code, "group kept", dist.is_initialized(), flush=True)
dist.destroy_process_group()
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=TIMEOUT,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "returned 0 group kept True" in done.stdout, done.stdout[-2000:]
