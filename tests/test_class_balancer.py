"""ClassBalancer against imbalanced-learn: per-class counts, errors, SMOTE geometry, resume."""
from __future__ import annotations

import collections
import numpy as np
import pytest
import torch
from imblearn.over_sampling import SMOTE as ImbSMOTE

from shard_factory import index_of_key
from streamaug.loader import StreamLoader, write_shards
from streamaug.samplers import ADASYN, SMOTE, BorderlineSMOTE, ClassBalancer, synthetic_targets

pytestmark = pytest.mark.filterwarnings("ignore:class .* has .* samples in the reservoir:RuntimeWarning")


def imbalanced(tmp, n=240, probs=(0.55, 0.25, 0.12, 0.08), size=4, seed=0, maxcount=30):
    rng = np.random.default_rng(seed)
    labels = rng.choice(len(probs), n, p=probs)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    index = write_shards((images, labels), str(tmp), maxcount=maxcount, progress=False)
    return index, images, labels


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return imbalanced(tmp_path_factory.mktemp("imb"))


@pytest.fixture(scope="module")
def binary(tmp_path_factory):
    return imbalanced(tmp_path_factory.mktemp("bin"), probs=(0.8, 0.2))


def epoch_counts(loader) -> tuple[collections.Counter, list]:
    counts, batches = collections.Counter(), []
    for b in loader:
        counts.update(b.hard_labels[~b.is_padding].tolist())
        batches.append(b)
    return counts, batches


def imblearn_counts(labels, strategy) -> collections.Counter:
    X = np.random.default_rng(0).normal(size=(len(labels), 3))
    return collections.Counter(ImbSMOTE(sampling_strategy=strategy, k_neighbors=3, random_state=0)
                               .fit_resample(X, labels)[1].tolist())


STRATEGIES = ["auto", "not majority", "minority", "not minority", "all", {1: 100, 2: 60, 3: 40},
              lambda y: {3: int((y == 0).sum())}]


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: s if isinstance(s, str) else type(s).__name__)
def test_epoch_counts_equal_imblearn(data, strategy, num_workers):
    index, _, labels = data
    loader = StreamLoader(index.urls, batch_size=32, num_workers=num_workers, seed=1,
                          balance=ClassBalancer(strategy))
    counts, _ = epoch_counts(loader)
    assert counts == imblearn_counts(labels, strategy)
    assert loader.stats.real == len(labels) and loader.stats.padded == 0


def test_float_strategy_binary(binary):
    index, _, labels = binary
    counts, _ = epoch_counts(StreamLoader(index.urls, batch_size=16, balance=ClassBalancer(0.6)))
    assert counts == imblearn_counts(labels, 0.6)


@pytest.mark.parametrize("strategy", [0.5, {0: 10}, {7: 500}, "majority", "sometimes", 1.5])
def test_invalid_strategies_raise_imblearns_errors(data, strategy):
    index, _, labels = data
    X = np.zeros((len(labels), 2))
    with pytest.raises(ValueError) as theirs:
        ImbSMOTE(sampling_strategy=strategy).fit_resample(X, labels)
    with pytest.raises(ValueError) as ours:
        StreamLoader(index.urls, batch_size=8, balance=ClassBalancer(strategy))
    # Same kind; the text is imblearn's own unless its estimator-level parameter check caught it first.
    assert str(ours.value) == str(theirs.value) or repr(strategy) in str(ours.value) \
        or str(strategy) in str(ours.value), (str(ours.value), str(theirs.value))


@pytest.mark.parametrize("strategy,message", [
    ("majority", "'majority' is not one of"), ("sometimes", "'sometimes' is not one of"),
    (-0.5, "in \\(0, 1\\], got -0.5"), (float("nan"), "got nan"), (5, "got 5"), (None, "got None"),
    ([1, 2], "got \\[1, 2\\]"), ({1: -5}, "sampling_strategy\\[1\\] must be a sample count .* got -5"),
    ({"1": 50}, "keys are class indices .* got '1'"), ({1: 50.5}, "got 50.5"),
])
def test_a_strategy_no_data_could_make_valid_is_refused_when_the_balancer_is_built(strategy, message):
    with pytest.raises(ValueError, match=message):
        ClassBalancer(strategy)


def test_numpy_integers_are_ints():
    assert SMOTE(k_neighbors=np.int64(3)).k_neighbors == 3
    assert BorderlineSMOTE(m_neighbors=np.int32(7)).m_neighbors == 7
    assert ADASYN(n_neighbors=np.int64(4)).n_neighbors == 4
    from streamaug.samplers.neighbour_space import RandomProjection
    with pytest.raises(ValueError, match="seed must be an int, got 1.7"):
        RandomProjection(seed=1.7)


