"""A typical PyTorch DataLoader training script, ported to streamaug by changing exactly one line
(issue #11). Both versions run, from a temporary working directory with relative paths."""
from __future__ import annotations

import difflib
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from streamaug.loader import write_shards

TORCH_SCRIPT = '''\
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
device = "cpu"
data = np.load("digits.npz")                 # uint8 images (N, 8, 8, 1), int64 labels
images = torch.from_numpy(data["images"]).permute(0, 3, 1, 2).float().div(255).sub(0.5).div(0.5)
labels = torch.from_numpy(data["labels"])
train_set = TensorDataset(images, labels)
loader = DataLoader(train_set, batch_size=32, shuffle=True, drop_last=True)

model = nn.Sequential(
    nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
    nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
    nn.AdaptiveAvgPool2d(2), nn.Flatten(),
    nn.Linear(128, 10),
).to(device)
optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)

for epoch in range(3):
    model.train()
    total_loss = 0.0
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total_loss += loss.item()
    print(f"epoch {epoch}: loss {total_loss / len(loader):.3f}")

model.eval()
correct = seen = 0
with torch.no_grad():
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        correct += (model(images).argmax(1) == labels).sum().item()
        seen += labels.numel()
print(f"accuracy {correct / seen:.3f} on {seen} samples")
'''

STREAM_LINE = ('from streamaug.loader import StreamLoader; loader = StreamLoader("shards/train-{000000..000003}.tar", '
               'batch_size=32, shuffle=True, drop_last=True, dtype=torch.float32, normalize=((0.5,), (0.5,)))')
STREAM_SCRIPT = TORCH_SCRIPT.replace(
    'loader = DataLoader(train_set, batch_size=32, shuffle=True, drop_last=True)', STREAM_LINE)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """``digits.npz`` for the torch script and shards of the same arrays for the streamaug one."""
    from sklearn.datasets import load_digits

    monkeypatch.chdir(tmp_path)
    digits = load_digits()
    images = (digits.images * 15).astype(np.uint8)[..., None]
    labels = digits.target.astype(np.int64)
    np.savez("digits.npz", images=images, labels=labels)
    index = write_shards((images, labels), "shards", maxcount=500, progress=False)
    assert len(index.shards) == 4, "the script's brace pattern names 4 shards"
    return tmp_path


def run_script(source: str, name: str) -> str:
    with open(name, "w") as f:
        f.write(source)
    # One intra-op thread: on a shared 2-core machine two threads spin against the load (30 s, not 4).
    proc = subprocess.run([sys.executable, name], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_the_port_changes_exactly_one_line():
    assert 35 <= len(TORCH_SCRIPT.splitlines()) <= 50, "a typical ~40-line script"
    diff = [line for line in difflib.unified_diff(TORCH_SCRIPT.splitlines(), STREAM_SCRIPT.splitlines(), lineterm="", n=0)
            if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    assert diff == ["-loader = DataLoader(train_set, batch_size=32, shuffle=True, drop_last=True)",
                    "+" + STREAM_LINE]


@pytest.mark.parametrize("name, source", [("torch_train.py", TORCH_SCRIPT), ("streamaug_train.py", STREAM_SCRIPT)])
def test_both_scripts_train(workdir, name, source):
    out = run_script(source, name)
    losses = [float(x) for x in re.findall(r"epoch \d: loss ([\d.]+)", out)]
    accuracy, seen = re.search(r"accuracy ([\d.]+) on (\d+) samples", out).groups()
    assert len(losses) == 3 and losses[-1] < losses[0], out
    assert int(seen) == 1797 // 32 * 32, "drop_last=True: every full batch of the 1,797 digits"
    assert float(accuracy) > 0.5, f"{name} learned nothing: {out}"
