"""Deprecated location of the ``streamaug`` command; it lives in :mod:`streamaug.cli`."""
from __future__ import annotations

import warnings


def main(argv: list[str] | None = None) -> int:
    warnings.warn("streamaug.loader.cli is deprecated; use streamaug.cli (the `streamaug` command)",
                  DeprecationWarning, stacklevel=2)
    from streamaug.cli import main as cli_main

    return cli_main(argv)
