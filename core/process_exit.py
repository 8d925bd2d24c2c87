"""End a distributed job's process without interpreter shutdown: :func:`exit_now`.

torch's gloo worker threads may free a finished collective's tensors after the main thread
has moved on. When that lands in interpreter shutdown (``Py_FinalizeEx``), the thread cannot
take the GIL and the rank aborts: "terminate called without an active exception", exit
code -6, after the job's work is done. A core dump of such a rank shows
``ProcessGroupGloo::runLoop`` destroying an ``AsyncAllgatherWork`` in ``take_gil``;
``destroy_process_group()`` (and accelerate's ``end_training()``) does not stop those
threads while DDP's hooks still hold the group. It hit 4 of 39 five-process runs of the
README's accelerate example on a 2-core machine, and once a rank of
``streamaug.benchmarks.train`` in CI; none in 40 runs ended with :func:`exit_now`.
(torch's own fix, pytorch/pytorch#179291, was abandoned.)

>>> from streamaug.core.process_exit import exit_now
>>> # last line of a torchrun script, after destroy_process_group() or end_training():
>>> exit_now(0)                                             # doctest: +SKIP
"""
from __future__ import annotations

import os
import sys


def exit_now(code: int = 0) -> None:
    """Flush stdout and stderr, then end the process with ``os._exit(code)``.

    Nothing else runs after it: no ``atexit`` handlers, no ``finally`` blocks, no object
    finalizers. Close files, loaders (``StreamLoader.close()``) and loggers first, and
    call it only where the script itself would end."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):   # closed or replaced streams
            pass
    os._exit(code)
