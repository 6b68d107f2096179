"""Byte streams of corpus files: plain, gzip (``*.gz``) or Zstandard (``*.zst``), decompressed as they
are read. Memory holds a 1 MiB chunk of the file and the output of 16 KiB of it at a time (for text
corpora, which compress 3-20:1, well under 1 MiB; gzip's ratio is at most ~1000:1, so 16 MiB at worst;
a degenerate zstd frame of repeated text can yield more), never the file.

A :class:`Metered` stream hashes the file's own bytes (so a source's sha256 is that of the file on
disk, compressed or not) and adds them to ``progress.bytes_read``. A corrupt gzip member or zstd
frame, or a file that ends inside one (a download cut short), raises a DataError naming the file
and the compressed and decompressed byte offsets. Concatenated members / frames (``cat a.gz b.gz``,
``pigz``, ``pzstd``) are read one after another, as ``gzip -d`` and ``zstd -d`` do.
"""

from __future__ import annotations

import hashlib
import io
import os
import zlib
from typing import Any, Protocol

from llmkit.errors import DataError

CHUNK = 1 << 20
FEED = 1 << 14  # compressed bytes per decompression call: at most ~16 MiB out of gzip (ratio <= 1032)
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_NAMES = {"gzip": "gzip member", "zstd": "zstd frame"}


def compression_of(path: str) -> str | None:
    """``gzip`` / ``zstd`` from the file name's last suffix, else None."""
    name = path.lower()
    if name.endswith(".gz"):
        return "gzip"
    if name.endswith(".zst"):
        return "zstd"
    return None


def strip_compression(path: str) -> str:
    """The name without its ``.gz`` / ``.zst`` suffix (``a.jsonl.zst`` -> ``a.jsonl``)."""
    return path[: path.rfind(".")] if compression_of(path) else path


class _Progress(Protocol):
    bytes_read: int


def _decompressor(kind: str) -> Any:
    if kind == "gzip":
        return zlib.decompressobj(wbits=31)  # 31: a gzip header and trailer (CRC-32, length) checked
    import zstandard

    return zstandard.ZstdDecompressor().decompressobj()


class Metered(io.RawIOBase):
    """A readable binary stream of ``path``'s (decompressed) bytes; hashes and counts the file's bytes."""

    def __init__(self, path: str, compression: str | None, progress: _Progress | None = None) -> None:
        self.path = path
        self.compression = compression
        self.progress = progress
        self.digest = hashlib.sha256()
        self.file = open(path, "rb")  # closed in close()
        self.consumed = 0  # file bytes read
        self.produced = 0  # decompressed bytes returned
        self._dec: Any = _decompressor(compression) if compression else None
        self._member_started = False  # the current member / frame has begun (truncation check)
        self._pending = b""  # output not yet returned: self._pending[self._at:]
        self._at = 0
        self._input = b""  # file bytes not yet decompressed: self._input[self._fed:]
        self._fed = 0

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self.file.close()
        super().close()

    def _raw(self) -> bytes:
        chunk = self.file.read(CHUNK)
        self.consumed += len(chunk)
        self.digest.update(chunk)
        if self.progress is not None:
            self.progress.bytes_read += len(chunk)
        return chunk

    def _error(self, what: str) -> DataError:
        return DataError(
            f"{self.path}: {what} (at compressed byte offset about {self.consumed}, after {self.produced} bytes of "
            "decompressed text). The file is damaged or incomplete: download or copy it again "
            f"(`{'gzip -t' if self.compression == 'gzip' else 'zstd -t'} {self.path}` checks it)."
        )

    def _decompress(self, data: bytes) -> bytes:
        """Decompress ``data``, starting a new decompressor at each member / frame boundary."""
        out = []
        while data:
            if self._dec is None or self._dec.eof:
                self._dec = _decompressor(str(self.compression))
            self._member_started = True
            try:
                out.append(self._dec.decompress(data))
            except Exception as e:  # zlib.error / zstandard.ZstdError: corrupt data
                raise self._error(f"corrupt {_NAMES[str(self.compression)]} ({e})") from None
            if not self._dec.eof:
                break
            data = self._dec.unused_data
            self._member_started = False
        return b"".join(out)

    def readinto(self, b: Any) -> int:
        while self._at >= len(self._pending):
            if self._fed >= len(self._input):
                self._input, self._fed = self._raw(), 0
                if not self._input:
                    if self._dec is not None and self._member_started and not self._dec.eof:
                        raise self._error(f"truncated: the file ends inside a {_NAMES[str(self.compression)]}")
                    return 0
            if self.compression:  # FEED bytes at a time: one call's output stays small (about FEED x ratio)
                piece = self._input[self._fed : self._fed + FEED]
                self._fed += len(piece)
                self._pending = self._decompress(piece)
            else:
                self._pending, self._fed = self._input, len(self._input)
            self._at = 0
        n = min(len(b), len(self._pending) - self._at)
        b[:n] = memoryview(self._pending)[self._at : self._at + n]
        self._at += n
        self.produced += n
        return n

    def finish(self) -> str:
        """Read what is left of the file (a trailer after the last document) and return its sha256."""
        while self.read(CHUNK):
            pass
        return self.digest.hexdigest()


def open_metered(path: str, compression: str | None, progress: _Progress | None = None) -> io.BufferedReader:
    """``path``'s decompressed bytes as a buffered stream (lines, ``read(n)``); ``.raw`` is the :class:`Metered`."""
    return io.BufferedReader(Metered(path, compression, progress), buffer_size=CHUNK)


def head(path: str, compression: str | None, n: int) -> tuple[bytes, str | None]:
    """The first ``n`` decompressed bytes of ``path`` and a problem (a wrong magic number, a corrupt
    start) or None; for the checks before any work starts."""
    with open(path, "rb") as f:
        start = f.read(4)
    if not start:
        return b"", None  # an empty file: the empty-corpus check reports it
    if compression == "gzip" and not start.startswith(GZIP_MAGIC):
        return (
            b"",
            f"{path}: not gzip data (it starts with bytes {start.hex(' ')}, not 1f 8b); rename or recompress it.",
        )
    if compression == "zstd" and start != ZSTD_MAGIC:
        return b"", (
            f"{path}: not Zstandard data (it starts with bytes {start.hex(' ')}, not 28 b5 2f fd); rename or "
            "recompress it."
        )
    try:
        with open_metered(path, compression) as s:
            return s.read(n), None
    except DataError as e:
        return b"", str(e)


def estimated_size(path: str, compression: str | None) -> int:
    """Before reading: the decompressed size from the file's own record of it, where it has one (a gzip
    trailer's length, exact for one member under 4 GiB; a zstd frame header's content size), else
    the file's size."""
    size = os.path.getsize(path)
    try:
        with open(path, "rb") as f:
            if compression == "gzip" and size >= 18:
                f.seek(-4, os.SEEK_END)
                return max(size, int.from_bytes(f.read(4), "little"))
            if compression == "zstd":
                import zstandard

                n = zstandard.frame_content_size(f.read(18))
                return max(size, n) if n > 0 else size
    except Exception:  # a damaged header: the checks report it
        return size
    return size
