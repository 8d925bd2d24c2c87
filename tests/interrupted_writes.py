"""A write of shards interrupted where a test wants it: what the write-mark tests start from."""
from __future__ import annotations


def interrupted_at(sample: int):
    """``encode_image`` that raises KeyboardInterrupt (Ctrl-C) at its ``sample``-th call."""
    import streamaug.loader.shard_writer as sw

    calls, encode = [0], sw.encode_image

    def encode_or_stop(*args):
        calls[0] += 1
        if calls[0] == sample:
            raise KeyboardInterrupt
        return encode(*args)
    return encode_or_stop
