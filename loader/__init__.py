"""Streaming WebDataset loader: shard writing, the shard index, and ``StreamLoader``."""
from .batch import Batch
from .epoch_plan import EpochPlan, plan_epoch
from .errors import LoaderStats, StreamError
from .seeding import derive_seed
from .shard_index import ShardIndex, ShardIndexError
from .shard_writer import load_digits_32, write_shards
from .stream_loader import StreamLoader, expand_urls

__all__ = ["Batch", "EpochPlan", "LoaderStats", "ShardIndex", "ShardIndexError", "StreamError",
           "StreamLoader", "derive_seed", "expand_urls", "load_digits_32", "plan_epoch", "write_shards"]
