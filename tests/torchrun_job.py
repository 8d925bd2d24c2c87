"""Run a job under ``torchrun`` on CPU (gloo) from a test, the way a user's launch does.

Each job gets a free rendezvous port, one intra-op thread per rank (the ranks share two
cores) and Python's faulthandler, so a rank that dies of a signal (SIGABRT from a C++
``std::terminate``, SIGSEGV) prints every thread's Python stack into the failure message
instead of only torchrun's "exitcode: -6".
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_torchrun(target: list[str], nproc: int = 2, cwd=None, timeout: float = 240,
                 pythonpath: tuple[str, ...] = (), check: bool = True) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node=nproc TARGET...``; ``target`` is a script and its arguments,
    or ``["-m", module, ...]``. With ``check`` a non-zero exit fails the test with both outputs."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
           f"--master_port={free_port()}", *map(str, target)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", PYTHONFAULTHANDLER="1")
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join([*pythonpath, os.environ.get("PYTHONPATH", "")])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=None if cwd is None else str(cwd))
    if check and proc.returncode != 0:
        raise AssertionError(f"torchrun failed ({proc.returncode}): {' '.join(cmd[3:])}\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc
