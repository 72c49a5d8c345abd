"""A worker process's answer, handed over in a file: a process pool that cannot hang.

CPython's ProcessPoolExecutor sends each answer back whole through one pipe. A worker
killed (out of memory, a signal) while writing an answer larger than the pipe holds — a
patient's plans and sheets, a chunk of a folder's scan: tens to hundreds of kilobytes —
leaves the pool's reader waiting for the rest forever: the pool is never told the worker
died, the run never ends. So a worker writes its answer to a file of its own (`put`) and
answers with the file's name, a few bytes, written whole or not at all; the run's process
reads the file and removes it (`take`). A worker that dies is then seen as dead, and the
pool as broken, as the run expects.

The files live in a private folder (0700) made for the pool (`folder`), in /dev/shm when
it has room to spare (memory: nothing touches a disk, and only the answers in flight take
room; a container's /dev/shm can be as small as 64 MB), else in the temporary folder; the
folder is removed with the pool.
"""

from __future__ import annotations

import os
import pickle
import shutil
import tempfile
from typing import Any

_SHARED_MEMORY = "/dev/shm"


_ROOM = 1 << 30  # free bytes /dev/shm must have to be used


def folder() -> str:
    """A new private folder for one pool's answers."""
    try:
        shm = os.statvfs(_SHARED_MEMORY)
        if shm.f_bavail * shm.f_frsize >= _ROOM and os.access(_SHARED_MEMORY, os.W_OK):
            return tempfile.mkdtemp(prefix="previsit-answers-", dir=_SHARED_MEMORY)
    except OSError:
        pass  # no /dev/shm (not Linux), or not ours to write in
    return tempfile.mkdtemp(prefix="previsit-answers-")


def put(answer: Any, into: str) -> str:
    """In the worker: `answer` written to a new file in `into`; the file's path."""
    fd, path = tempfile.mkstemp(dir=into, suffix=".answer")
    try:
        with os.fdopen(fd, "wb") as handle:
            pickle.dump(answer, handle, protocol=pickle.HIGHEST_PROTOCOL)
    except BaseException:
        os.unlink(path)
        raise
    return path


def take(path: str) -> Any:
    """In the run's process: the answer `put` wrote, its file removed. (A file of this
    run's own private folder, written by its own worker: its own data.)"""
    try:
        with open(path, "rb") as handle:
            return pickle.load(handle)
    finally:
        os.unlink(path)


def remove(into: str) -> None:
    shutil.rmtree(into, ignore_errors=True)
