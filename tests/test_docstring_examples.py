"""The ``>>>`` examples in the library's docstrings run and print what they show. Those marked
``# doctest: +SKIP`` need what a docstring cannot make (shards, a GPU, a running loader, a
process to end); each is listed in SKIPPED, so a new one is a decision, not a way out."""
from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

PACKAGES = ("streamaug.loader", "streamaug.ops", "streamaug.samplers", "streamaug.core", "streamaug.cli",
            "streamaug.benchmarks")


def modules() -> list[str]:
    names = []
    for package in PACKAGES:
        names.append(package)
        path = importlib.import_module(package).__path__
        names += [m.name for m in pkgutil.walk_packages(path, prefix=package + ".")
                  if not m.name.endswith("__main__")]     # running it would start the command line
    return names


MODULES = modules()


SKIPPED = {"streamaug.loader.index_builder": 1, "streamaug.loader.stream_loader": 2,
           "streamaug.samplers.class_balancer": 2, "streamaug.core.threads": 1,
           "streamaug.core.process_exit": 1, "streamaug.benchmarks.busy_workers": 1}


def test_the_examples_are_found_and_only_the_listed_ones_skipped():
    found, skipped = {}, {}
    for name in MODULES:
        for test in doctest.DocTestFinder().find(importlib.import_module(name)):
            found[name] = found.get(name, 0) + len(test.examples)
            n = sum(bool(e.options.get(doctest.SKIP)) for e in test.examples)
            if n:
                skipped[name] = skipped.get(name, 0) + n
    assert skipped == SKIPPED
    assert len(found) >= 12 and sum(found.values()) >= 40, found


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS, report=False)
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} docstring examples failed " \
                               f"(run: python -m doctest -v on the module)"
