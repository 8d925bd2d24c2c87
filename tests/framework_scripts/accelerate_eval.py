"""accelerate's evaluation recipe under ``torchrun --nproc_per_node=3`` (CPU, gloo): every
process predicts its batches and ``accelerator.gather_for_metrics`` collects them, which must
count each sample once however the ranks were padded to equal length.

The shards (``part-*.tar`` + ``index.json`` in the working directory, written by webdataset's
ShardWriter) hold samples ``img00000``, ``img00001``, ...; each pass gathers the sample numbers
from the keys, and the main process writes them to ``gathered.json``, next to those gathered
from accelerate's own prepared ``DataLoader`` over the same numbers (the reference).

    torchrun --nproc_per_node=3 accelerate_eval.py N
"""
from __future__ import annotations

import json
import sys

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader

from streamaug.core.process_exit import exit_now
from streamaug.loader import StreamLoader

CASES = [(1, 0), (2, 0), (3, 2), (4, 1), (7, 2)]        # (batch_size, reading workers)


def gathered(accelerator, loader, ids_of) -> list[int]:
    out = []
    for batch in loader:
        out += accelerator.gather_for_metrics(ids_of(batch)).tolist()
    return out


def main() -> None:
    total = int(sys.argv[1])
    torch.set_num_threads(1)
    accelerator = Accelerator(cpu=True)
    result = {}
    for batch_size, workers in CASES:
        ours = StreamLoader("part-*.tar", batch_size, False, num_workers=workers, persistent_workers=False)
        ours = accelerator.prepare(ours)
        theirs = accelerator.prepare(DataLoader(torch.arange(total), batch_size=batch_size))
        result[f"{batch_size}/{workers}"] = {
            "streamaug": gathered(accelerator, ours, lambda b: torch.tensor([int(k[3:]) for k in b.keys])),
            "padded": int(accelerator.gather(torch.tensor([ours.stats.padded])).sum()),
            "dataloader": gathered(accelerator, theirs, lambda b: b)}
    if accelerator.is_main_process:
        with open("gathered.json", "w") as f:
            json.dump(result, f)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    exit_now(0)                      # no interpreter finalization for gloo's threads to abort in


if __name__ == "__main__":
    main()
