"""SMOTE with neighbours found in an embedding, pixels interpolated at full resolution:
the chosen partner is the one scikit-learn's NearestNeighbors picks in that space,
the synthetic row lies on the pixel segment, and epoch counts equal imbalanced-learn's."""
from __future__ import annotations

import collections
import pickle

import numpy as np
import pytest
import torch
from imblearn.over_sampling import SMOTE as ImbSMOTE
from sklearn.neighbors import NearestNeighbors

from streamaug.loader import StreamLoader, write_shards
from streamaug.samplers import SMOTE, ClassBalancer, ClassReservoir, Encoder, RandomProjection, Thumbnail   # (docs
from streamaug.samplers.neighbour_space import resolve_space                   # audit s41: they were not exported)


def planted(n_per_cluster=12, clusters=4, size=16, noise=60, seed=0):
    """uint8 images (N, 1, size, size): each cluster a smooth pattern (its own constant
    level per quadrant), plus strong per-pixel noise. In pixels the noise dominates
    distances; a thumbnail averages it away and keeps the cluster structure."""
    rng = np.random.default_rng(seed)
    base = rng.integers(40, 216, (clusters, 2, 2))
    smooth = np.kron(base, np.ones((size // 2, size // 2)))                # (clusters, size, size)
    cluster = np.repeat(np.arange(clusters), n_per_cluster)
    x = smooth[cluster] + rng.integers(-noise, noise + 1, (len(cluster), size, size))
    return torch.from_numpy(np.clip(x, 0, 255).astype(np.uint8)[:, None]), cluster


def filled_reservoir(images, label=0, seed=0):
    res = ClassReservoir(2, capacity=len(images))
    res.add(images, torch.full((len(images),), label), [f"k{i}" for i in range(len(images))], ["u"] * len(images),
            np.random.default_rng(seed))
    return res


@pytest.mark.parametrize("space", [Thumbnail(4), RandomProjection(dim=32, seed=3),
                                   Encoder(lambda x: x.float().mean(dim=(2, 3)))],
                         ids=["thumbnail", "projection", "encoder"])
@pytest.mark.parametrize("fixed", [False, True], ids=["streamed", "fixed"])
def test_partner_is_sklearns_nearest_in_the_space_and_pixels_are_interpolated(space, fixed):
    images, _ = planted()
    res = filled_reservoir(images)
    res.fixed = fixed                   # fixed: neighbours from the host table (see neighbour_tables)
    syn = SMOTE(k_neighbors=1, neighbour_space=space).synthesize(res, 0, 300, np.random.default_rng(1))
    emb = space.embed(images).numpy()
    nn = NearestNeighbors(n_neighbors=2).fit(emb).kneighbors(emb, return_distance=False)
    members = images.flatten(1).float().numpy()
    for v, s, p, u in zip(syn.values.flatten(1).numpy(), syn.seed_entries, syn.partner_entries, syn.u):
        i, j = int(s[1][1:]), int(p[1][1:])
        assert i != j and j == (nn[i][1] if nn[i][0] == i else nn[i][0])
        assert np.abs(v - (members[i] + u * (members[j] - members[i]))).max() < 1e-3
    assert syn.values.shape == (300, 1, 16, 16), "full-resolution rows, not embeddings"


def test_the_space_is_really_used_thumbnail_neighbours_keep_the_planted_cluster():
    images, cluster = planted()
    res = filled_reservoir(images)
    rng = np.random.default_rng(2)
    in_thumb = SMOTE(k_neighbors=3, neighbour_space=Thumbnail(2)).synthesize(res, 0, 400, rng)
    same = [cluster[int(s[1][1:])] == cluster[int(p[1][1:])] for s, p in zip(in_thumb.seed_entries,
                                                                              in_thumb.partner_entries)]
    assert np.mean(same) == 1.0
    # reference check that the planted structure matters: sklearn's pixel-space kNN (what pixel SMOTE uses)
    pix = images.flatten(1).float().numpy()
    nn_pix = NearestNeighbors(n_neighbors=4).fit(pix).kneighbors(pix, return_distance=False)[:, 1:]
    nn_thumb = NearestNeighbors(n_neighbors=4).fit(Thumbnail(2).embed(images).numpy()).kneighbors(
        Thumbnail(2).embed(images).numpy(), return_distance=False)[:, 1:]
    assert (nn_pix != nn_thumb).any(), "the two spaces must disagree somewhere, else the test shows nothing"


def test_projection_preserves_a_planted_cluster_structure():
    """Johnson-Lindenstrauss in practice: 64 random directions out of 4,096 keep each
    point's nearest neighbour in its own well-separated cluster."""
    images, cluster = planted(size=64, noise=20)
    emb = RandomProjection(dim=64, seed=0).embed(images).numpy()
    nn = NearestNeighbors(n_neighbors=2).fit(emb).kneighbors(emb, return_distance=False)[:, 1]
    assert (cluster[nn] == cluster).all()


def test_embeddings_are_cached_and_recomputed_only_for_replaced_slots():
    images, _ = planted()
    calls = []

    def encoder(x):
        calls.append(len(x))
        return x.float().mean(dim=(2, 3))

    smote = SMOTE(k_neighbors=2, neighbour_space=encoder)
    res = ClassReservoir(1, capacity=20)
    rng = np.random.default_rng(0)
    res.add(images[:20], torch.zeros(20, dtype=torch.int64), [f"k{i}" for i in range(20)], ["u"] * 20, rng)
    smote.synthesize(res, 0, 10, rng)
    smote.synthesize(res, 0, 10, rng)
    assert calls == [20]
    res.add(images[20:48], torch.zeros(28, dtype=torch.int64), [f"k{i}" for i in range(20, 48)], ["u"] * 28, rng)
    replaced = sum(e != ("u", f"k{i}") for i, e in enumerate(res.entries[0]))
    smote.synthesize(res, 0, 10, rng)
    assert calls == [20, replaced] and 0 < replaced < 20
    emb = smote._embeddings.embeddings(res, 0)
    assert torch.allclose(emb, res.members(0).float().mean(dim=(2, 3)))


def test_balancer_counts_equal_imblearn_on_the_embedded_rows(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    labels = rng.choice(3, size=240, p=[0.7, 0.2, 0.1])
    images = rng.integers(0, 256, (240, 16, 16, 1), dtype=np.uint8)
    index = write_shards((images, labels), "shards", maxcount=64, progress=False)
    space = RandomProjection(dim=8, seed=1)
    loader = StreamLoader(index.urls, batch_size=32, seed=0,
                          balance=ClassBalancer(synthesizer=SMOTE(k_neighbors=3, neighbour_space=space)))
    counts = collections.Counter()
    for batch in loader:
        counts.update(batch.hard_labels[~batch.is_padding].tolist())
        assert batch.images.shape[1:] == (1, 16, 16)
    embedded = space.embed(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()
    theirs = collections.Counter(ImbSMOTE(k_neighbors=3, random_state=0).fit_resample(embedded, labels)[1].tolist())
    assert counts == theirs


def test_spaces_resolve_check_and_pickle():
    assert isinstance(resolve_space("thumbnail"), Thumbnail) and isinstance(resolve_space("projection"), RandomProjection)
    assert resolve_space(None) is None
    with pytest.raises(ValueError, match="neighbour_space must be None, one of \\['projection', 'thumbnail'\\]"):
        SMOTE(neighbour_space="pca")
    with pytest.raises(ValueError, match="dim must be an int >= 1, got 0"):
        RandomProjection(dim=0)
    with pytest.raises(ValueError, match="size must be an int >= 1"):
        Thumbnail((0, 4))
    bad = SMOTE(k_neighbors=1, neighbour_space=lambda x: x.float().mean())
    with pytest.raises(ValueError, match=r"must return \(N=48, d\) features"):
        bad.synthesize(filled_reservoir(planted()[0]), 0, 2, np.random.default_rng(0))
    proj = RandomProjection(dim=4, seed=9)
    x = torch.rand(3, 1, 8, 8)
    a = proj.embed(x)
    again = pickle.loads(pickle.dumps(proj))
    assert again._matrix is None and torch.equal(again.embed(x), a), "the matrix is re-derived from the seed"
    assert repr(SMOTE(neighbour_space="thumbnail")) == "SMOTE(k_neighbors=5, neighbour_space=Thumbnail(size=(8, 8)))"
