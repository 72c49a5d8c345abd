"""File names made from FHIR ids: safe on every file system, and never two ids to one name.

An output file named after an appointment id must not let `a/b`, `a_b` and `a:b` overwrite
each other's file, nor `..` escape its folder, nor a 300-character id exceed a file
system's name limit. Clean ids keep their own name (people find files by appointment id);
anything that had to be changed, or was too long, gets a short hash of the original.
"""

from __future__ import annotations

import hashlib
import re

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
MAX_PART = 64  # a FHIR id's own maximum length


def safe_part(text: str) -> str:
    """`text` as one file-name component: itself when it is a clean id of at most 64
    characters, else a cleaned prefix and 8 hex digits of its SHA-256."""
    cleaned = _UNSAFE.sub("_", text).strip("._") or "none"
    if cleaned != text or len(cleaned) > MAX_PART:
        # Two ids that clean to the same text must not overwrite each other's file.
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]
        cleaned = f"{cleaned[:48]}-{digest}"
    return cleaned
