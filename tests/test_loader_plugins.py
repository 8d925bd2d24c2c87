"""augment= and mixup= in the loader: seeded from the loader, resumable, soft targets out."""
from __future__ import annotations

import os

import pytest
import torch

from streamaug.loader import StreamLoader
from streamaug.ops import Compose, Flip, GaussianNoise, MixUp, Rotate, Shear


def make(index, backend="kornia", seed=0, workers=0):
    aug = Compose([Flip(p=0.5), Rotate(20), Shear(x=10), GaussianNoise(0.03)], backend=backend)
    return StreamLoader(index.urls, batch_size=9, seed=seed, num_workers=workers,
                        augment=aug, mixup=MixUp(0.4, p=0.5))


def collect(loader, limit=None):
    out = []
    for i, b in enumerate(loader):
        if limit is not None and i == limit:
            break
        out.append((b[0].clone(), b[1].clone(), tuple(b.keys)))
    return out


@pytest.mark.parametrize("backend", ["kornia", "dali"])
def test_augmented_soft_target_batches(npy_shards, backend):
    index, _, _ = npy_shards
    batches = collect(make(index, backend))
    x, t, _ = batches[0]
    assert x.dtype == torch.uint8 and x.shape == (9, 3, 8, 8)
    assert t.shape == (9, 4) and torch.allclose(t.sum(1), torch.ones(9)) and (t >= 0).all()
    assert sum(len(k) for _, _, k in batches) == 100


def test_plugins_are_seeded_from_the_loader(npy_shards):
    index, _, _ = npy_shards
    a, b, c = collect(make(index, seed=1)), collect(make(index, seed=1)), collect(make(index, seed=2))
    assert all(torch.equal(x, y) and torch.equal(s, t) for (x, s, _), (y, t, _) in zip(a, b))
    assert not torch.equal(a[0][0], c[0][0])


@pytest.mark.parametrize("workers", [0, 2, 3])
@pytest.mark.parametrize("cut", [0, 5, 7, 12])
def test_resume_with_augmentation_is_bit_identical(npy_shards, workers, cut):
    index, _, _ = npy_shards
    reference = make(index, workers=workers)
    full = collect(reference)
    next_epoch = collect(reference)
    first = make(index, workers=workers)
    it = iter(first)
    head = [(b[0].clone(), b[1].clone(), tuple(b.keys)) for _, b in zip(range(cut), it)]
    state = first.state_dict()
    resumed = make(index, workers=workers)
    resumed.load_state_dict(state)
    tail = collect(resumed)
    expected = full + next_epoch if cut == len(full) else full   # the end resumes into the next epoch
    assert len(head) + len(tail) == len(expected)
    for (x, t, k), (y, s, j) in zip(head + tail, expected):
        assert k == j and torch.equal(x, y) and torch.equal(t, s)


def seeded_ops(index, workers=0, op_seed=7, compose_seed=None, mix_seed=None, **kw):
    aug = Compose([Rotate(30, seed=op_seed), GaussianNoise(0.05)], seed=compose_seed)
    return StreamLoader(index.urls, batch_size=9, seed=0, num_workers=workers, shuffle=0,
                        augment=aug, mixup=MixUp(0.4, seed=mix_seed), **kw)


def same(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) and torch.equal(s, t) for (x, s, _), (y, t, _) in zip(a, b))


def test_an_op_with_its_own_seed_is_reseeded_per_batch_too(npy_shards):
    """Its draws depend on (its seed, epoch, rank, batch), not on the worker that ran the
    batch (its generator used to run on in each worker's copy), and it resumes exactly."""
    index, _, _ = npy_shards
    main = collect(seeded_ops(index))
    assert same(collect(seeded_ops(index, workers=2)), main)
    assert same(collect(seeded_ops(index, workers=2, stages_in_workers=False)), main)
    first = seeded_ops(index)
    it = iter(first)
    [next(it) for _ in range(3)]
    resumed = seeded_ops(index)
    resumed.load_state_dict(first.state_dict())
    assert same(collect(resumed), main[3:])
    assert not same(collect(seeded_ops(index, op_seed=8)), main), "the op's own seed counts"
    assert not torch.equal(main[0][0], main[1][0])


