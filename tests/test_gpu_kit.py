"""The GPU-loan kit (``benchmarks/gpu_kit.py``) round trip, with tiny wheels of our own.

``prepare`` packs the DALI-side wheels in parts small enough for one call each; on the device,
``stash`` keeps each call's parts, ``assemble`` checks and unpacks them once all are there, and
``link`` makes ``streamaug`` importable from the checkout. The real kit was rehearsed by hand
(benchmarks/results/gpu/README.md); this keeps its logic from rotting between loans.
"""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import pytest

from streamaug.benchmarks import gpu_kit

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def fake_wheel(folder, name: str, version: str, files: dict[str, bytes]) -> str:
    path = os.path.join(folder, f"{name}-{version}-py3-none-any.whl")
    with zipfile.ZipFile(path, "w") as z:
        for member, data in files.items():
            z.writestr(member, data)
    return path


@pytest.fixture
def kit(tmp_path, monkeypatch):
    """A kit of one core wheel and a DALI-side wheel of 9 MiB of incompressible bytes, cut in
    parts of at most 6 MiB a call (the first call also carries the core wheel)."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    fake_wheel(wheels, "tinycore", "1.0", {"tinycore/__init__.py": b"X = 1\n"})
    payload = {"fakedali/__init__.py": b"__version__ = '9.9'\n",
               "fakedali/blob.bin": os.urandom(9 << 20),                         # (xz cannot shrink it)
               "fakedali/backend_impl.cpython-39-x86_64-linux-gnu.so": b"other ABI",
               "fakedali/include/header.h": b"headers stay behind",
               "fakedali/libnvtiff_ext.so.0.9.0": b"dropped"}
    fake_wheel(wheels, "fakedali", "9.9", payload)
    monkeypatch.setattr(gpu_kit, "CORE", ["tinycore==1.0"])
    monkeypatch.setattr(gpu_kit, "FLOOR", [])
    monkeypatch.setattr(gpu_kit, "DALI", ["fakedali==9.9"])
    monkeypatch.setattr(gpu_kit, "DROP", {"libnvtiff_ext.so.0.9.0"})
    monkeypatch.setattr(gpu_kit, "_tree_bytes", lambda repo: 0)
    out = tmp_path / "carry"
    gpu_kit.prepare(str(out), [str(wheels)], str(tmp_path / "cache"), call_mib=6.0, repo=REPO, level=0)
    return out, payload


def test_parts_fit_one_call_each_and_unpack_only_once_all_are_there_and_intact(kit, tmp_path, capsys):
    out, payload = kit
    folders = sorted(f for f in os.listdir(out) if f.startswith("dali"))
    assert len(folders) >= 2
    core = sum(os.path.getsize(os.path.join(out, "core", f)) for f in os.listdir(out / "core") if f.endswith(".whl"))
    sizes = [sum(os.path.getsize(os.path.join(out, d, f)) for f in os.listdir(out / d)) for d in folders]
    assert core + sizes[0] <= 6 << 20 and all(s <= 6 << 20 for s in sizes), (core, sizes)

    parts, site = str(tmp_path / "parts"), str(tmp_path / "site")
    for i, folder in enumerate(folders):                 # one call each: only that folder is carried
        call = tmp_path / f"call{i}"
        (call / folder).mkdir(parents=True)
        for f in os.listdir(out / folder):
            (call / folder / f).write_bytes((out / folder / f).read_bytes())
        assert gpu_kit.stash(str(call), parts) == 0
        if i < len(folders) - 1:
            assert gpu_kit.assemble(parts, site) == 3, "unpacked before every part was there"
    assert f"{len(folders)}/{len(folders)}" in capsys.readouterr().out

    first = os.path.join(parts, sorted(p for p in os.listdir(parts) if p.startswith(gpu_kit.PAYLOAD))[0])
    good = open(first, "rb").read()
    with open(first, "r+b") as f:                        # a part damaged on the way is refused
        f.seek(100)
        f.write(bytes([good[100] ^ 1]))
    assert gpu_kit.assemble(parts, site) == 3 and not os.path.exists(os.path.join(site, "fakedali"))
    assert f"damaged (size or sha256 not the manifest's): {os.path.basename(first)}" in capsys.readouterr().out
    with open(first, "wb") as f:
        f.write(good)

    assert gpu_kit.assemble(parts, site) == 0
    assert open(os.path.join(site, "fakedali", "blob.bin"), "rb").read() == payload["fakedali/blob.bin"]
    left_out = ("backend_impl.cpython-39-x86_64-linux-gnu.so", "include", "libnvtiff_ext.so.0.9.0")
    assert not any(os.path.exists(os.path.join(site, "fakedali", f)) for f in left_out)
    assert gpu_kit.assemble(parts, site) == 0 and "already unpacked" in capsys.readouterr().out


@pytest.mark.skipif(sys.version_info < (3, 11), reason="link reads pyproject.toml with tomllib (3.11+), as on the device")
def test_link_makes_streamaug_importable_from_the_checkout(tmp_path):
    """From a copy of the checkout, so that it is not the editable install that answers."""
    import shutil
    import tomllib

    checkout = tmp_path / "checkout"
    checkout.mkdir()
    shutil.copy(os.path.join(REPO, "pyproject.toml"), checkout)
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        for folder in tomllib.load(f)["tool"]["setuptools"]["package-dir"].values():
            shutil.copytree(os.path.join(REPO, folder), checkout / folder, ignore=shutil.ignore_patterns("results"))
    site = str(tmp_path / "site")
    assert gpu_kit.link(str(checkout), site) == 0
    code = ("import streamaug.loader, streamaug.ops, streamaug.samplers, importlib.metadata as m; "
            "print(streamaug.loader.__file__, m.version('streamaug'))")
    run = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {site!r}); {code}"],
                         capture_output=True, text=True, timeout=120, cwd=str(tmp_path))
    assert run.returncode == 0, run.stderr[-2000:]
    path, version = run.stdout.split()
    assert os.path.realpath(path) == str((checkout / "loader" / "__init__.py").resolve()) and version == "0.1.0"
