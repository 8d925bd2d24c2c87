"""Deprecated location: seeding lives in :mod:`streamaug.core.seeding` (importable without the loader)."""
from streamaug.core.seeding import derive_seed, numpy_generator, torch_generator

__all__ = ["derive_seed", "numpy_generator", "torch_generator"]
