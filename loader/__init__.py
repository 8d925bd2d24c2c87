"""Streaming WebDataset loader: shard writing, the shard index, and ``StreamLoader``."""
from streamaug.core.seeding import derive_seed

from .batch import Batch
from .epoch_plan import EpochPlan, plan_epoch
from .errors import LoaderStats, StreamError
from .index_builder import build_index
from .output_format import OutputFormat
from .shard_index import ShardIndex, ShardIndexError
from .shard_urls import expand_urls
from .shard_writer import write_shards
from .stream_loader import StreamLoader

__all__ = ["Batch", "build_index", "EpochPlan", "LoaderStats", "OutputFormat", "ShardIndex", "ShardIndexError", "StreamError",
           "StreamLoader", "derive_seed", "expand_urls", "plan_epoch", "write_shards"]


def __getattr__(name: str):
    if name == "load_digits_32":          # moved: it is demo data, not shard writing
        import warnings

        warnings.warn("streamaug.loader.load_digits_32 moved to streamaug.benchmarks.demo_data",
                      DeprecationWarning, stacklevel=2)
        from streamaug.benchmarks.demo_data import load_digits_32

        return load_digits_32
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
