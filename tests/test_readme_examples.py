"""README.md and docs/*.md as tests: every fenced ```python and ```bash block runs from a
fresh temporary working directory (python in a subprocess, bash with ``python``/``streamaug`` from this
interpreter's environment).

Markers, on the line just before a fence:

* ``<!-- gpu -->``: needs a GPU; runs only when CUDA is available.
* ``<!-- long: REASON -->``: a reproduction recipe that takes minutes to hours (benchmarks,
  multi-node jobs). It is not run; each command's program is run with ``--help`` and
  every ``--option`` the block uses must be one that program lists, so it cannot rot.

The set-up blocks (``pip install ...``) are not run either: CI runs them itself. They
are checked to be exactly the commands ``.ci/run`` runs, and to be the README's alone.
"""
from __future__ import annotations

import functools
import glob
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
PAGES = [README] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
BIN = os.path.dirname(sys.executable)
MARKER = re.compile(r"<!--\s*(gpu|long)\b[^>]*-->")


@dataclass(frozen=True)
class Block:
    lang: str
    page: str          # the file, relative to the repository
    line: int          # 1-based line of the opening fence
    code: str
    marker: str | None

    @property
    def is_setup(self) -> bool:
        return self.lang == "bash" and "pip install" in self.code

    def __str__(self) -> str:
        return f"{self.page}:{self.line} ({self.lang}{', ' + self.marker if self.marker else ''})"


