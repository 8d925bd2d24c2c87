"""Open a shard URL as a byte stream whose every failure is seen.

Local paths (and ``file://``) are plain files. ``pipe:CMD`` runs ``CMD`` in a
shell and http(s) runs ``curl`` (the command webdataset's ``gopen`` uses); both
are read through :class:`CommandStream`, which adds what ``gopen``'s ``Pipe``
lacks:

* a read timeout: no byte for ``read_timeout`` seconds is a ``read_timeout``
  error, and the command is killed;
* the exit status is always checked once the output has ended: a command that
  exits non-zero, after part of a tar or after all of it, is a ``pipe_failed``
  error (webdataset polls the status during reads and misses an exit that comes
  after the last read);
* a stream closed early (a segment read, an error) kills the command's whole
  process group, so no child is left behind; so does a DataLoader worker that is
  stopped (:func:`kill_live_commands`, run by the worker's SIGTERM handler).

Other schemes go to webdataset's ``gopen`` unchanged.
"""
from __future__ import annotations

import os
import select
import signal
import subprocess

from webdataset.gopen import gopen

from .errors import StreamError

_LIVE_GROUPS: set[int] = set()      # process groups of this process's running commands


def kill_live_commands() -> None:
    """SIGKILL every command this process started and has not closed (each in its own group)."""
    for pgid in list(_LIVE_GROUPS):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        _LIVE_GROUPS.discard(pgid)


CURL = ["curl", "--connect-timeout", "30", "--retry", "3", "--retry-delay", "2", "-f", "-s", "-L"]
CURL_EXITS = {6: "the host name does not resolve (curl 6)", 7: "the server refuses connections (curl 7)",
              18: "the transfer ended before the whole file came (curl 18)",
              22: "the server answered with an HTTP error status, e.g. 404 not found (curl 22)",
              28: "the connection timed out (curl 28)", 56: "the connection broke off mid-download (curl 56)"}


class CommandStream:
    """The stdout of a command, read with a timeout; ``finish()`` checks its exit status."""

    def __init__(self, args, url: str, read_timeout: float, shell: bool):
        self.url, self.read_timeout = url, read_timeout
        self.proc = subprocess.Popen(args, shell=shell, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        _LIVE_GROUPS.add(self.proc.pid)
        self.fd = self.proc.stdout.fileno()
        self.ended = False
        self.failed: StreamError | None = None     # found by a read that had output to hand on first

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (fewer only at the end). An error found after some output (the exit
        status once the output ends) is raised by the next read, after that output is handed on."""
        if self.failed is not None:
            raise self.failed
        chunks, want = [], n if n >= 0 else 1 << 62
        while want > 0 and not self.ended:
            ready, _, _ = select.select([self.fd], [], [], self.read_timeout)
            if not ready:
                self.close()
                self.ended = True
                err = StreamError("read_timeout", f"no data for {self.read_timeout:g} s (raise it with "
                                  "StreamLoader(read_timeout=...))", shard=self.url, value=self.read_timeout)
                if not chunks:
                    raise err
                self.failed = err               # what came before the silence is handed on first
                break
            chunk = os.read(self.fd, min(want, 1 << 20))
            if not chunk:
                self.ended = True
                try:
                    self.finish()
                except StreamError as e:
                    if not chunks:
                        raise
                    self.failed = e
                break
            chunks.append(chunk)
            want -= len(chunk)
        return b"".join(chunks)

    def finish(self) -> None:
        """After end of output: wait for the command; a non-zero exit is a ``pipe_failed`` error."""
        try:
            status = self.proc.wait(timeout=self.read_timeout)
        except subprocess.TimeoutExpired:
            self.close()
            raise StreamError("read_timeout", f"command closed its output but did not exit within "
                              f"{self.read_timeout:g} s", shard=self.url, value=self.read_timeout) from None
        if status != 0:
            if not self.url.startswith("pipe:"):            # an http(s) URL, read with curl
                why = CURL_EXITS.get(status, f"curl exited with status {status}")
                raise StreamError("pipe_failed", f"the download failed: {why}; samples it sent whole before "
                                  "that were read, the rest of the shard is not", shard=self.url, value=status)
            raise StreamError("pipe_failed", f"command exited with status {status}; its output cannot be "
                              "trusted as a whole shard", shard=self.url, value=status)

    def drain(self, limit: int = 1 << 20) -> None:
        """Read what follows the end of the archive (tar pads records with zeros), then check the
        exit status. Output that goes on past ``limit`` bytes is left unread and the command killed."""
        left = limit
        while (not self.ended or self.failed is not None) and left > 0:
            left -= len(self.read(min(left, 1 << 16)) or b"")

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.stdout.close()
        self.proc.wait()
        _LIVE_GROUPS.discard(self.proc.pid)


class FileStream:
    """A local file; ``drain`` and ``finish`` have nothing to check."""

    def __init__(self, fileobj):
        self.fileobj = fileobj
        self.read = fileobj.read

    def drain(self, limit: int = 0) -> None:
        pass

    def close(self) -> None:
        self.fileobj.close()


def open_shard(url: str, read_timeout: float):
    """``url`` → a stream with ``read``, ``drain`` and ``close``."""
    if url.startswith("pipe:"):
        return CommandStream(url[5:], url, read_timeout, shell=True)
    if url.startswith(("http://", "https://")):
        return CommandStream([*CURL, url], url, read_timeout, shell=False)
    if url.startswith("file://"):
        url = url[7:]
    if ":" not in url.split("/", 1)[0] or os.path.exists(url):
        return FileStream(open(url, "rb"))
    return FileStream(gopen(url))
