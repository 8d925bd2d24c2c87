"""StreamLoader(index=False): streaming without an index, online class balancing."""
from __future__ import annotations

import collections

import numpy as np
import pytest
import torch
from imblearn.over_sampling import SMOTE as ImbSMOTE

from streamaug.loader import StreamLoader, write_shards
from streamaug.samplers import ClassBalancer

pytestmark = pytest.mark.filterwarnings("ignore:class .* has .* samples in the reservoir:RuntimeWarning")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    rng = np.random.default_rng(0)
    n = 1200
    labels = rng.choice(3, n, p=[0.7, 0.2, 0.1])
    images = rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8)
    index = write_shards((images, labels), str(tmp_path_factory.mktemp("noidx")), maxcount=100, progress=False)
    return index.urls, labels


def imblearn_counts(labels, strategy):
    X = np.random.default_rng(0).normal(size=(len(labels), 2))
    return collections.Counter(ImbSMOTE(sampling_strategy=strategy).fit_resample(X, labels)[1].tolist())


@pytest.mark.parametrize("workers", [0, 2])
def test_every_sample_once_without_an_index(shards, workers):
    urls, labels = shards
    loader = StreamLoader(urls, batch_size=64, num_workers=workers, index=False, seed=1)
    keys = [k for b in loader for k in b.keys]
    assert len(keys) == len(set(keys)) == len(labels)
    with pytest.raises(TypeError, match="no len"):
        len(loader)
    second = [k for b in loader for k in b.keys]
    assert second != keys and sorted(second) == sorted(keys), "shards and buffer reshuffle per epoch"


def test_index_false_needs_num_classes_for_balance_or_mixup(shards):
    urls, _ = shards
    with pytest.raises(ValueError, match="needs num_classes="):
        StreamLoader(urls, batch_size=8, index=False, balance=ClassBalancer())


@pytest.mark.parametrize("strategy", ["auto", "all", {1: 900, 2: 500}])
@pytest.mark.parametrize("workers", [0, 2])
def test_online_balancing_meets_imblearn_counts_at_epoch_end(shards, strategy, workers):
    urls, labels = shards
    loader = StreamLoader(urls, batch_size=64, num_workers=workers, index=False, num_classes=3, seed=2,
                          balance=ClassBalancer(strategy))
    counts, per_batch = collections.Counter(), []
    for b in loader:
        counts.update(b.hard_labels[~b.is_padding].tolist())
        per_batch.append(int(b.is_synthetic.sum()))
    assert counts == imblearn_counts(labels, strategy)
    assert "online_overshoot" not in loader.stats.skipped
    if isinstance(strategy, str):      # ratio strategies act mid-epoch, not only at the end
        assert sum(per_batch[:-1]) > 0.5 * sum(per_batch)


def test_resume_without_an_index_replays_to_the_same_batches(shards):
    urls, _ = shards

    def make():
        return StreamLoader(urls, batch_size=64, num_workers=2, index=False, num_classes=3, seed=3,
                            balance=ClassBalancer("auto"))
    full = [(b.keys, b[0].clone()) for b in make()]
    first = make()
    it = iter(first)
    head = [(b.keys, b[0].clone()) for _, b in zip(range(7), it)]
    state = first.state_dict()
    resumed = make()
    resumed.load_state_dict(state)
    tail = [(b.keys, b[0].clone()) for b in resumed]
    assert len(head) + len(tail) == len(full)
    assert all(k == j and torch.equal(x, y) for (k, x), (j, y) in zip(head + tail, full))


def test_pipe_urls_stream_without_an_index(shards):
    urls, labels = shards
    keys = [k for b in StreamLoader([f"pipe:cat {u}" for u in urls], batch_size=100, index=False) for k in b.keys]
    assert len(set(keys)) == len(labels)
