"""Files previsit reads and writes: one place for how, so every output is written alike.

Outputs hold patient names, birth dates and plans, so they are private to the user who ran
previsit (files 0600, folders previsit creates 0700, whatever the umask), and each is
written atomically: a temporary file in the same folder, then a rename over the old one.
A run that dies half-way leaves the previous plan.json, never an empty or torn one.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path

from previsit.errors import PrevisitError

FILE_MODE = 0o600
FOLDER_MODE = 0o700


def read_text(path: Path, error: type[PrevisitError], what: str) -> str:
    """A UTF-8 text file (a byte order mark is ignored), or `error` saying which file could
    not be read and why."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{path}: cannot read {what}: {exc}") from exc


def private_folder(path: Path) -> Path:
    """`path` as a folder, created (with its missing parents) readable by its owner only.

    A folder that already exists keeps its mode: it may be the user's own, shared on
    purpose; the files previsit writes into it are 0600 anyway.
    """
    missing = []
    folder = path
    while not folder.exists():
        missing.append(folder)
        if folder.parent == folder:
            break
        folder = folder.parent
    path.mkdir(parents=True, exist_ok=True, mode=FOLDER_MODE)
    for created in missing:
        os.chmod(created, FOLDER_MODE)  # mkdir's mode is masked by the umask
    return path


def write_bytes(path: Path, data: bytes) -> Path:
    """Write `data` to `path` atomically with mode 0600, replacing a file (or a symlink:
    the link is replaced, its target left alone) that is there."""
    return write_chunks(path, (data,))


def write_chunks(path: Path, chunks: Iterable[bytes]) -> Path:
    """`write_bytes` of a file given in parts (an output too large to hold as one string):
    nothing replaces the old file unless every part was written."""
    private_folder(path.parent)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name[:40]}.",
                                     suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), FILE_MODE)  # mkstemp's 0600, whatever the umask
            for chunk in chunks:
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return path


def write_text(path: Path, text: str) -> Path:
    """Write `text` as UTF-8, atomically, mode 0600 (see `write_bytes`). A character UTF-8
    cannot hold (a lone surrogate) becomes U+FFFD rather than an exception half-way."""
    return write_bytes(path, utf8(text))


def utf8(text: str) -> bytes:
    """`text` as UTF-8, a lone surrogate (which UTF-8 cannot hold) as U+FFFD."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return re.sub("[\ud800-\udfff]", "\ufffd", text).encode("utf-8")
