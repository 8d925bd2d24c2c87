"""argparse types shared by the benchmark and demo commands: a bad value is refused by
argparse, naming the option and the reason, not a traceback from deep inside."""
from __future__ import annotations

import argparse


def at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an int >= 1, got {text!r}")
    return value


def at_least_zero(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an int >= 0, got {text!r}")
    return value


def strategy_argument(text: str):
    """A ``sampling_strategy``: a float ratio (``0.5``) or a preset name (it went to the
    balancer as a string, and ``0.5`` or ``majority`` ended in a traceback)."""
    from streamaug.samplers.sampling_strategy import check_strategy_form

    try:
        value = float(text)
    except ValueError:
        value = text
    try:
        check_strategy_form(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return value


def strategy_error(strategy, class_counts) -> str | None:
    """Why ``strategy`` does not fit the data's ``class_counts`` (a float ratio needs two
    classes), in one line for the command to print, or ``None``."""
    from streamaug.samplers import synthetic_targets

    try:
        synthetic_targets(strategy, list(class_counts))
    except ValueError as e:
        return f"--strategy {strategy!r} does not fit the data's {len(class_counts)} classes: {e}"
    return None


def kernel_bench_arguments(doc: str, argv=None, repeats: int = 9) -> argparse.Namespace:
    """The options of the one-kernel benchmarks (``noise_field_speed``, ``planar_copy``,
    ``warp_layout``): a batch of ``--rows`` images of ``--size``², ``--repeats`` paired
    repeats, ``--busy`` CPU-bound processes for the "with N busy" figure, ``--json``."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--rows", type=at_least_one, default=256)
    p.add_argument("--size", type=at_least_one, default=224)
    p.add_argument("--repeats", type=at_least_one, default=repeats)
    p.add_argument("--busy", type=at_least_zero, default=1,
                   help="CPU-bound processes for the 'with N busy' figure (0: none)")
    p.add_argument("--json", default=None)
    return p.parse_args(argv)
