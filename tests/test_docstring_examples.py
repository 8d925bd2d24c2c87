"""The ``>>>`` examples in the library's docstrings run and print what they show (those
marked ``# doctest: +SKIP`` need shards or a GPU that a docstring cannot make)."""
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


def test_the_examples_are_found():
    examples = sum(len(t.examples) for name in MODULES
                   for t in doctest.DocTestFinder().find(importlib.import_module(name)))
    assert examples >= 25, examples


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS, report=False)
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} docstring examples failed " \
                               f"(run: python -m doctest -v on the module)"
