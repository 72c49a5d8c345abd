"""Where the shipped data folders (rules/, templates/) are, installed or in a checkout."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def shipped_dir(name: str) -> Path:
    """previsit/<name> in an installed wheel; the repository's top-level <name> otherwise.

    The design card keeps rules/ and templates/ at the top of the repository; the wheel
    carries them inside the package (see pyproject.toml), and an editable install or a
    plain checkout reads them where they are.
    """
    installed = _PACKAGE / name
    if installed.is_dir():
        return installed
    return _PACKAGE.parent / name
