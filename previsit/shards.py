"""Shards: one clinic day split across processes or hosts, by patient.

`previsit run --shard K/N` plans only the visits of the patients in shard K of N. A patient
is in shard `SHA-256(patient id, UTF-8) as a big-endian integer mod N, plus 1`: it depends on
the id and N alone — not on the order appointments arrive, the host, the Python version or
`PYTHONHASHSEED` (Python's own `hash()` of a string changes per process, so it is never used
here). All of one patient's appointments therefore land in one shard, and the rules that
look across a patient's visits that day (labs drawn at the first, the rest left to the last)
see exactly what a single run sees.

Kubernetes runs the shards as an Indexed Job: the Job controller sets `JOB_COMPLETION_INDEX`
(0-based) in each pod; the manifest sets `JOB_COMPLETIONS` to `spec.completions` (Kubernetes
does not). Without `--shard` those two variables choose the shard.

Each shard writes its own output folder with a `shard.json` marker; `previsit merge`
(previsit/merge.py) checks the markers and joins the folders into the day's one output.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from previsit.errors import ConfigError
from previsit.jsonio import JsonError, dumps, loads

MARKER = "shard.json"  # in a shard's output folder: which shard wrote it
INDEX_ENV = "JOB_COMPLETION_INDEX"  # set by Kubernetes in an Indexed Job's pods, 0-based
COUNT_ENV = "JOB_COMPLETIONS"  # set by the Job's manifest to spec.completions
MAX_SHARDS = 10_000  # far beyond any scheduler's useful parallelism; catches a typo


def shard_of(patient_id: str, count: int) -> int:
    """The shard (1..count) that plans this patient."""
    if count < 1:
        raise ValueError("a day is split into at least one shard")
    digest = hashlib.sha256(patient_id.encode("utf-8")).digest()
    return int.from_bytes(digest, "big") % count + 1


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count` (1-based, as `--shard K/N` says it)."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_SHARDS:
            raise ConfigError(f"a day is split into 1 to {MAX_SHARDS} shards, not {self.count}")
        if not 1 <= self.index <= self.count:
            raise ConfigError(f"shard {self.index} of {self.count}: K must be 1 to "
                              f"{self.count}")

    def holds(self, patient_id: str) -> bool:
        """Whether this shard plans the patient's visits."""
        return shard_of(patient_id, self.count) == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    """`K/N` (as `--shard 2/4`); ConfigError naming what is wrong."""
    index, slash, count = text.strip().partition("/")
    if not slash or not index.strip().isdigit() or not count.strip().isdigit():
        raise ConfigError(f"--shard {text!r}: write K/N, e.g. 2/4 for the second of four")
    return Shard(int(index), int(count))


def shard_from_env(env: Mapping[str, str]) -> Shard | None:
    """The shard of a Kubernetes Indexed Job's pod, or None outside one."""
    index = env.get(INDEX_ENV, "").strip()
    if not index:
        return None
    count = env.get(COUNT_ENV, "").strip()
    if not count:
        raise ConfigError(f"{INDEX_ENV} is set ({index}) but {COUNT_ENV} is not: set "
                          f"{COUNT_ENV} in the Job's pod template to its spec.completions")
    if not index.isdigit() or not count.isdigit():
        raise ConfigError(f"{INDEX_ENV}={index!r} and {COUNT_ENV}={count!r} must be whole "
                          "numbers")
    return Shard(int(index) + 1, int(count))


def chosen_shard(option: str | None, env: Mapping[str, str]) -> Shard | None:
    """`--shard` when given, else the Indexed Job's variables, else None (the whole day)."""
    return parse_shard(option) if option is not None else shard_from_env(env)


def write_marker(out_dir: Path, shard: Shard | None) -> None:
    """Say in the output folder which shard wrote it (merge checks it); an unsharded run
    removes a marker an earlier sharded run left there."""
    path = out_dir / MARKER
    if shard is None:
        path.unlink(missing_ok=True)
        return
    path.write_text(dumps({"shard": shard.index, "of": shard.count,
                           "hash": "sha256(patient id) mod N + 1"}), encoding="utf-8")


def read_marker(out_dir: Path) -> Shard | None:
    """The shard that wrote `out_dir`, or None when no shard.json is there."""
    path = out_dir / MARKER
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read ({exc})") from None
    try:
        data: Any = loads(text)
        return Shard(int(data["shard"]), int(data["of"]))
    except (JsonError, KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: not a shard marker ({exc})") from None
