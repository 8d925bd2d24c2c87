"""Layers point one way (core ← ops, samplers ← loader ← cli, benchmarks), and plug-ins
meet an explicit contract."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys

import pytest
import torch

from shard_factory import make_shards
from streamaug.core import BatchInFlight, BindContext
from streamaug.loader import StreamLoader
from streamaug.samplers import ClassBalancer, NotFittedError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = {"core": "core", "ops": "ops", "samplers": "samplers", "loader": "loader", "cli": "cli",
            "benchmarks": "benchmarks"}
# What each layer may import from streamaug (anywhere in its files).
ALLOWED = {"core": {"core"}, "ops": {"core", "ops"}, "samplers": {"core", "samplers"},
           "loader": {"core", "ops", "samplers", "loader"},
           "cli": set(PACKAGES), "benchmarks": {"core", "ops", "samplers", "loader", "benchmarks"}}
# Deprecated names kept as forwarders to their new homes (imported only when used).
DEPRECATION_SHIMS = {("loader/__init__.py", "streamaug.benchmarks.demo_data"),
                     ("loader/shard_writer.py", "streamaug.benchmarks.demo_data"),
                     ("loader/cli.py", "streamaug.cli")}


def _new_modules(setup: str, code: str) -> list[str]:
    script = (f"import sys; {setup}; before = set(sys.modules); {code}; "
              "import json; print(json.dumps(sorted(set(sys.modules) - before)))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd="/")
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_ops_and_samplers_import_with_torch_and_numpy_only():
    new = _new_modules("import torch, numpy", "import streamaug.core, streamaug.ops, streamaug.samplers")
    foreign = sorted({m.split(".")[0] for m in new} - {"streamaug"} - set(sys.stdlib_module_names))
    assert foreign == [], f"import streamaug.ops/samplers pulled in {foreign}"
    assert not [m for m in new if m.startswith(("streamaug.loader", "streamaug.benchmarks", "streamaug.cli"))]


def test_loader_imports_neither_the_command_nor_the_benchmarks():
    new = _new_modules("import torch", "import streamaug.loader")
    assert not [m for m in new if m.startswith(("streamaug.benchmarks", "streamaug.cli"))]


def _streamaug_imports(path: str) -> set[str]:
    tree = ast.parse(open(path).read(), path)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return {n for n in names if n.startswith("streamaug.")}


@pytest.mark.parametrize("layer", sorted(PACKAGES))
def test_every_file_imports_only_lower_layers(layer):
    bad = []
    for dirpath, _, files in os.walk(os.path.join(ROOT, PACKAGES[layer])):
        for f in files:
            if not f.endswith(".py"):
                continue
            rel = os.path.relpath(os.path.join(dirpath, f), ROOT)
            for module in _streamaug_imports(os.path.join(ROOT, rel)):
                target = module.split(".")[1]
                if target not in ALLOWED[layer] and (rel, module) not in DEPRECATION_SHIMS:
                    bad.append(f"{rel} imports {module}")
    assert bad == []


def test_deprecated_locations_still_work_and_warn(capsys):
    from streamaug.loader.cli import main as old_cli
    with pytest.warns(DeprecationWarning, match="use streamaug.cli"), pytest.raises(SystemExit) as done:
        old_cli(["shards", "--help"])
    assert done.value.code == 0 and "usage: streamaug shards" in capsys.readouterr().out
    from streamaug.core.seeding import derive_seed as new
    from streamaug.loader.seeding import derive_seed as old
    assert old is new
    import streamaug.loader as loader_pkg
    with pytest.warns(DeprecationWarning, match="demo_data"):
        images, labels = loader_pkg.load_digits_32()
    assert images.shape == (1797, 32, 32, 1)


# ---------------------------------------------------------------- the plug-in contract
@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_shards(str(tmp_path_factory.mktemp("layers")), n=40, maxcount=10)


def test_a_wrong_plugin_is_refused_when_the_loader_is_built(shards):
    index, _, _ = shards
    with pytest.raises(TypeError, match="augment= must meet streamaug.core.plugin.Augmenter .* got function"):
        StreamLoader(index.urls, batch_size=8, augment=lambda x: x)
    with pytest.raises(TypeError, match="balance= must meet streamaug.core.plugin.Balancer .* got str"):
        StreamLoader(index.urls, batch_size=8, balance="auto")
    # newcomer s33: one op, a list of ops and a per-image transform got the protocol's name alone
    from streamaug.ops import Flip, Rotate
    for given, hint in ((Flip(), r"wrap the op in streamaug.ops.Compose\(\[Flip\(...\)\]\)"),
                        ([Flip(), Rotate(10)], r"wrap the ops in one streamaug.ops.Compose\(\[...\]\)"),
                        (lambda image: image, "a per-image transform .* does not run on batches")):
        with pytest.raises(TypeError, match="augment= must meet .*" + hint):
            StreamLoader(index.urls, batch_size=8, augment=given)
    # newcomer s34: a synthesizer, a name or True as balance= named the protocol alone
    from streamaug.samplers import ADASYN, SMOTE, ClassBalancer
    for given, shown in ((ADASYN(), "ADASYN"), (ADASYN, "ADASYN"), ("smote", "SMOTE"), (True, "SMOTE")):
        with pytest.raises(TypeError, match=r"balance= must meet .*pass a streamaug.samplers.ClassBalancer, e.g. "
                                            rf'balance=ClassBalancer\("auto", synthesizer={shown}\(\)\)'):
            StreamLoader(index.urls, batch_size=8, balance=given)
    for given in (SMOTE(), SMOTE):                # (the class was taken as a callable strategy, failing later)
        with pytest.raises(ValueError, match=r'SMOTE is a synthesizer: ClassBalancer\("auto", synthesizer=SMOTE'):
            ClassBalancer(given)


def test_a_balancer_given_to_a_second_loader_stops_the_first_by_name(shards):
    """Red team s33: the second loader took the balancer's slots over and the first failed at its
    next batch, "batch asks for 8 synthetic samples, 4 slots are left", naming no cause. Refusing the
    second loader instead broke a loader built again under the same name, and one per fold."""
    import copy

    from streamaug.samplers import SMOTE, ClassBalancer
    index, _, _ = shards
    balancer = ClassBalancer("auto", SMOTE())
    first = StreamLoader(index.urls, batch_size=8, balance=balancer)
    running = iter(first)
    next(running)
    second = StreamLoader(index.urls, batch_size=8, balance=balancer)
    for use in (lambda: next(running), lambda: list(first)):
        with pytest.raises(RuntimeError, match="was given to another StreamLoader built after this one"):
            use()
    assert len(list(second)) == len(first)
    own = StreamLoader(index.urls, batch_size=8, balance=copy.deepcopy(balancer))
    assert len(list(own)) == len(first)
    for _ in range(2):                                   # (the same name, built again; a loader per fold)
        loader = StreamLoader(index.urls, batch_size=8, balance=balancer)
        assert len(list(loader)) == len(first)
        loader.close()


class CountingBalancer:
    """A third-party balancer written against the protocol alone: one repeat per batch."""
    seed = None

    def __init__(self):
        self.context = None
        self.seeds_seen = []

    def manual_seed(self, seed):
        self.seeds_seen.append(seed)

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass

    def bind(self, context: BindContext):
        self.context = context

    def synthetic_counts(self):
        return 0, 0

    def __call__(self, batch: BatchInFlight, n_synthetic):
        first = batch.images[:1]
        batch.extend(first, [int(batch.labels[0])], ["again"], [batch.urls[0]], [None], [True], [False])
        return batch


def test_a_balancer_sees_only_its_bind_context(shards):
    index, _, _ = shards
    balancer = CountingBalancer()
    loader = StreamLoader(index.urls, batch_size=8, balance=balancer, seed=3)
    assert balancer.context.class_counts == index.class_counts and balancer.context.rank == 0
    assert not hasattr(balancer.context, "loader") and isinstance(balancer.context.seed, int)
    batches = list(loader)
    # reseeded once per batch, each batch its own seed (derived from seed, epoch, rank, batch)
    assert len(balancer.seeds_seen) == len(batches) == len(set(balancer.seeds_seen))
    assert all(len(b.keys) == 9 and b.keys[-1] == "again" and bool(b.is_synthetic[-1]) for b in batches)
    assert loader.stats.synthetic == len(batches)


def test_a_protocol_only_balancer_runs_without_an_index(shards):
    """``held_back_parts`` is optional: a balancer with only ``__call__`` got ``max_rows=`` and
    failed on the first index-free batch (red team). Its rows are cut to batch_size as ever."""
    index, _, _ = shards
    loader = StreamLoader(index.urls, batch_size=8, balance=CountingBalancer(), index=False,
                          num_classes=index.num_classes, shuffle=False)
    sizes = [len(b.keys) for b in loader]
    batches_read = -(-index.total // 8)
    assert sum(sizes) == index.total + batches_read and set(sizes[:-1]) == {8}
    assert loader.stats.synthetic == batches_read


def test_class_balancer_has_fitted_attributes_only_after_fitting():
    balancer = ClassBalancer("auto")
    assert not hasattr(balancer, "targets_")
    with pytest.raises(NotFittedError, match="not fitted yet"):
        balancer.synthetic_counts()
    with pytest.raises(NotFittedError):
        balancer.state_dict()
    balancer.fit([10, 4, 2])
    assert balancer.targets_ == {1: 6, 2: 8} and balancer.synthetic_counts() == (14, 14)
    with pytest.warns(DeprecationWarning, match="targets_"):
        assert balancer.targets == balancer.targets_


def test_batch_in_flight_fields_are_defined_once():
    batch = BatchInFlight(images=torch.zeros(2, 1, 2, 2, dtype=torch.uint8), labels=torch.tensor([0, 1]),
                          keys=["a", "b"], urls=["u", "u"], is_padding=torch.tensor([False, True]), batch_id=0)
    assert batch.is_synthetic.tolist() == [False, False] and batch.provenance == [None, None]
    assert batch.real.tolist() == [True, False]
    batch.permute([1, 0])
    assert batch.keys == ["b", "a"] and batch.is_padding.tolist() == [True, False]
