"""How a shard is named where its folder must not matter (a dataset that moved, or is
mounted elsewhere on another node): its file name.

>>> shard_file_name("/data/train/train-000003.tar")
'train-000003.tar'
>>> shard_file_name("https://bucket.example/train-000003.tar?sig=abc&exp=1")
'train-000003.tar'
"""
from __future__ import annotations

import os
from urllib.parse import urlparse


def shard_file_name(url: str) -> str:
    """The last part of a shard URL's path: of an http(s) URL, without the query (which signed
    URLs rotate). The loader state's fingerprint and the balancer's reservoir subset use it."""
    if url.startswith(("http://", "https://")):
        return os.path.basename(urlparse(url).path)
    return os.path.basename(url)