def half_majority(y):
    counts = collections.Counter(y.tolist())
    top = max(counts.values())
    return {c: top // 2 for c, n in counts.items() if n < top // 2}


def test_the_state_fingerprint_reads_the_same_in_another_process_and_holds_every_setting(data):
    """A callable strategy is named by module and name (its address changes in the process that
    resumes), and each setting that changes the batches is in the fingerprint, so a state from a
    balancer configured otherwise is refused rather than resumed into other batches."""
    import subprocess
    import sys

    text = repr(ClassBalancer(half_majority, feature_fn=np.negative))
    assert "0x" not in text and "test_class_balancer.half_majority#" in text
    assert repr(ClassBalancer(lambda y: {2: 150})) != repr(ClassBalancer(lambda y: {2: 400}))   # two lambdas differ
    import functools
    assert repr(ClassBalancer(functools.partial(dict, {2: 150}))) != repr(ClassBalancer(functools.partial(dict, {2: 400})))
    code = ("import sys; sys.path.insert(0, %r); import test_class_balancer as t; "
            "from streamaug.samplers import ClassBalancer; import numpy as np; "
            "print(repr(ClassBalancer(t.half_majority, feature_fn=np.negative)))") % str(__import__("pathlib").Path(__file__).parent)
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == text
    index, _, _ = data
    base = dict(sampling_strategy="auto", synthesizer=SMOTE(k_neighbors=3), random_state=1, reservoir_size=64)
    saved = StreamLoader(index.urls, batch_size=16, seed=0, balance=ClassBalancer(**base))
    it = iter(saved)
    next(it)
    state = saved.state_dict()
    for change in ({"random_state": 2}, {"reservoir_size": 32}, {"shuffle_within_batch": False},
                   {"stratified": True}):
        other = StreamLoader(index.urls, batch_size=16, seed=0, balance=ClassBalancer(**{**base, **change}))
        with pytest.raises(ValueError, match="configured differently.*balance"):
            other.load_state_dict(state)
    same = StreamLoader(index.urls, batch_size=16, seed=0, balance=ClassBalancer(**base))
    same.load_state_dict(state)


WANTED = {"minority": 40}


def wanted_for_the_minority(y):
    counts = collections.Counter(y.tolist())
    return {min(counts, key=counts.get): WANTED["minority"]}


def test_a_state_is_refused_when_a_strategy_resolves_to_other_targets(data, monkeypatch):
    """Red team s34: a callable strategy's digest covers its code, not what it reads: a global
    changed between save and resume was accepted, and the resumed epoch matched neither plan."""
    index, _, _ = data

    def make():
        return StreamLoader(index.urls, batch_size=16, seed=0, balance=ClassBalancer(wanted_for_the_minority))
    saved = make()
    next(iter(saved))
    state = saved.state_dict()
    make().load_state_dict(state)
    monkeypatch.setitem(WANTED, "minority", 60)
    with pytest.raises(ValueError, match=r"configured differently.*balance_targets: saved \[\[3, 11\]\], "
                                         r"this loader \[\[3, 31\]\]"):      # (29 real + 11, then + 31)
        make().load_state_dict(state)
    del state["fingerprint"]["balance_targets"]      # a state saved before the field: not compared
    make().load_state_dict(state)
    from types import SimpleNamespace

    from streamaug.loader.loader_state import balance_targets
    many = SimpleNamespace(online_=False, targets_={c: 10 * c for c in range(1, 1000)})
    short = balance_targets(many)                    # (review s34: the full list was 12.9 KB at 1,000 classes)
    assert short.startswith("999 classes, 4995000 synthetic samples #") and len(short) < 80
    assert balance_targets(SimpleNamespace(online_=False, targets_={**many.targets_, 5: 51})) != short


def test_synthetic_targets_need_two_classes():
    with pytest.raises(ValueError, match="at least two classes"):
        synthetic_targets("auto", [10, 0])


@pytest.mark.parametrize("make,message", [
    (lambda: ClassBalancer(reservoir_size=1), "reservoir_size must be an int >= 2, got 1"),
    (lambda: ClassBalancer(synthesizer="smote"), "synthesizer must be None or a Synthesizer, got 'smote'"),
    (lambda: ClassBalancer(random_state=1.5), "random_state must be None or an int, got 1.5"),
    (lambda: SMOTE(k_neighbors=0), "k_neighbors must be an int >= 1, got 0"),
    (lambda: BorderlineSMOTE(kind="borderline-3"), "kind must be one of"),
    (lambda: ADASYN(n_neighbors=0), "n_neighbors must be an int >= 1, got 0"),
])
def test_bad_arguments_named(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_real_samples_pass_through_byte_for_byte(data):
    index, images, labels = data
    _, batches = epoch_counts(StreamLoader(index.urls, batch_size=32, balance=ClassBalancer()))
    real = 0
    for b in batches:
        for row, key, synth in zip(b[0], b.keys, b.is_synthetic.tolist()):
            if not synth:
                i = index_of_key(key)
                assert torch.equal(row, torch.from_numpy(images[i]).permute(2, 0, 1))
                real += 1
    assert real == len(labels)


def test_default_synthesizer_is_random_oversampling(data):
    """The default follows the demo's evidence (docs/demo.md, "Which setting when"): a synthetic row
    is an exact copy of a real sample of its class, named in its provenance."""
    index, images, _ = data
    _, batches = epoch_counts(StreamLoader(index.urls, batch_size=32, balance=ClassBalancer()))
    copies = 0
    for b in batches:
        for row, label, synth, prov in zip(b[0], b.hard_labels.tolist(), b.is_synthetic.tolist(), b.provenance):
            if synth:
                i = index_of_key(prov["seed"][1])
                assert torch.equal(row, torch.from_numpy(images[i]).permute(2, 0, 1)) and prov["neighbour"] is None
                copies += 1
    assert copies > 0


@pytest.mark.parametrize("synthesizer", [SMOTE(k_neighbors=3), BorderlineSMOTE(k_neighbors=3, kind="borderline-1"),
                                         BorderlineSMOTE(k_neighbors=3, kind="borderline-2"), ADASYN(k_neighbors=3)],
                         ids=["smote", "borderline1", "borderline2", "adasyn"])
def test_synthetic_rows_lie_on_their_recorded_segment(data, synthesizer):
    index, images, labels = data
    loader = StreamLoader(index.urls, batch_size=32, seed=2, balance=ClassBalancer(synthesizer=synthesizer))
    counts, batches = epoch_counts(loader)
    assert counts == imblearn_counts(labels, "auto")
    checked = 0
    for b in batches:
        for row, label, prov in zip(b[0], b.hard_labels, b.provenance):
            if prov is None:
                continue
            seed, partner = images[index_of_key(prov["seed"][1])], images[index_of_key(prov["neighbour"][1])]
            expected = seed.astype(np.float64) + prov["u"] * (partner.astype(np.float64) - seed)
            got = row.permute(1, 2, 0).numpy().astype(np.float64)
            assert np.abs(got - expected).max() <= 0.5 + 1e-4, "uint8 rows: on the segment up to rounding (float32 arithmetic)"
            assert int(label) == labels[index_of_key(prov["seed"][1])], "the label is the seed's class"
            u_max = 0.5 if (synthesizer.kind if hasattr(synthesizer, "kind") else "") == "borderline-2" \
                and labels[index_of_key(prov["neighbour"][1])] != label else 1.0
            assert 0 <= prov["u"] < u_max
            checked += 1
    assert checked == sum(counts.values()) - len(labels)


def test_random_oversampling_repeats_real_samples(data):
    index, images, labels = data
    counts, batches = epoch_counts(StreamLoader(index.urls, batch_size=32, balance=ClassBalancer(synthesizer=None)))
    assert counts == imblearn_counts(labels, "auto")
    for b in batches:
        for row, prov in zip(b[0], b.provenance):
            if prov is not None:
                assert prov["neighbour"] is None and prov["u"] == 0.0
                assert torch.equal(row, torch.from_numpy(images[index_of_key(prov["seed"][1])]).permute(2, 0, 1))


def test_same_seed_same_stream_and_synthetic_spread_through_it(data):
    index, _, _ = data
    a = epoch_counts(StreamLoader(index.urls, batch_size=32, seed=4, balance=ClassBalancer(synthesizer=SMOTE())))[1]
    b = epoch_counts(StreamLoader(index.urls, batch_size=32, seed=4, balance=ClassBalancer(synthesizer=SMOTE())))[1]
    assert all(torch.equal(x[0], y[0]) and x.keys == y.keys for x, y in zip(a, b))
    per_batch = [int(x.is_synthetic.sum()) for x in a]
    full = per_batch[:-1]
    assert max(full) - min(full) <= 1, f"synthetic rows are spread evenly, got {per_batch}"
    positions = [i for x in a for i, s in enumerate(x.is_synthetic.tolist()) if s]
    assert np.std(positions) > 5, "synthetic rows are interleaved inside batches, not appended"


def test_reservoir_bound_is_respected(tmp_path):
    index, _, labels = imbalanced(tmp_path, n=400, size=4)
    balancer = ClassBalancer(synthesizer=SMOTE(), reservoir_size=16)
    loader = StreamLoader(index.urls, batch_size=32, balance=balancer)
    counts, _ = epoch_counts(loader)
    assert counts == imblearn_counts(labels, "auto")
    res = balancer.reservoir_
    synthesized = sorted(c for c, n in balancer.targets_.items() if n)
    assert len(synthesized) == 3
    # filled once before the first batch: each synthesized class holds a seeded subset of 16 of its
    # samples, the majority class (never synthesized from) holds nothing
    assert [int(res.size[c]) for c in range(4)] == [16 if c in synthesized else 0 for c in range(4)]
    # 3 classes × 16 slots × 4·4·3 bytes, plus float copies and 16×16 distances for those classes
    assert res.memory_bytes() == 3 * 16 * 48 + 3 * (16 * 48 * 4 + 16 * 16 * 4), "independent of dataset size"


def test_few_samples_lower_k_with_a_warning_and_one_sample_repeats(tmp_path):
    labels = np.array([0] * 30 + [1] * 3 + [2] * 1)
    images = np.random.default_rng(0).integers(0, 256, (34, 4, 4, 3), dtype=np.uint8)
    index = write_shards((images, labels), str(tmp_path), maxcount=50, progress=False, shuffle_seed=None)
    with pytest.warns(RuntimeWarning, match="class 1 has .* samples in the reservoir, fewer than"):
        counts, batches = epoch_counts(StreamLoader(index.urls, batch_size=8, shuffle=0, seed=0,
                                                    balance=ClassBalancer(synthesizer=SMOTE(k_neighbors=5))))
    assert counts == collections.Counter({0: 30, 1: 30, 2: 30})
    lone = [p for b in batches for p, lab in zip(b.provenance, b.hard_labels.tolist()) if p and lab == 2]
    assert lone and all(p["neighbour"] is None for p in lone)
    named = write_shards((images, labels), str(tmp_path / "named"), maxcount=50, progress=False, shuffle_seed=None,
                         class_names=["cat", "dog", "eel"])
    with pytest.warns(RuntimeWarning, match=r"class 1 \('dog'\) has 3 samples in the reservoir, fewer than"):
        epoch_counts(StreamLoader(named.urls, batch_size=8, balance=ClassBalancer(synthesizer=SMOTE(k_neighbors=5))))


@pytest.mark.parametrize("fixed", [False, True], ids=["streamed", "fixed"])
def test_smote_neighbour_is_among_the_k_nearest_in_the_reservoir(fixed):
    """Per-batch search (streamed reservoir) and host table (fixed, filled from an index) alike."""
    from sklearn.neighbors import NearestNeighbors

    from streamaug.samplers import ClassReservoir

    rng = np.random.default_rng(0)
    res = ClassReservoir(2, capacity=64)
    x = torch.from_numpy(rng.normal(size=(80, 6)).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, 2, 80))
    res.add(x, y, [f"k{i}" for i in range(80)], ["u"] * 80, rng)
    res.fixed = fixed
    syn = SMOTE(k_neighbors=4).synthesize(res, 1, 200, rng)
    members = res.members(1).numpy()
    by_key = {e[1]: i for i, e in enumerate(res.entries[1])}
    nn = NearestNeighbors(n_neighbors=5).fit(members).kneighbors(members, return_distance=False)
    for v, s, p, u in zip(syn.values.numpy(), syn.seed_entries, syn.partner_entries, syn.u):
        i, j = by_key[s[1]], by_key[p[1]]
        assert j in nn[i][1:] and i != j
        assert np.abs(v - (members[i] + u * (members[j] - members[i]))).max() < 1e-5


@pytest.mark.parametrize("impl", ["opencv", "torch"])
@pytest.mark.parametrize("rows", [1, 8, 21])
def test_interpolation_equals_the_whole_tensor_formula(monkeypatch, rows, impl):
    """Rows are read where they are in the source. In torch, uint8 rows are interpolated
    ``INTERPOLATE_ROWS`` at a time and the numbers are those of ``round(clamp(x_i + u·(x_j − x_i)))``
    over the whole tensor; OpenCV's one pass per row may round a tie the other way. float32
    output is unrounded, in torch."""
    import streamaug.samplers.synthesizer as synth

    if impl == "opencv":
        pytest.importorskip("cv2")                  # installed with the bench extra, as in CI
    else:
        monkeypatch.setattr(synth, "opencv_blend", lambda: None)
    assert synth.INTERPOLATE_ROWS < 21, "the 21-row case must span more than one chunk"
    g = torch.Generator().manual_seed(rows)
    source = torch.randint(0, 256, (2 * rows + 3, 3 * 24 * 24), dtype=torch.uint8, generator=g)
    rng = np.random.default_rng(rows)
    seeds, partners = rng.integers(0, len(source), rows), rng.integers(0, len(source), rows)
    u = rng.random(rows)
    x_i, x_j = source[seeds].float(), source[partners].float()
    whole = x_i + torch.from_numpy(u).float().view(-1, 1) * (x_j - x_i)
    assert torch.equal(synth.interpolate(source, seeds, partners, u, torch.float32), whole)
    got = synth.interpolate(source, seeds, partners, u, torch.uint8)
    diff = (got.int() - whole.round().clamp(0, 255).int()).abs()
    assert got.dtype == torch.uint8 and int(diff.max()) <= (1 if impl == "opencv" else 0)
    assert float((diff > 0).double().mean()) < 1e-3, "only ties may round the other way"
    with pytest.raises(ValueError, match="torch.float32 or torch.uint8, got dtype=torch.int32"):
        synth.interpolate(source, seeds, partners, u, torch.int32)


def test_shortfall_with_no_sample_anywhere_names_the_class():
    """No reservoir has a sample and the batch has no real row: a clear error, not an IndexError."""
    from streamaug.core.flight import BatchInFlight

    from streamaug.core.plugin import BindContext
    from streamaug.loader.errors import LoaderStats

    class NothingReadable:
        def labels(self, wanted):
            return iter(())

        def fetch(self, pairs, transform=None, missing="raise"):
            return {}

    balancer, stats = ClassBalancer("auto"), LoaderStats()
    balancer.bind(BindContext(class_counts=[5, 1], num_classes=2, world_size=1, rank=0, device=torch.device("cpu"),
                              rows=NothingReadable(), stats=stats, augmented=False))
    empty = BatchInFlight(images=torch.empty((0, 3, 4, 4), dtype=torch.uint8), labels=torch.empty(0, dtype=torch.int64),
                          keys=[], urls=[], is_padding=torch.empty(0, dtype=torch.bool), batch_id=0)
    with pytest.raises(ValueError, match="class 1 has no readable sample .* batch 0 has no real row"):
        balancer(empty, 1)


def test_feature_fn_emits_features(data):
    index, _, labels = data
    embed = lambda images: images.float().mean(dim=(2, 3))          # noqa: E731  (N, 3) features
    counts, batches = epoch_counts(StreamLoader(index.urls, batch_size=32, balance=ClassBalancer(synthesizer=SMOTE(), feature_fn=embed)))
    assert counts == imblearn_counts(labels, "auto")
    assert batches[0][0].shape[1:] == (3,) and batches[0][0].dtype == torch.float32


@pytest.mark.parametrize("cut", ["start", "middle", "end"])
@pytest.mark.parametrize("workers", [0, 2])
def test_resume_with_balancer_is_bit_identical(data, cut, workers):
    index, _, _ = data

    def make():
        return StreamLoader(index.urls, batch_size=16, seed=3, num_workers=workers,
                            balance=ClassBalancer(synthesizer=SMOTE(), reservoir_size=8))
    ref = make()
    epoch0 = [(b[0].clone(), b.keys) for b in ref]
    epoch1 = [(b[0].clone(), b.keys) for b in ref]
    stop = {"start": 0, "middle": 7, "end": len(epoch0)}[cut]
    first = make()
    it = iter(first)
    head = [(b[0].clone(), b.keys) for _, b in zip(range(stop), it)]
    state = first.state_dict()
    assert len(repr(state)) < 16384, "state holds keys, not pixels"
    resumed = make()
    resumed.load_state_dict(state)
    tail = [(b[0].clone(), b.keys) for b in resumed]
    expected = epoch0 + epoch1 if cut == "end" else epoch0
    assert len(head) + len(tail) == len(expected)
    for (x, k), (y, j) in zip(head + tail, expected):
        assert k == j and torch.equal(x, y)


def test_ranks_split_targets_exactly_with_equal_lengths(data):
    index, _, labels = data
    total, lengths = collections.Counter(), []
    for rank in range(3):
        loader = StreamLoader(index.urls, batch_size=16, world_size=3, rank=rank, num_workers=2,
                              balance=ClassBalancer())
        counts, batches = epoch_counts(loader)
        total += counts
        lengths.append([len(b[1]) for b in batches])
    assert total == imblearn_counts(labels, "auto")
    assert lengths[0] == lengths[1] == lengths[2]



@pytest.mark.parametrize("targets,world_size", [({1: 180, 2: 180}, 2), ({1: 160, 2: 157, 3: 163}, 3),
                                                ({1: 5, 2: 1, 3: 0, 4: 7}, 4), ({1: 3}, 5)])
def test_each_rank_carries_every_class_in_proportion(targets, world_size):
    """Per class, ranks get n // W or one more; rank totals are those of a slot-by-slot deal.
    (Taking every W-th slot of the interleaved sequence gave rank 0 all 180 of class 1 and
    rank 1 all 180 of class 2: the sequence [1, 2, 1, 2, ...] repeats with period W.)"""
    from streamaug.samplers.slot_schedule import rank_slots
    per_rank = [np.bincount(rank_slots(targets, world_size, r), minlength=5) for r in range(world_size)]
    total = sum(targets.values())
    for r, counts in enumerate(per_rank):
        assert counts.sum() == -(-(total - r) // world_size), "rank totals as before (the epoch plan's)"
        for c, n in targets.items():
            assert n // world_size <= counts[c] <= -(-n // world_size), (r, c, counts)
    assert (sum(per_rank)[list(targets)] == list(targets.values())).all()


def test_two_ranks_each_synthesize_both_minority_classes(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (240, 4, 4, 3), dtype=np.uint8)
    labels = np.repeat([0, 1, 2], [200, 20, 20])
    index = write_shards((images, labels), str(tmp_path), maxcount=40, progress=False)
    for rank in range(2):
        loader = StreamLoader(index.urls, batch_size=16, world_size=2, rank=rank, balance=ClassBalancer())
        made = collections.Counter()
        for b in loader:
            made.update(b.hard_labels[b.is_synthetic & ~b.is_padding].tolist())
        assert made == {1: 90, 2: 90}, (rank, made)


def test_a_moved_dataset_keeps_its_reservoirs(tmp_path):
    """A class larger than reservoir_size keeps a seeded subset; it depends on the shards'
    file names and keys, not their folder (as the state's fingerprint assumes)."""
    import shutil
    index, _, _ = imbalanced(tmp_path / "a", n=400, size=4)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    keys = []
    for folder in ("a", "b"):
        balancer = ClassBalancer(synthesizer=SMOTE(), reservoir_size=16)
        next(iter(StreamLoader(str(tmp_path / folder), batch_size=32, balance=balancer)))
        keys.append({c: sorted(k for _, k in balancer.reservoir_.entries[c]) for c in range(4)})
    assert keys[0] == keys[1] and sum(len(k) for k in keys[0].values()) == 48

def test_shards_of_one_file_name_are_numbered_in_the_order_the_label_pass_meets_them():
    """The reservoir subset hashes each shard's file name; two shards of one name in two folders
    are told apart by the order they are met in, not by their folders."""
    from streamaug.samplers.reservoir_fill import needed_classes, shard_names

    assert shard_names(["/d/b/x.tar", "/d/a/x.tar", "/d/a/y.tar", "/d/c/x.tar"]) == {
        "/d/b/x.tar": "x.tar", "/d/a/x.tar": "x.tar#1", "/d/a/y.tar": "y.tar", "/d/c/x.tar": "x.tar#2"}
    assert needed_classes([5, 0, 3, 9], {1: 4, 2: 6, 3: 0}, uses_all_classes=False) == {2}
    assert needed_classes([5, 0, 3, 9], {1: 4, 2: 6, 3: 0}, uses_all_classes=True) == {0, 2, 3}


def test_loader_with_balancer_and_workers_is_freed_promptly(data):
    """Regression: a loader↔balancer reference cycle left persistent workers to the cyclic GC,
    whose shutdown then waited out torch's 5 s join timeout per worker. The loader is now freed
    by reference counting alone, the cyclic GC off. (This was timed, < 2 s: 2.9 s on a loaded
    machine, s42.)"""
    import gc
    import weakref

    index, _, _ = data
    loader = StreamLoader(index.urls, batch_size=32, num_workers=2, balance=ClassBalancer())
    epoch_counts(loader)
    freed = weakref.ref(loader)
    gc.disable()
    try:
        del loader
        assert freed() is None, "a reference cycle keeps the loader (and its workers) for the cyclic GC"
    finally:
        gc.enable()
    with StreamLoader(index.urls, batch_size=32, num_workers=2) as closing:
        next(iter(closing))
    assert closing._dataloader is None


def optimal_shortfall(real: np.ndarray, slots: int, want: float, budgeted: list[int]) -> float:
    """Reference: the least total under-representation of the budgeted classes reachable by
    adding ``slots`` rows to them (water-filling the largest deficit first)."""
    have = real.astype(float).copy()
    for _ in range(slots):
        c = max(budgeted, key=lambda k: want - have[k])
        have[c] += 1
    return float(np.maximum(0, want - have[budgeted]).sum())


@pytest.mark.parametrize("workers", [0, 2])
def test_stratified_batches_reach_the_best_mix_the_real_rows_allow(data, workers):
    """Rows can only be added: stratification fills the classes furthest below their share."""
    index, _, labels = data
    budgeted = [1, 2, 3]                                   # "auto": the majority, class 0, gets none

    def shortfalls(stratified):
        loader = StreamLoader(index.urls, batch_size=32, seed=5, num_workers=workers,
                              balance=ClassBalancer("auto", stratified=stratified))
        counts, batches = epoch_counts(loader)
        assert counts == imblearn_counts(labels, "auto"), "per-epoch totals stay exact"
        got, best = [], []
        for b in batches:                                  # (the last 3 went short: red team s34)
            want = 0.25 * len(b.hard_labels)
            final = np.bincount(b.hard_labels.numpy(), minlength=4)
            real = np.bincount(b.hard_labels[~b.is_synthetic].numpy(), minlength=4)
            got.append(float(np.maximum(0, want - final[budgeted]).sum()))
            best.append(optimal_shortfall(real, int(b.is_synthetic.sum()), want, budgeted))
        return np.array(got), np.array(best), loader

    plain, _, _ = shortfalls(False)
    got, best, loader = shortfalls(True)
    assert np.abs(got - best)[:-1].max() <= 0.5, (got, best)    # (the last batch takes the budgets left)
    assert got.mean() < plain.mean() / 1.5, (got.mean(), plain.mean())
    state = loader.state_dict()
    assert "budget" in state["balance"] and sum(state["balance"]["budget"]) == 0


@pytest.mark.parametrize("order", ["majority first", "majority last"])
def test_stratified_classes_spend_their_budgets_at_one_pace(tmp_path, order):
    """Red team s34: ties went to the lowest class id, whose budget ran out first, so the epoch's
    last batches lacked it ([4, 1, 0, 11] rows for 4 classes of 300, 60, 20 and 8, auto); with
    the ids reversed, the other way round ([0, 0, 12, 4])."""
    labels = np.array([0] * 300 + [1] * 60 + [2] * 20 + [3] * 8)
    np.random.default_rng(4).shuffle(labels)
    if order == "majority last":
        labels = 3 - labels
    images = np.random.default_rng(0).integers(0, 256, (len(labels), 4, 4, 3), dtype=np.uint8)
    index = write_shards((images, labels), str(tmp_path) + "/", maxcount=100, progress=False)
    loader = StreamLoader(index.urls, batch_size=32, balance=ClassBalancer("auto", stratified=True), device="cpu")
    for j, b in enumerate(loader):
        rows = np.bincount(b.hard_labels.numpy(), minlength=4)
        assert rows.min() >= len(b.hard_labels) / 4 / 2, (j, rows.tolist())


def test_pool_rows_are_the_pools_rows_without_building_it():
    from streamaug.samplers import ClassReservoir

    rng = np.random.default_rng(0)
    res = ClassReservoir(4, capacity=8)
    for c, n in ((0, 5), (2, 3), (3, 6)):                 # class 1 empty: not in the pool
        res.fill(c, torch.from_numpy(rng.integers(0, 256, (n, 2, 3), dtype=np.uint8)), [("u", f"{c}{i}") for i in range(n)])
    pool, _ = res.pool()
    indices = np.array([13, 0, 5, 5, 7, 4, 8, 0])
    rows, where = res.pool_rows(indices)
    assert rows.dtype == torch.uint8 and len(rows) == len(set(indices.tolist()))
    assert torch.equal(rows[torch.from_numpy(where)].float(), pool[torch.from_numpy(indices)])


def test_a_small_class_costs_its_rows_and_a_growing_one_keeps_exact_distances():
    """Red team s34: every class's buffers were ``capacity`` rows (and a capacity² distance
    table) however few samples it held: 3 GiB for 6 MiB of pixels with 99 classes of 5."""
    from streamaug.samplers import ClassReservoir

    rng = np.random.default_rng(0)
    res = ClassReservoir(2, capacity=512)
    res.fill(0, torch.from_numpy(rng.integers(0, 256, (5, 3, 8, 8), dtype=np.uint8)), [("u", f"a{i}") for i in range(5)])
    res.distances(0)
    row = 3 * 8 * 8
    assert res.memory_bytes() == 5 * row + 5 * row * 4 + 5 * 5 * 4, "5 rows, their float copy, 5x5 distances"
    for step in range(9):                 # a streamed class: grows past its buffers, distances kept up to date
        x = torch.from_numpy(rng.integers(0, 256, (90, 3, 8, 8), dtype=np.uint8))
        res.add(x, torch.ones(90, dtype=torch.int64), [f"b{step}_{i}" for i in range(90)], ["u"] * 90, rng)
        members = res.members(1).flatten(1).float()
        assert torch.allclose(res.distances(1), torch.cdist(members, members), atol=1e-3), step
        assert torch.equal(res.flat_members(1), members)
    assert int(res.size[1]) == 512 and len(res.storage[1]) == 512, "full at capacity, and no more"


@pytest.mark.parametrize("workers", [0, 2])
def test_a_sample_the_reservoir_cannot_read_is_counted_once_across_a_resume(tmp_path, workers):
    """The reservoir fill skips an unreadable minority sample (``reservoir_unreadable``); a resumed
    loader fills again, and its restored stats already count it (it was counted twice)."""
    from loader_states import states_after_each
    from shard_factory import good_members, write_custom

    members = good_members(24)
    members[2 * 5] = ("s_00005.npy", b"not an npy")                      # class 1, the minority
    for i in range(24):
        members[2 * i + 1] = (f"s_{i:05d}.cls", b"1" if i % 4 == 1 else b"0")
    index = write_custom(str(tmp_path), {"a.tar": members}, {"a.tar": [18, 6]})

    def make():
        return StreamLoader(index.urls, batch_size=6, num_workers=workers, shuffle=0, on_error="skip",
                            device="cpu", index=index, balance=ClassBalancer("auto", SMOTE(k_neighbors=2)))
    with make() as full:
        n = sum(1 for _ in full)
        counts = dict(full.stats.skipped)
    assert counts == {"reservoir_unreadable": 1, "format_mismatch": 1}
    states = states_after_each(make, n - 1)
    for taken in range(1, n):
        with make() as resumed:
            resumed.load_state_dict(states[taken])
            list(resumed)
            assert dict(resumed.stats.skipped) == counts, taken
    with make() as rewound:                 # a filled loader given a state from before its fill
        before = rewound.state_dict()
        list(rewound)
        rewound.load_state_dict(before)
        list(rewound)
        assert dict(rewound.stats.skipped) == counts


def test_a_member_of_a_subsampled_class_counts_for_the_samples_it_stands_for():
    from types import SimpleNamespace

    from streamaug.samplers.neighbour_tables import other_class_share
    # class 0 holds 2 of its 8 samples (each stands for 4), class 1 holds all 3 of its 3
    reservoir = SimpleNamespace(num_classes=2, size=np.array([2, 3]), represents=np.array([8, 3]))
    # pool rows: 0, 1 are class 0; 2, 3, 4 class 1. m = 4 nearest, nearest first:
    neighbours = np.array([[3, 0, 1, 4],      # one of its class, then a class-0 member: 1 + 3 of 4 counted
                           [0, 3, 4, 1],      # a class-0 member first: it stands for all 4
                           [3, 4, 2, 0]])     # its own class only: 3 of 4, then 1 of the class-0 member
    assert other_class_share(reservoir, 1, neighbours).tolist() == [0.75, 1.0, 0.25]
    whole = SimpleNamespace(num_classes=2, size=np.array([2, 3]), represents=np.array([2, 3]))
    assert other_class_share(whole, 1, neighbours).tolist() == [0.5, 0.5, 0.25]    # plain counts


def test_borderline_danger_stays_near_imblearns_when_the_majority_is_subsampled(tmp_path):
    """A majority of 3,000 kept at 512: counting members alone found 30 danger samples
    against imbalanced-learn's 71, 17 of them in common (red team, s32). The table in docs/balancing.md
    is ``python -m streamaug.benchmarks.borderline_danger``."""
    from streamaug.benchmarks.borderline_danger import danger_sets
    ours, theirs, kept = danger_sets(3000, str(tmp_path))
    assert kept == 512
    assert len(ours & theirs) >= 0.6 * len(theirs) and len(ours) <= 1.5 * len(theirs), (len(ours), len(theirs))


def test_a_streamed_reservoirs_members_stand_for_one_epochs_count_not_a_growing_one(tmp_path):
    """Red team s32: without an index, `seen` counts a sample again each epoch it comes back
    after eviction, and the weight of a majority member grew epoch by epoch (6 → 32)."""
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], [300, 60, 40])
    write_shards((rng.integers(0, 256, (400, 4, 4, 3), np.uint8), labels), str(tmp_path), maxcount=100,
                 progress=False)
    balancer = ClassBalancer("auto", BorderlineSMOTE(k_neighbors=3), reservoir_size=64)
    loader = StreamLoader(str(tmp_path), batch_size=32, index=False, num_classes=3, balance=balancer)
    represented = []
    for _ in range(3):
        list(loader)
        represented.append(balancer.reservoir_.represents.tolist())
    assert represented == [[300, 60, 40]] * 3, represented
    assert balancer.reservoir_.seen[0] > 300            # (what the weight used to follow)


