"""The sample day's outputs, as committed in tests/golden/sample-day: produce and compare.

`python tests/golden_outputs.py` rewrites the snapshot after a deliberate change of
behaviour (say why in the commit); test_golden_outputs.py fails on any other difference.
Every output file is compared byte for byte. The per-visit sheets repeat what visits.html
holds, so only their SHA-256 digests are committed (MANIFEST); run-report.json is kept
without its timings, the one part that changes run to run.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden" / "sample-day"
RUN_ARGS = ["run", "--source", str(ROOT / "sample_bundles"), "--date", "2026-12-01",
            "--timezone", "America/Chicago", "--quiet"]


def produce(out: Path) -> int:
    """Run the README's main command into `out`; return its exit code."""
    from previsit.cli.app import app
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, [*RUN_ARGS, "--out", str(out)], env={
        "PREVISIT_SOURCE_KIND": "bundles"})
    return result.exit_code


def normalised(out: Path) -> dict[str, bytes]:
    """Every output file by relative path, as compared: the report without timings, and
    this checkout's folder (plan.json names the rule library's) as `<repo>`."""
    files: dict[str, bytes] = {}
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        rel = path.relative_to(out).as_posix()
        data = path.read_bytes()
        if rel == "run-report.json":
            report = json.loads(data)
            report.pop("timings", None)
            data = (json.dumps(report, indent=2, sort_keys=True, ensure_ascii=False)
                    + "\n").encode()
        files[rel] = data.replace(str(ROOT).encode(), b"<repo>")
    return files


def manifest(files: dict[str, bytes]) -> str:
    return "".join(f"{hashlib.sha256(data).hexdigest()}  {rel}\n"
                   for rel, data in sorted(files.items()))


def kept(rel: str) -> bool:
    """Whether the file itself is committed (not only its digest)."""
    return not rel.startswith("sheets/")


def update(out: Path) -> None:
    files = normalised(out)
    if GOLDEN.exists():
        shutil.rmtree(GOLDEN)
    GOLDEN.mkdir(parents=True)
    for rel, data in files.items():
        if kept(rel):
            target = GOLDEN / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
    (GOLDEN / "MANIFEST").write_text(manifest(files), encoding="utf-8")


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        code = produce(Path(tmp) / "out")
        update(Path(tmp) / "out")
    print(f"snapshot rewritten in {GOLDEN} (the run exited {code})")
    sys.exit(0)