def readme_blocks(text: str, page: str = "README.md") -> list[Block]:
    """Fenced blocks, including ones indented inside list items (the indent is removed)."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = re.match(r"^( *)```(\w+)\s*$", lines[i])
        if not m:
            i += 1
            continue
        indent, lang = m.group(1), m.group(2)
        start, body = i, []
        i += 1
        while i < len(lines) and not lines[i].lstrip().startswith("```"):
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i].lstrip())
            i += 1
        if i == len(lines):
            raise ValueError(f"{page}:{start + 1}: fence never closed")
        prev = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        marker = MARKER.search(prev)
        if lang in ("python", "bash"):
            blocks.append(Block(lang, page, start + 1, "\n".join(body) + "\n", marker and marker.group(1)))
        i += 1
    return blocks


BLOCKS = [b for p in PAGES for b in readme_blocks(open(p).read(), os.path.relpath(p, ROOT))]


def env() -> dict:
    e = dict(os.environ, PATH=BIN + os.pathsep + os.environ.get("PATH", ""), PYTHONUNBUFFERED="1",
             MPLBACKEND="Agg")
    e.pop("PYTHONPATH", None)
    return e


def commands(code: str) -> list[list[str]]:
    """Shell commands of a block: continuation lines joined, comments dropped, split at && and ;."""
    text = re.sub(r"\\\n", " ", code)
    out = []
    for line in text.splitlines():
        words = shlex.split(line, comments=True)
        cmd: list[str] = []
        for w in words + ["&&"]:
            if w in ("&&", ";", "||"):
                if cmd:
                    out.append(cmd)
                cmd = []
            else:
                cmd.append(w)
    return out


def program_and_options(cmd: list[str]) -> tuple[list[str], list[str]]:
    """``python -m X ...``, ``torchrun ... -m X ...`` or ``streamaug SUB ...`` → (help command, options used).
    Leading ``NAME=value`` environment settings are passed over."""
    while cmd and re.match(r"^[A-Z_][A-Z0-9_]*=", cmd[0]):
        cmd = cmd[1:]
    if cmd[0] in ("python", "python3", "torchrun") and "-m" in cmd:
        k = cmd.index("-m")
        return [sys.executable, "-m", cmd[k + 1]], [w.split("=")[0] for w in cmd[k + 2:] if w.startswith("--")]
    if cmd[0] == "streamaug":
        return [os.path.join(BIN, "streamaug"), cmd[1]], [w.split("=")[0] for w in cmd[2:] if w.startswith("--")]
    raise AssertionError(f"cannot check command {shlex.join(cmd)!r}: give it a way to run fast or mark it gpu")


@functools.lru_cache(maxsize=None)
def help_text(program: tuple[str, ...]) -> str:
    """``program --help`` (each program once per session: starting one imports torch)."""
    shown = subprocess.run([*program, "--help"], capture_output=True, text=True, env=env(), timeout=120, cwd=ROOT)
    assert shown.returncode == 0, f"{shlex.join(program)} --help failed:\n{shown.stderr[-2000:]}"
    return shown.stdout


def missing_options(options: list[str], shown: str) -> list[str]:
    return [o for o in options if not re.search(rf"(^|[\s,\[]){re.escape(o)}(?![\w-])", shown)]


def test_readme_has_runnable_examples():
    run = [b for b in BLOCKS if not b.is_setup and b.marker is None]
    assert sum(b.lang == "python" for b in run) >= 3 and sum(b.lang == "bash" for b in run) >= 1, BLOCKS
    assert sum(b.lang == "python" and b.page == "README.md" for b in run) >= 2, BLOCKS
    with_code = {os.path.relpath(p, ROOT) for p in PAGES if re.search(r"^ *```(python|bash)\s*$", open(p).read(), re.M)}
    assert len(PAGES) >= 7 and len(with_code) >= 6 and with_code == {b.page for b in BLOCKS}, with_code   # all read


def heading_anchors(text: str) -> set[str]:
    """GitHub's anchors for a page's headings (fenced code left out): lower case, characters
    other than letters, digits, ``-``, ``_`` and spaces dropped, spaces made ``-``."""
    anchors, fence = set(), False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fence = not fence
        m = re.match(r"^#+ (.*)", line)
        if m and not fence:
            anchors.add(re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-"))
    return anchors


def broken_links(page: str, text: str, anchors_of) -> list[str]:
    """Relative links ``[x](path#anchor)``, ``[x](#anchor)`` of ``page`` whose file or heading
    does not exist (http(s) links are not followed). ``anchors_of(file)``: its anchors, None
    where there is no such file."""
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        file = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
        if anchors_of(file) is None:
            broken.append(f"{target} (no file {file})")
        elif anchor and anchor not in anchors_of(file):
            broken.append(f"{target} (no heading in {file})")
    return broken


def test_links_between_pages_resolve():
    def anchors_of(file: str) -> set[str] | None:
        path = os.path.join(ROOT, file)
        return heading_anchors(open(path).read()) if os.path.isfile(path) else None

    broken = {os.path.relpath(p, ROOT): broken_links(os.path.relpath(p, ROOT), open(p).read(), anchors_of)
              for p in PAGES}
    assert not any(broken.values()), broken
    assert heading_anchors("# The GPU check: `streamaug bench --gpu-check`\n```\n# not\n```\n## Use / more") == \
        {"the-gpu-check-streamaug-bench---gpu-check", "use--more"}
    anchors = {"docs/a.md": {"x"}, "README.md": {"top"}}.get
    assert broken_links("docs/a.md", "[1](#x) [2](../README.md#top) [3](#y) [4](../nope.md) "
                        "[5](https://h/#z) [6](../README.md#x)", anchors) == \
        ["#y (no heading in docs/a.md)", "../nope.md (no file nope.md)", "../README.md#x (no heading in README.md)"]


@pytest.mark.parametrize("block", [b for b in BLOCKS if not b.is_setup], ids=str)
def test_readme_block(block, tmp_path):
    if block.marker == "gpu" and not torch.cuda.is_available():
        pytest.skip("needs a GPU (marked <!-- gpu -->)")
    if block.marker == "long":
        for cmd in commands(block.code):
            program, options = program_and_options(cmd)
            shown = help_text(tuple(program))
            unknown = missing_options(options, shown)
            assert not unknown, f"{block}: {shlex.join(program)} has no option {unknown}"
        return
    if block.lang == "python":
        (tmp_path / "example.py").write_text(block.code)
        argv = [sys.executable, "example.py"]
    else:
        argv = ["bash", "-euo", "pipefail", "-c", block.code]
    done = subprocess.run(argv, cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{block} failed ({done.returncode}):\n{block.code}\n{done.stdout[-3000:]}\n" \
                                 f"{done.stderr[-3000:]}"


def normalized_install(cmd: list[str]) -> list[str]:
    words = cmd[2:] if cmd[:2] == ["python", "-m"] else cmd
    return [w for w in words if w not in ("-q", "--quiet")]


def test_setup_blocks_are_what_ci_runs():
    ci = [c for c in commands(open(os.path.join(ROOT, ".ci", "run")).read())]
    ci_install = [normalized_install(c) for c in ci if "install" in c and "pip" in " ".join(c[:3])]
    ci_cmds = [shlex.join(c) for c in ci]
    setup = [b for b in BLOCKS if b.is_setup]
    assert len(setup) == 2 and all(b.page == "README.md" for b in setup), [str(b) for b in setup]
    for block in setup:
        install, *rest = commands(block.code)
        assert [normalized_install(install)] == ci_install, f"{block}: {install} is not CI's {ci_install}"
        for cmd in rest:
            if cmd[:1] == ["streamaug"]:                 # the main job: its command must exist
                program, _ = program_and_options(cmd)
                assert "usage:" in help_text(tuple(program))
            else:
                assert shlex.join(cmd) in ci_cmds, f"{block}: {shlex.join(cmd)!r} is not a command CI runs"


def test_markers_and_fences_are_read(tmp_path):
    text = "x\n<!-- gpu -->\n```python\nprint(1)\n```\n\n<!-- long: hours -->\n\n```bash\nstreamaug bench\n```\n" \
           "```text\nnot code\n```\n```bash\npython -m a.b --n 3 \\\n  --json x && echo ok  # hi\n```\n"
    blocks = readme_blocks(text)
    assert [(b.lang, b.line, b.marker) for b in blocks] == [("python", 3, "gpu"), ("bash", 9, "long"),
                                                             ("bash", 15, None)]
    assert commands(blocks[2].code) == [["python", "-m", "a.b", "--n", "3", "--json", "x"], ["echo", "ok"]]
    shown = "usage: x [-h] [--out OUT]\n  --quick-ish  q\n  --n N"
    assert missing_options(["--out", "--n", "--quick", "--nope"], shown) == ["--quick", "--nope"]
    with pytest.raises(ValueError, match="never closed"):
        readme_blocks("```python\nprint(1)\n")
    indented = readme_blocks("- item:\n\n  <!-- long: minutes -->\n  ```bash\n  OMP_NUM_THREADS=1 streamaug demo \\\n"
                             "      --seeds 2\n  ```\n")
    assert [(b.lang, b.line, b.marker) for b in indented] == [("bash", 4, "long")]
    assert program_and_options(commands(indented[0].code)[0])[1] == ["--seeds"]


def test_the_api_page_lists_every_argument_field_and_class():
    """docs/api.md (newcomer s35: no page listed the arguments or the Batch fields): every
    StreamLoader argument, Batch field, op and sampler class appears there in backticks."""
    import dataclasses
    import inspect

    import streamaug.ops as ops
    import streamaug.samplers as samplers
    from streamaug.loader import StreamLoader
    from streamaug.loader.batch import Batch
    text = open(os.path.join(ROOT, "docs", "api.md")).read()
    names = [p for p in inspect.signature(StreamLoader).parameters if p != "dataloader_only"]
    names += [f.name for f in dataclasses.fields(Batch)]
    names += [n for n in ("Flip", "Rotate", "Shear", "Translate", "RandomResizedCrop", "GaussianNoise",
                          "BrightnessContrast", "RandomErasing", "MixUp", "CutMix", "Compose", "default_augment")]
    names += [n for n in ("ClassBalancer", "RandomOversampler", "SMOTE", "BorderlineSMOTE", "ADASYN")]
    public_ops = {n for n, v in vars(ops).items() if inspect.isclass(v) and v.__module__.startswith("streamaug.ops")
                  and not n.endswith("Op") and n != "Op"}
    public_samplers = {n for n, v in vars(samplers).items() if inspect.isclass(v) and hasattr(v, "synthesize")
                       and n != "Synthesizer"}
    assert public_ops <= set(names) and public_samplers <= set(names), (public_ops - set(names),
                                                                        public_samplers - set(names))
    missing = [n for n in names if f"`{n}`" not in text and f"`{n}," not in text and f", {n}`" not in text
               and f"`{n}(" not in text]
    assert not missing, missing
