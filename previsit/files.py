"""Files previsit reads and writes: one place for how, so every output is written alike."""

from __future__ import annotations

from pathlib import Path

from previsit.errors import PrevisitError


def read_text(path: Path, error: type[PrevisitError], what: str) -> str:
    """A UTF-8 text file, or `error` saying which file could not be read and why."""
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{path}: cannot read {what}: {exc}") from exc