def test_two_shards_of_one_name_in_two_folders_are_subsampled_independently(tmp_path):
    """Red team s32: hashing (file name, key) alone tied sample k of a/ and of b/, so the
    reservoir's subset always held them in pairs."""
    from streamaug.loader import build_index
    rng = np.random.default_rng(0)
    for sub in ("a", "b"):
        write_shards((rng.integers(0, 256, (220, 4, 4, 3), np.uint8), np.repeat([0, 1], [200, 20])),
                     str(tmp_path / sub), maxcount=1000, progress=False)
        (tmp_path / sub / "index.json").unlink()
    urls = [str(tmp_path / "a" / "train-000000.tar"), str(tmp_path / "b" / "train-000000.tar")]
    build_index(urls, out=str(tmp_path / "index.json"), progress=False)
    balancer = ClassBalancer("auto", SMOTE(), reservoir_size=10)
    next(iter(StreamLoader(urls, index=str(tmp_path / "index.json"), batch_size=16, balance=balancer)))
    kept = balancer.reservoir_.entries[1]
    from_a = sorted(k for u, k in kept if "/a/" in u)
    from_b = sorted(k for u, k in kept if "/b/" in u)
    assert len(kept) == 10 and from_a != from_b


def test_the_reservoir_fill_decodes_on_threads_with_the_rows_and_skips_of_one_thread(tmp_path, monkeypatch):
    """The fill decodes on several threads (perf red team s42: 7-9 s before the first batch at
    1,000 classes, 224², decoded one by one). The rows, their order, and what is skipped (an
    undecodable sample, an image of another size) are those of one thread."""
    import streamaug.loader.sample_lookup as sample_lookup
    from shard_factory import good_members, npy_bytes, write_custom

    members = good_members(60)
    for i in range(60):
        members[2 * i + 1] = (f"s_{i:05d}.cls", b"1" if i % 3 == 1 else b"0")
    members[2 * 4] = ("s_00004.npy", b"not an npy")                          # class 1
    members[2 * 7] = ("s_00007.npy", npy_bytes(np.zeros((6, 6, 3), np.uint8)))   # class 1, another size
    index = write_custom(str(tmp_path), {"a.tar": members}, {"a.tar": [40, 20]})
    filled = []
    for threads in (1, 3):
        monkeypatch.setattr(sample_lookup, "decode_threads", lambda: threads)
        balancer = ClassBalancer("auto", SMOTE(k_neighbors=2))
        with StreamLoader(index.urls, batch_size=6, shuffle=0, on_error="skip", device="cpu", index=index,
                          balance=balancer) as loader:
            next(iter(loader))
            filled.append((balancer.reservoir_.members(1).clone(), list(balancer.reservoir_.entries[1]),
                           dict(loader.stats.skipped)))
    assert torch.equal(filled[0][0], filled[1][0]) and filled[0][1:] == filled[1][1:]
    assert len(filled[0][1]) == 18 and filled[0][2]["reservoir_unreadable"] == 2, filled[0][2]


def test_rows_decoded_on_threads_come_in_their_order_and_a_bounded_way_ahead():
    import threading
    import time

    from streamaug.loader.sample_lookup import decoded_in_order

    started, lock = [], threading.Lock()

    def decode(i):
        with lock:
            started.append(i)
        time.sleep(0.002 * (7 - i % 7))          # later items often finish first
        return i * i

    out = []
    for item, value in decoded_in_order(iter(range(60)), decode, threads=3):
        with lock:
            assert max(started) < item + 4 * 3 + 1, (item, max(started))   # at most 12 ahead
        out.append((item, value))
    assert out == [(i, i * i) for i in range(60)]
    started.clear()
    it = decoded_in_order(iter(range(60)), decode, threads=3)
    next(it)
    it.close()                                    # left early: what is queued is dropped, no thread hangs
    assert len(started) < 60
