"""Behaviour pinned: the sample day's outputs are byte-identical to the committed snapshot.

A refactoring must leave every byte of plan.json, run-report.json (less timings), the
transaction Bundles and the sheets as they were. A deliberate change of behaviour
rewrites the snapshot with `python tests/golden_outputs.py` in the same commit.
"""

from __future__ import annotations

import difflib
import hashlib
from pathlib import Path

from golden_outputs import GOLDEN, kept, manifest, normalised, produce


def test_the_committed_files_are_the_ones_the_manifest_lists() -> None:
    for line in (GOLDEN / "MANIFEST").read_text(encoding="utf-8").splitlines():
        digest, rel = line.split("  ", 1)
        if kept(rel):
            assert hashlib.sha256((GOLDEN / rel).read_bytes()).hexdigest() == digest, rel


def test_sample_day_outputs_match_the_committed_snapshot(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert produce(out) == 0
    files = normalised(out)
    expected = (GOLDEN / "MANIFEST").read_text(encoding="utf-8")
    if manifest(files) == expected:
        return
    problems = []
    listed = {line.split("  ", 1)[1] for line in expected.splitlines()}
    for rel in sorted(listed ^ set(files)):
        problems.append(f"{rel}: {'missing' if rel in listed else 'not in the snapshot'}")
    for rel, data in files.items():
        golden = GOLDEN / rel
        if rel in listed and kept(rel) and golden.read_bytes() != data:
            diff = difflib.unified_diff(golden.read_text().splitlines(),
                                        data.decode().splitlines(), "snapshot", "now",
                                        lineterm="", n=1)
            problems.append(f"{rel} differs:\n" + "\n".join(list(diff)[:40]))
    if not problems:
        problems.append("a per-visit sheet differs (see MANIFEST digests)")
    raise AssertionError("\n\n".join(problems))
