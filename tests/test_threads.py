"""Intra-op thread scoping (core/threads.py): sized from the cores and the workers,
applied around the loader's main-process stages, the caller's settings restored."""
from __future__ import annotations

import cv2
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from streamaug.core.threads import (IntraOpThreads, available_cores, limit_worker_threads,
                                    main_process_threads)
from streamaug.loader import StreamLoader


@pytest.fixture
def caller_threads():
    """Run the test with torch at 2 threads and OpenCV at 3, and put the originals back after."""
    saved = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(2)
    cv2.setNumThreads(3)
    yield
    torch.set_num_threads(saved[0])
    cv2.setNumThreads(saved[1])


@pytest.mark.parametrize("workers, cores, expected", [(0, 1, 1), (0, 2, 1), (2, 2, 1), (0, 8, 7), (2, 8, 5), (9, 8, 1)])
def test_main_process_threads_leave_a_core_per_worker_and_one_for_the_step(workers, cores, expected):
    assert main_process_threads(workers, cores=cores) == expected


def test_available_cores_is_the_affinity_mask():
    import os

    assert available_cores() == len(os.sched_getaffinity(0))


@pytest.mark.parametrize("bad", [-1, 1.5, "2"])
def test_bad_worker_count_is_named(bad):
    with pytest.raises(ValueError, match=repr(bad).replace("'", ".")):
        main_process_threads(bad, cores=4)


@pytest.mark.parametrize("bad", [0, -2, 2.0])
def test_bad_thread_count_is_named(bad):
    with pytest.raises(ValueError, match=str(bad)):
        IntraOpThreads(bad)


def test_scope_sets_then_restores_the_callers_counts(caller_threads):
    with IntraOpThreads(1):
        assert (torch.get_num_threads(), cv2.getNumThreads()) == (1, 1)
    assert (torch.get_num_threads(), cv2.getNumThreads()) == (2, 3)


def test_scope_restores_after_an_error_and_nests(caller_threads):
    scope = IntraOpThreads(1)
    with pytest.raises(RuntimeError, match="inside"):
        with scope:
            with scope:                       # re-entered (the same object) restores level by level
                assert torch.get_num_threads() == 1
            assert torch.get_num_threads() == 1
            raise RuntimeError("inside")
    assert (torch.get_num_threads(), cv2.getNumThreads()) == (2, 3)


class _ReportThreads(Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, i):
        return torch.tensor([torch.get_num_threads(), cv2.getNumThreads()])


def test_workers_run_one_thread_for_torch_and_opencv(caller_threads):
    loader = DataLoader(_ReportThreads(), batch_size=None, num_workers=1, worker_init_fn=lambda _: limit_worker_threads(),
                        multiprocessing_context="fork")
    assert all(row.tolist() == [1, 1] for row in loader)


class _RecordingAugment:
    """An ``augment=`` stage that records the thread counts it ran under."""

    def __init__(self):
        self.seed, self.seen = 0, []

    def manual_seed(self, seed):
        pass

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass

    def __call__(self, images):
        self.seen.append((torch.get_num_threads(), cv2.getNumThreads()))
        return images


@pytest.mark.parametrize("workers", [0, 1])
def test_loader_runs_its_stages_in_the_scope_and_hands_back_the_callers(npy_shards, caller_threads, workers):
    index, _, _ = npy_shards
    augment = _RecordingAugment()
    loader = StreamLoader(index.urls, batch_size=16, num_workers=workers, augment=augment, device="cpu",
                          stages_in_workers=False)
    expected = main_process_threads(workers)
    for _ in loader:
        assert (torch.get_num_threads(), cv2.getNumThreads()) == (2, 3)   # the training step's own
    loader.close()
    assert augment.seen and set(augment.seen) == {(expected, expected)}


class _StampThreads(_RecordingAugment):
    """Writes the thread counts it ran under into each row's first two pixels (a worker's
    copy cannot report back any other way)."""

    def __call__(self, images):
        out = images.clone()
        out[:, 0, 0, 0], out[:, 0, 0, 1] = torch.get_num_threads(), cv2.getNumThreads()
        return out


def test_stages_in_the_workers_run_one_thread(npy_shards, caller_threads):
    index, _, _ = npy_shards
    augment = _StampThreads()
    loader = StreamLoader(index.urls, batch_size=16, num_workers=2, augment=augment, device="cpu")
    assert loader.stages_in_workers
    stamps = {tuple(x[:, 0, 0, :2].unique(dim=0).flatten().tolist()) for x, _ in loader}
    loader.close()
    assert stamps == {(1, 1)} and augment.seen == [], "ran in the workers, one thread each"
    assert (torch.get_num_threads(), cv2.getNumThreads()) == (2, 3)


FORK_AFTER_OPENCV_POOL = r"""
import sys
import cv2, numpy as np
sys.path.insert(0, sys.argv[2])
from shard_factory import make_shards
from streamaug.loader import StreamLoader

cv2.setNumThreads(2)                      # the parent runs OpenCV on its thread pool first
x = np.zeros((1000, 1000), np.uint8)
m = cv2.getRotationMatrix2D((500.0, 500.0), 17.0, 1.0)
for _ in range(5):
    cv2.warpAffine(x, m, (1000, 1000))
index, _, _ = make_shards(sys.argv[1], n=40, maxcount=8)
loader = StreamLoader(index.urls, batch_size=8, num_workers=2, seed=0)
print(sum(len(b[1]) for b in loader), cv2.getNumThreads())
"""


def test_workers_start_after_the_parent_ran_opencvs_thread_pool(tmp_path):
    """A worker forked while OpenCV's pool has threads hung in cv2.setNumThreads (its
    first call, in limit_worker_threads) until the loader stopped the pool around the fork."""
    import os
    import signal
    import subprocess
    import sys

    tests = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.Popen([sys.executable, "-c", FORK_AFTER_OPENCV_POOL, str(tmp_path), tests],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)           # the hung workers too
        proc.communicate()
        pytest.fail("the loader's workers hung after the parent used OpenCV's thread pool")
    assert proc.returncode == 0, err
    assert out.split() == ["40", "2"], "every sample came, and the caller's OpenCV thread count is back"
