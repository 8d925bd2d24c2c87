"""The wheels a lent GPU machine lacks, packed to travel with the device tool's ``carry``.

The device machine has no network and takes at most 64 MiB a call (the working tree
included), so its missing packages travel as folders under ``.gpu_carry/`` (git-ignored):

    python -m streamaug.benchmarks.gpu_kit prepare --out .gpu_carry      # here, with network

* ``core/``: the small wheels (Kornia, WebDataset, imbalanced-learn, albumentations and
  their needs, DALI's pure-Python needs), installed there with ``pip --target``;
* ``dali1/``, ``dali2/``, ...: NVIDIA DALI and the codec libraries it loads (nvImageCodec,
  nvJPEG), unpacked, cut down to CPython 3.12 without headers,
  stripped, as one ``tar.xz`` cut in parts; ``dali1`` fits beside ``core`` in one call.
  Each folder holds ``manifest.json`` (every part's sha256 and the whole's).

On the device, ``benchmarks/gpu_loan.sh`` runs the other commands with the plain
``python3`` (stdlib only: streamaug is not importable yet, and there is no zstd there):

    python3 benchmarks/gpu_kit.py stash .gpu_carry /tmp/dali_parts     # keep the parts carried
    python3 benchmarks/gpu_kit.py assemble /tmp/dali_parts /tmp/site   # all there: check, unpack once
    python3 benchmarks/gpu_kit.py link . /tmp/site                     # streamaug.* -> this checkout
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile

MiB = 1 << 20
# What the device image (KINDS.md, 'Python packages already there') lacks, pinned.
CORE = ["kornia==0.9.0", "kornia-rs==0.2.0", "webdataset==1.0.2", "braceexpand==0.1.7",
        "imbalanced-learn==0.14.2", "sklearn-compat==0.1.6", "albumentations==2.0.8", "albucore==0.0.24",
        "stringzilla==5.3.2", "simsimd==6.5.16", "pydantic==2.14.4", "pydantic-core==2.50.5",
        "annotated-types==0.8.0", "typing-inspection==0.4.5",
        # nvidia-dali-cuda130's own needs (six, packaging, numpy are there)
        "astunparse==1.6.3", "gast==0.7.0", "makefun==1.16.0", "nvtx==0.2.17", "optree==0.20.0", "libcst==1.9.0"]
# pydantic 2.14 needs typing-extensions >= 4.16: installed there only if the image's is older.
FLOOR = ["typing-extensions==4.16.0"]
# DALI and what it loads to decode JPEG, PNG and WebP. Left out (the bytes that would make a
# fourth call): nvJPEG2000, nvTIFF and nvCOMP (JPEG 2000 and TIFF on the GPU, fn.experimental.inflate;
# DALI and nvImageCodec dlopen them only for those) and nvImageCodec's extensions that load them.
DALI = ["nvidia-dali-cuda130==2.4.0", "nvidia-nvimgcodec-cu13==0.9.0.20", "nvidia-nvjpeg==13.3.2.43"]
DROP = {"libnvjpeg2k_ext.so.0.9.0", "libnvtiff_ext.so.0.9.0"}
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64"]
PAYLOAD = "dali.tar.xz"
PY = "cpython-312"          # the device's Python: other interpreters' extension modules are dropped


def wheel(spec: str, dirs: list[str], cache: str) -> str:
    """The wheel for ``name==version``: from ``dirs`` or the cache, else downloaded (pip)."""
    name, version = spec.split("==")
    stem = f"{name.replace('-', '_')}-{version}-".lower()
    for d in [*dirs, cache]:
        found = [p for p in glob.glob(os.path.join(d, "*.whl")) if os.path.basename(p).lower().startswith(stem)]
        if found:
            return sorted(found)[0]
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
           "3.12", "--implementation", "cp", *[a for p in PLATFORMS for a in ("--platform", p)], "--platform", "any",
           "-d", cache, spec]
    subprocess.run(cmd, check=True)
    return wheel(spec, [], cache)


def _payload_tree(wheels: list[str], stage: str) -> None:
    """Unpack the DALI-side wheels as pip would put them in site-packages, minus what a
    CPython 3.12 process never loads (other ABIs' modules, headers, scripts, DROP)."""
    for w in wheels:
        with zipfile.ZipFile(w) as z:
            for m in z.infolist():
                parts = m.filename.split("/")
                if m.is_dir() or parts[0].endswith(".data") or "include" in parts or parts[-1] in DROP \
                        or parts[-1] == "RECORD" or ("cpython-" in parts[-1] and PY not in parts[-1]):
                    continue
                path = z.extract(m, stage)
                if (m.external_attr >> 16) & 0o111:
                    os.chmod(path, 0o755)
    if shutil.which("strip"):
        for root, _, files in os.walk(stage):
            for f in files:
                p = os.path.join(root, f)
                with open(p, "rb") as fh:
                    elf = fh.read(4) == b"\x7fELF"
                if elf:
                    subprocess.run(["strip", "--strip-unneeded", p], check=True)


def _sha(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(MiB), b""):
            h.update(block)
    return h.hexdigest()


def _tree_bytes(repo: str) -> int:
    """What the device tool sends besides ``carry``: tracked and untracked-not-ignored files."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=repo, capture_output=True,
                         check=True).stdout.split(b"\0")
    return sum(os.path.getsize(os.path.join(repo, os.fsdecode(p))) for p in out if p
               and os.path.isfile(os.path.join(repo, os.fsdecode(p))))


def prepare(out: str, dirs: list[str], cache: str, call_mib: float, repo: str, level: int) -> None:
    t0 = time.perf_counter()
    if os.path.isdir(out):
        shutil.rmtree(out)
    core = os.path.join(out, "core")
    os.makedirs(os.path.join(core, "floor"))
    os.makedirs(cache, exist_ok=True)
    for spec in CORE:
        shutil.copy(wheel(spec, dirs, cache), core)
    for spec in FLOOR:
        shutil.copy(wheel(spec, dirs, cache), os.path.join(core, "floor"))
    core_bytes = sum(os.path.getsize(p) for p in glob.glob(os.path.join(core, "**", "*.whl"), recursive=True))
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        stage = os.path.join(tmp, "stage")
        _payload_tree([wheel(s, dirs, cache) for s in DALI], stage)
        unpacked = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(stage) for f in fs)
        whole = os.path.join(tmp, PAYLOAD)
        with open(whole, "wb") as sink:   # xz -T0 where there is one (fast here); python3 reads it there
            xz = subprocess.Popen(["xz", f"-{level}", "-T0", "-c"], stdin=subprocess.PIPE, stdout=sink)
            with tarfile.open(fileobj=xz.stdin, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                for name in sorted(os.listdir(stage)):
                    tar.add(os.path.join(stage, name), name, filter=lambda i: (setattr(i, "uid", 0), setattr(
                        i, "gid", 0), setattr(i, "uname", ""), setattr(i, "gname", ""), i)[-1])
            xz.stdin.close()
            if xz.wait() != 0:
                raise SystemExit("xz failed")
        slack = MiB // 4                             # manifests, folder entries
        first = int(call_mib * MiB) - _tree_bytes(repo) - core_bytes - slack
        rest = int(call_mib * MiB) - _tree_bytes(repo) - slack
        if first < 4 * MiB:
            raise SystemExit(f"core ({core_bytes / MiB:.1f} MiB) leaves no room for a DALI part in one call")
        parts, size = [], os.path.getsize(whole)
        with open(whole, "rb") as f:
            while f.tell() < size:
                n = len(parts) + 1
                folder = os.path.join(out, f"dali{n}")
                os.makedirs(folder)
                name = f"{PAYLOAD}.{n - 1:03d}"
                with open(os.path.join(folder, name), "wb") as g:
                    g.write(f.read(first if n == 1 else rest))
                parts.append({"folder": f"dali{n}", "file": name, "bytes": os.path.getsize(os.path.join(folder, name)),
                              "sha256": _sha(os.path.join(folder, name))})
        manifest = {"payload": PAYLOAD, "bytes": size, "sha256": _sha(whole), "unpacked_bytes": unpacked,
                    "parts": parts, "wheels": DALI, "core": CORE, "floor": FLOOR}
    for folder in ["core", *(p["folder"] for p in parts)]:
        with open(os.path.join(out, folder, "manifest.json"), "w") as f:
            json.dump(manifest, f, indent=1)
    print(f"core: {len(CORE)} wheels + {len(FLOOR)} floor, {core_bytes / MiB:.1f} MiB; DALI payload "
          f"{unpacked / MiB:.0f} MiB unpacked, {size / MiB:.1f} MiB xz in {len(parts)} parts: "
          + ", ".join(f"{p['folder']} {p['bytes'] / MiB:.1f} MiB" for p in parts)
          + f"; working tree {_tree_bytes(repo) / MiB:.1f} MiB ({time.perf_counter() - t0:.0f} s)")


def _manifest(folder: str) -> dict | None:
    found = sorted(glob.glob(os.path.join(folder, "manifest.json")) + glob.glob(os.path.join(folder, "*", "manifest.json")))
    if not found:
        return None
    with open(found[0]) as f:
        return json.load(f)


def _have(parts_dir: str, manifest: dict) -> list[str]:
    """The manifest's parts present in ``parts_dir`` with the right checksum."""
    ok = []
    for p in manifest["parts"]:
        path = os.path.join(parts_dir, p["file"])
        if os.path.exists(path) and os.path.getsize(path) == p["bytes"] and _sha(path) == p["sha256"]:
            ok.append(p["file"])
    return ok


def stash(carry: str, parts_dir: str) -> int:
    """Copy the parts carried this call to ``parts_dir`` (kept while the machine stays warm)."""
    os.makedirs(parts_dir, exist_ok=True)
    for folder in sorted(glob.glob(os.path.join(carry, "dali*"))):
        for path in glob.glob(os.path.join(folder, "*")):
            dest = os.path.join(parts_dir, os.path.basename(path))
            if not (os.path.exists(dest) and os.path.getsize(dest) == os.path.getsize(path)):
                shutil.copy(path, dest + ".tmp")
                os.replace(dest + ".tmp", dest)
    manifest = _manifest(parts_dir) or _manifest(carry)
    if manifest is None:
        print(f"dali parts: none carried and none in {parts_dir}")
        return 1
    have = _have(parts_dir, manifest)
    missing = [p["folder"] for p in manifest["parts"] if p["file"] not in have]
    print(f"dali parts: {len(have)}/{len(manifest['parts'])} in {parts_dir}"
          + (f"; still to carry: {', '.join(missing)}" if missing else "; complete"))
    return 0


class _Chain:
    """The parts read one after another as one file (for tarfile's stream mode)."""

    def __init__(self, paths):
        self.paths, self.f = list(paths), None

    def read(self, n=-1):
        while True:
            if self.f is None:
                if not self.paths:
                    return b""
                self.f = open(self.paths.pop(0), "rb")
            data = self.f.read(n)
            if data:
                return data
            self.f.close()
            self.f = None


def assemble(parts_dir: str, site: str) -> int:
    """Check every part and the whole against the manifest, then unpack into ``site`` (once)."""
    t0 = time.perf_counter()
    manifest = _manifest(parts_dir)
    if manifest is None:
        print(f"dali: no manifest in {parts_dir}")
        return 3
    marker = os.path.join(site, ".dali-" + manifest["sha256"][:16])
    if os.path.exists(marker):
        print("dali: already unpacked")
        return 0
    have = _have(parts_dir, manifest)
    if len(have) < len(manifest["parts"]):
        bad = [p["file"] for p in manifest["parts"]
               if p["file"] not in have and os.path.exists(os.path.join(parts_dir, p["file"]))]
        print(f"dali: {len(have)}/{len(manifest['parts'])} parts, not unpacked"
              + (f"; damaged (size or sha256 not the manifest's): {', '.join(bad)}" if bad else ""))
        return 3
    paths = [os.path.join(parts_dir, p["file"]) for p in manifest["parts"]]
    h, chain = hashlib.sha256(), _Chain(paths)
    for block in iter(lambda: chain.read(MiB), b""):
        h.update(block)
    if h.hexdigest() != manifest["sha256"]:
        print("dali: the whole's sha256 does not match the manifest")
        return 4
    checked = time.perf_counter() - t0
    os.makedirs(site, exist_ok=True)
    with tarfile.open(fileobj=_Chain(paths), mode="r|xz") as tar:
        tar.extractall(site, filter="data")
    open(marker, "w").close()
    print(f"dali: {len(paths)} parts checked in {checked:.1f} s, unpacked "
          f"{manifest['unpacked_bytes'] / MiB:.0f} MiB into {site} in {time.perf_counter() - t0 - checked:.1f} s")
    return 0


def link(repo: str, site: str) -> int:
    """``streamaug.<pkg>`` -> ``repo/<folder>`` as pyproject's package-dir maps them (symlinks,
    so the checkout's code runs), plus a dist-info so importlib.metadata knows the version."""
    import tomllib

    with open(os.path.join(repo, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)
    ns = os.path.join(site, "streamaug")
    os.makedirs(ns, exist_ok=True)
    for package, folder in project["tool"]["setuptools"]["package-dir"].items():
        dest = os.path.join(site, *package.split("."))
        if os.path.islink(dest):
            os.remove(dest)
        os.symlink(os.path.abspath(os.path.join(repo, folder)), dest)
    meta = os.path.join(site, f"streamaug-{project['project']['version']}.dist-info")
    os.makedirs(meta, exist_ok=True)
    with open(os.path.join(meta, "METADATA"), "w") as f:
        f.write(f"Metadata-Version: 2.1\nName: streamaug\nVersion: {project['project']['version']}\n")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="gpu_kit", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    pr = sub.add_parser("prepare", help="here: gather the wheels and write the carry folders")
    pr.add_argument("--out", default=".gpu_carry")
    pr.add_argument("--wheels", action="append", default=[], help="a folder of wheels to take first (repeatable)")
    pr.add_argument("--cache", default=os.path.expanduser("~/.cache/streamaug-gpu-kit"), help="pip downloads go here")
    pr.add_argument("--call-mib", type=float, default=58.0, help="what one call may carry, working tree included")
    pr.add_argument("--level", type=int, default=9, help="xz preset")
    pr.add_argument("--repo", default=".")
    st = sub.add_parser("stash", help="there: copy the carried DALI parts to PARTS")
    st.add_argument("carry")
    st.add_argument("parts")
    asm = sub.add_parser("assemble", help="there: check all parts and unpack DALI into SITE")
    asm.add_argument("parts")
    asm.add_argument("site")
    ln = sub.add_parser("link", help="there: make streamaug importable from REPO through SITE")
    ln.add_argument("repo")
    ln.add_argument("site")
    a = p.parse_args(argv)
    if a.cmd == "prepare":
        prepare(a.out, a.wheels, a.cache, a.call_mib, a.repo, a.level)
        return 0
    if a.cmd == "stash":
        return stash(a.carry, a.parts)
    if a.cmd == "assemble":
        return assemble(a.parts, a.site)
    return link(a.repo, a.site)


if __name__ == "__main__":
    raise SystemExit(main())
