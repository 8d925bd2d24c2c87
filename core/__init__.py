"""What every layer shares, with torch and numpy only: seeding, the plug-in contract,
the batch in flight and host-to-device transfer.

Layers point one way: ``core`` ← ``ops``, ``samplers`` ← ``loader`` ← the ``streamaug``
command and ``benchmarks``.
"""
from .flight import BatchInFlight
from .plugin import Augmenter, Balancer, BindContext, Mixer, RowSource, SeededStage, StatsSink
from .seeding import derive_seed, numpy_generator, torch_generator
from .transfer import to_device

__all__ = ["Augmenter", "Balancer", "BatchInFlight", "BindContext", "Mixer", "RowSource", "SeededStage",
           "StatsSink", "derive_seed", "numpy_generator", "to_device", "torch_generator"]