@pytest.mark.parametrize("change", [dict(op_seed=8), dict(compose_seed=5), dict(mix_seed=5)])
def test_a_state_is_refused_by_plugins_seeded_otherwise(npy_shards, change):
    index, _, _ = npy_shards
    first = seeded_ops(index)
    it = iter(first)
    next(it)
    with pytest.raises(ValueError, match="plugin_details: saved '#"):
        seeded_ops(index, **change).load_state_dict(first.state_dict())
    seeded_ops(index).load_state_dict(first.state_dict())
    old = first.state_dict()                    # a state saved before the field existed still loads
    del old["fingerprint"]["plugin_details"]
    seeded_ops(index, **change).load_state_dict(old)


def test_ops_given_to_the_wrong_stage_fail_when_the_loader_is_built(npy_shards):
    index, _, _ = npy_shards
    with pytest.raises(TypeError, match=r"augment=MixUp\(alpha=0.2, p=1.0\) is a mix op: pass it as the loader's mixup="):
        StreamLoader(index.urls, augment=MixUp(0.2))
    with pytest.raises(TypeError, match=r"mixup=Compose\(.*is not a mix op: pass it as the loader's augment="):
        StreamLoader(index.urls, mixup=Compose([Flip()]))
    with pytest.raises(ValueError, match=r"has num_classes=10, the loader 4"):
        StreamLoader(index.urls, mixup=MixUp(0.2, num_classes=10))
    StreamLoader(index.urls, mixup=MixUp(0.2, num_classes=4))


class SeedKeepingAugment:
    """A user's augment= that stores each seed it is given, as torch's habit is."""

    def __init__(self, seed=None):
        self.seed = seed

    def manual_seed(self, seed):
        self.seed = seed
        self.gen = torch.Generator().manual_seed(seed)

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass

    def __call__(self, images):
        return images

    def __repr__(self):
        return "SeedKeepingAugment()"


def test_a_plugin_that_stores_each_batchs_seed_still_resumes(npy_shards):
    """Red team s32: the fingerprint read the plug-in's seed when the state was saved, which
    such a plug-in had set to the last batch's: every resume was refused."""
    index, _, _ = npy_shards
    first = StreamLoader(index.urls, batch_size=9, augment=SeedKeepingAugment())
    it = iter(first)
    next(it), next(it)
    StreamLoader(index.urls, batch_size=9, augment=SeedKeepingAugment()).load_state_dict(first.state_dict())
    with pytest.raises(ValueError, match="plugin_details"):
        StreamLoader(index.urls, batch_size=9, augment=SeedKeepingAugment(seed=5)).load_state_dict(first.state_dict())


class Brighten:
    """A user's augment= with no ``__repr__`` of its own: its repr holds a memory address."""

    def __init__(self, amount=10):
        self.amount, self.seed = amount, None

    def manual_seed(self, seed):
        self.seed = seed

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass

    def __call__(self, images):
        return images.clamp(max=255 - self.amount) + self.amount


def test_a_plugin_without_a_repr_resumes_in_a_new_process(npy_shards, tmp_path):
    """Red team s35: the fingerprint held ``repr(augment)``, with the object's address, so a
    state saved in one process was refused in every other ("augment: saved '<Brighten object
    at 0x7fc4...>'"). The process that resumes is a new one here, as after a restart."""
    import json
    import subprocess
    import sys
    index, _, _ = npy_shards
    first = StreamLoader(index.urls, batch_size=9, augment=Brighten())
    it = iter(first)
    next(it), next(it)
    (tmp_path / "state.json").write_text(json.dumps(first.state_dict()))
    expected = [list(b.keys) for b in it]
    script = (f"import json, sys; sys.path.insert(0, {os.path.dirname(__file__)!r})\n"
              "from test_loader_plugins import Brighten\n"
              "from streamaug.loader import StreamLoader\n"
              f"loader = StreamLoader({index.urls!r}, batch_size=9, augment=Brighten())\n"
              f"loader.load_state_dict(json.load(open({str(tmp_path / 'state.json')!r})))\n"
              "print(json.dumps([list(b.keys) for b in loader]))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == expected
