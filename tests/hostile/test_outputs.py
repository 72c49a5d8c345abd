"""Issue 8, items 6 and 8: the files a run leaves behind.

Item 6: transaction files are named by a sanitized appointment id, so look-alike ids (`a/b`,
`a_b`, `a:b`) all become `a_b.json` and each overwrites the last: the write-back of two of
the three visits is lost. Wanted: every planned visit's transaction is on disk, each its own.

Item 8: outputs are world-readable (0644 files, 0755 folders) although they hold patient
names, birth dates and plans. Wanted: files 0600 and folders 0700, whatever the umask.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from hostile.harness import (
    Day,
    appointments_named,
    chart,
    clinic_day,
    run_args,
    run_cli,
    wrong_patient_orders,
)


def test_look_alike_appointment_ids_keep_their_own_transactions(tmp_path: Path) -> None:
    day = Day()
    for n, name in enumerate(("Ana Able", "Ben Baker", "Cy Cole", "Di Dove"), start=1):
        day.add(*chart(f"pat-{n}", age=50 + n, sex="female", name=name))
    day.book("a/b", "pat-1", "09:00").book("a_b", "pat-2", "09:20") \
        .book("a:b", "pat-3", "09:40").book("appt-4", "pat-4", "10:00")

    run = run_cli(run_args(source=day.write(tmp_path / "day")), out=tmp_path / "out")

    assert not run.crashed, run.explain()
    proposing = {aid for aid, visit in run.visits.items() if not visit["failed"] and any(
        p["outcome"] == "proposed" for p in visit["proposals"])}
    assert "appt-4" in proposing  # the control visit was planned with orders
    transactions = run.transactions()
    kept = [appointments_named(bundle) for bundle in transactions.values()]
    assert sorted(sorted(k) for k in kept) == sorted([a] for a in proposing)
    assert wrong_patient_orders(transactions, day.truth) == []


def test_outputs_are_readable_by_their_owner_only(tmp_path: Path) -> None:
    day = clinic_day()
    out = tmp_path / "out"
    previous = os.umask(0o022)  # the common default: what cron and a login shell give
    try:
        run = run_cli(run_args(source=day.write(tmp_path / "day")), out=out)
    finally:
        os.umask(previous)

    assert run.exit_code == 0, run.explain()
    modes = {str(p.relative_to(tmp_path)): stat.S_IMODE(p.stat().st_mode)
             for p in [out, *sorted(out.rglob("*"))]}
    assert len(modes) > 8  # plan, report, 3 transactions, 3 sheets, visits, huddle, folders
    wrong = {name: oct(mode) for name, mode in modes.items()
             if mode != (0o700 if (tmp_path / name).is_dir() else 0o600)}
    assert wrong == {}
