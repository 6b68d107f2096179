"""Small file utilities: atomic writes, checksums and reading a UTF-8 text file.

Everything llmkit writes that a later step trusts (shards, tokenizers, checkpoints) is written
under a temporary name in the same directory and renamed into place at the end, so an interrupted
run never leaves a file or directory that looks complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llmkit.errors import DataError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _default_mode(path: Path, *, directory: bool) -> None:
    """mkstemp/mkdtemp create 0600/0700; give the result the permissions a plain open/mkdir would."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def sha256_file(path: str | os.PathLike, *, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[Any]:
    """Open a temporary sibling of ``path``; on success fsync it and rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    _default_mode(Path(tmp), directory=False)
    try:
        with open(tmp, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_file(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; on success rename it to ``path``.

    With ``overwrite`` an existing ``path`` is replaced only after the new one is complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    _default_mode(tmp, directory=True)
    try:
        yield tmp
        if path.exists():
            if not overwrite:
                raise FileExistsError(f"{path} already exists")
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


_FULL_ERRNOS = {28, 122}  # ENOSPC, EDQUOT (Linux)
_FULL_TEXT = ("no space left", "unexpected pos", "disk quota exceeded", "file write failed")


def is_disk_full(err: BaseException) -> bool:
    """Whether ``err`` is a write that ran out of space: ENOSPC/EDQUOT, or PyTorch's and safetensors'
    wordings of it (``torch.save`` says "unexpected pos" when a write comes up short)."""
    if isinstance(err, OSError) and err.errno in _FULL_ERRNOS:
        return True
    text = str(err).lower()
    return any(t in text for t in _FULL_TEXT)


def free_bytes(path: str | os.PathLike) -> int | None:
    """Free bytes on the file system of ``path`` (its nearest existing parent); None when unknown."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def human_bytes(n: int | None) -> str:
    if n is None:
        return "unknown"
    x = float(n)
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if abs(x) < 1000 or unit == "TB":
            return f"{n:,} bytes" if unit == "bytes" else f"{x:.1f} {unit}"
        x /= 1000
    return f"{x:.1f} TB"


def disk_full_message(what: str, folder: Path, need: int) -> str:
    """'<what> in <folder> ran out of disk space: it needs about N, M are free.'"""
    return (
        f"{what} in {folder} ran out of disk space: it needs about {human_bytes(need)}, "
        f"{human_bytes(free_bytes(folder))} are free."
    )


def read_text_file(path: str | os.PathLike, what: str = "Data file") -> str:
    """The whole of a UTF-8 text file; a ``DataError`` naming ``what`` and the path if it is missing
    or not UTF-8 (the offset of the first invalid byte)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} {path} does not exist.")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text (invalid byte at offset {e.start}).") from None
