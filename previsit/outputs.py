"""A run's output folder, filled as visits finish: the streamed run's sink.

`run.run_to_folder` hands each visit here as soon as it is planned and written back
(`FolderSink.add`, in completion order). What a visit leaves is spooled at once in a
private folder inside the output folder (`.previsit-spool-*`, 0700): its plan.json entry
as text, its transaction Bundle and visit sheet as files, its article of visits.html, its
entry of the huddle (pickled); in memory stays only where its parts lie in the spool (and
the report's counts, in run.py). `FolderSink.finish` then assembles the
outputs in the day's order (appointment start, then id), whatever the completion order:
plan.json, the transactions and the sheets are byte-identical to those of `run_day` +
`run.write_outputs` + the CLI's sheets, and none of them is ever one string in memory
but for the huddle. The spool is removed when the sink is closed.
"""

from __future__ import annotations

import logging
import os
import pickle
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from previsit.filenames import safe_part
from previsit.files import FILE_MODE, private_folder, utf8, write_chunks, write_text
from previsit.jsonio import dumps
from previsit.plan import DayPlan, Horizon, VisitPlan, json_default
from previsit.sheets.filenames import visit_sheet_filename
from previsit.sheets.formatting import format_day
from previsit.sheets.huddle import HuddleEntry, huddle_entry, whole_day_huddle
from previsit.sheets.render import (
    render_huddle_parts,
    render_visit_article,
    render_visit_sheet,
    render_visit_sheets_from,
)
from previsit.sheets.selection import time_key

sheet_log = logging.getLogger("previsit.sheets")

# Where plan.json's two lists of visits go in its header, before they are streamed in.
_VISITS = "@@previsit-spooled-visits@@"
_AHEAD = "@@previsit-spooled-labs-ahead@@"
_ITEM_INDENT = "    "  # a visit in plan.json: an item of a list two levels down


def write_sheet(path: Path, render: Callable[[], str]) -> bool:
    """One sheet; one that cannot be rendered is left out with a warning (the others and
    the plan are still written)."""
    try:
        html = render()
    except Exception as exc:
        _left_out(exc, path.name)
        return False
    write_text(path, html)
    return True


def _write_parts(path: Path, render: Callable[[], Iterator[str]]) -> None:
    """`write_sheet` of a document rendered in parts (the day's, of thousands of visits):
    one that cannot be rendered is left out (the earlier file stays, as with write_sheet);
    a failure to write it is raised."""
    rendering: list[Exception] = []

    def parts() -> Iterator[bytes]:
        try:
            for part in render():
                yield utf8(part)
        except Exception as exc:
            rendering.append(exc)
            raise

    try:
        write_chunks(path, parts())
    except Exception as exc:
        if not rendering:
            raise
        _left_out(exc, path.name)


def _left_out(exc: Exception, name: str) -> None:
    sheet_log.warning("a sheet could not be rendered (%s): %s left out",
                      type(exc).__name__, name)
    sheet_log.debug("rendering %s", name, exc_info=True)


@dataclass(frozen=True)
class _Part:
    """Where a piece of text lies in a spool file."""

    offset: int
    length: int


@dataclass
class _Spooled:
    """What the sink keeps of one visit: where its parts are, never its plan."""

    horizon: Horizon
    plan: _Part
    transaction: str | None = None  # its Bundle's file name in transactions/
    sheet: str | None = None  # its sheet's file name in sheets/ (rendered)
    article: _Part | None = None  # its part of visits.html
    huddle: _Part | None = None  # its HuddleEntry, pickled
    sort_key: tuple[int, float, str] = (0, 0.0, "")


class _Appender:
    """A spool file written at its end and read back piece by piece. Appends are buffered
    (a megabyte): a night appends to each spool thousands of times, and a write of each, on
    a machine whose every core is planning, cost the run's process a tenth of a millisecond
    apiece; a read writes out what is buffered first."""

    def __init__(self, path: Path) -> None:
        self._file: IO[bytes] = open(  # noqa: SIM115 - closed by close()
            path, "w+b", buffering=1 << 20)
        self._end = 0
        self._at_end = True  # the file's position is its end: appends need no seek

    def append(self, data: bytes) -> _Part:
        if not self._at_end:
            self._file.seek(self._end)
            self._at_end = True
        self._file.write(data)
        part = _Part(self._end, len(data))
        self._end += len(data)
        return part

    def read(self, part: _Part) -> bytes:
        self._at_end = False
        self._file.seek(part.offset)  # writes out what is buffered
        return self._file.read(part.length)

    def close(self) -> None:
        self._file.close()


@dataclass(frozen=True)
class Rendered:
    """A finished visit's part of each output, as text (what a worker process sends back
    instead of rendering in the run's process). None where it could not be rendered: that
    sheet is left out (visits.html or huddle.html, for an article or a huddle entry)."""

    plan: str  # its entry of plan.json, indented as there
    transaction: str | None  # its transaction Bundle's file
    article: str | None = None  # its part of visits.html (clinic-day visits only)
    sheet: str | None = None  # its own sheet
    huddle: HuddleEntry | None = None


def render_visit(plan: VisitPlan, bundle: dict[str, Any] | None, horizon: Horizon,
                 generated_for: date) -> Rendered:
    """Every output of one visit of the day `generated_for`. Pure; a sheet that cannot be
    rendered is logged and left out."""
    text = dumps(plan, default=json_default).rstrip("\n").replace("\n", "\n" + _ITEM_INDENT)
    transaction = None if bundle is None else dumps(bundle)
    if horizon != Horizon.HUDDLE:
        return Rendered(text, transaction)
    article = sheet = huddle = None
    try:
        article = render_visit_article(plan, generated_for)
    except Exception as exc:
        _left_out(exc, "visits.html")
    same_day = article is not None and format_day(plan.visit.day) == format_day(generated_for)
    try:
        sheet = render_visit_sheet(plan, article=article if same_day else None)
    except Exception as exc:
        _left_out(exc, visit_sheet_filename(plan))
    try:
        huddle = huddle_entry(plan)
    except Exception as exc:
        _left_out(exc, "huddle.html")
    return Rendered(text, transaction, article, sheet, huddle)


class FolderSink:
    """The sink of a streamed run: see the module's docstring. A context manager: the
    spool is removed on leaving, whether the outputs were assembled or not."""

    def __init__(self, out_dir: Path, generated_for: date,
                 minutes_saved: Mapping[str, float]) -> None:
        self.out_dir = out_dir
        self.generated_for = generated_for
        self.minutes_saved = minutes_saved
        private_folder(out_dir)
        self.spool = Path(tempfile.mkdtemp(prefix=".previsit-spool-", dir=out_dir))
        self._spooled: dict[int, _Spooled] = {}
        self._plans = _Appender(self.spool / "plans.jsonl")
        self._articles = _Appender(self.spool / "articles.html")
        self._huddle = _Appender(self.spool / "huddle.pickle")
        self._visits_ok = True  # visits.html: every article rendered
        self._huddle_ok = True

    def __enter__(self) -> FolderSink:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._plans.close()
        self._articles.close()
        self._huddle.close()
        shutil.rmtree(self.spool, ignore_errors=True)

    # --- as visits finish ---------------------------------------------------------------

    def add(self, position: int, horizon: Horizon, plan: VisitPlan,
            bundle: dict[str, Any] | None, rendered: Rendered | None = None) -> None:
        """Spool one finished visit; `rendered`: its outputs, when already rendered (by a
        worker process) from this very plan."""
        if rendered is None:
            rendered = render_visit(plan, bundle, horizon, self.generated_for)
        spooled = _Spooled(horizon, self._plans.append(utf8(rendered.plan)),
                           sort_key=time_key(plan.visit))
        if rendered.transaction is not None:
            spooled.transaction = f"{safe_part(plan.visit.appointment_id)}.json"
            _spool_file(self.spool / f"tx-{position}.json", utf8(rendered.transaction))
        if horizon == Horizon.HUDDLE:
            if rendered.article is None:
                self._visits_ok = False
            else:
                spooled.article = self._articles.append(utf8(rendered.article))
            if rendered.sheet is not None:
                _spool_file(self.spool / f"sheet-{position}.html", utf8(rendered.sheet))
                spooled.sheet = visit_sheet_filename(plan)
            if rendered.huddle is None:
                self._huddle_ok = False
            else:
                spooled.huddle = self._huddle.append(pickle.dumps(rendered.huddle))
        self._spooled[position] = spooled

    # --- at the end -----------------------------------------------------------------------

    @property
    def transaction_count(self) -> int:
        return sum(1 for s in self._spooled.values() if s.transaction is not None)

    def _order(self) -> list[tuple[int, _Spooled]]:
        return sorted(self._spooled.items())

    def write_plan(self, day: DayPlan) -> Path:
        """plan.json: `day`'s header (it holds no visits) with the spooled visits."""
        header = day.to_json()
        header["visits"], header["labs_ahead"] = [_VISITS], [_AHEAD]
        text = dumps(header)
        order = self._order()

        def chunks() -> Iterator[bytes]:
            rest = text
            lists = sorted(((f'[\n{_ITEM_INDENT}"{marker}"\n  ]', horizon) for marker, horizon
                            in ((_VISITS, Horizon.HUDDLE), (_AHEAD, Horizon.LABS_AHEAD))),
                           key=lambda ph: text.index(ph[0]))  # in the keys' sorted order
            for placeholder, horizon in lists:
                before, rest = rest.split(placeholder, 1)
                yield utf8(before)
                parts = [s.plan for _, s in order if s.horizon == horizon]
                if not parts:
                    yield b"[]"
                    continue
                yield f"[\n{_ITEM_INDENT}".encode()
                for number, part in enumerate(parts):
                    if number:
                        yield f",\n{_ITEM_INDENT}".encode()
                    yield self._plans.read(part)
                yield b"\n  ]"
            yield utf8(rest)

        return write_chunks(self.out_dir / "plan.json", chunks())

    def write_transactions(self) -> Path:
        """transactions/: one Bundle per visit, the folder's earlier ones removed."""
        folder = _emptied(self.out_dir / "transactions", "*.json")
        for position, spooled in self._order():
            if spooled.transaction is not None:
                _move(self.spool / f"tx-{position}.json", folder / spooled.transaction)
        return folder

    def write_sheets(self) -> list[Path]:
        """Every visit's sheet, visits.html and huddle.html (the CLI's order of paths)."""
        folder = _emptied(self.out_dir / "sheets", "*.html")
        in_order = [(p, s) for p, s in self._order() if s.horizon == Horizon.HUDDLE]
        written = []
        for position, spooled in in_order:
            if spooled.sheet is not None:
                written.append(_move(self.spool / f"sheet-{position}.html",
                                     folder / spooled.sheet))
        # the documents of the whole day list its visits by time (select_plans' order)
        by_time = [s for _, s in sorted(in_order, key=lambda ps: ps[1].sort_key)]
        every = self.out_dir / "visits.html"
        if self._visits_ok:
            articles = (self._articles.read(s.article).decode("utf-8") for s in by_time
                        if s.article is not None)
            _write_parts(every, lambda: render_visit_sheets_from(self.generated_for, articles))
        written.append(every)
        huddle = self.out_dir / "huddle.html"
        if self._huddle_ok:
            entries = [_entry(self._huddle.read(s.huddle)) for s in by_time
                       if s.huddle is not None]
            _write_parts(huddle, lambda: render_huddle_parts(whole_day_huddle(
                self.generated_for, entries, self.minutes_saved), self.generated_for))
        written.append(huddle)
        return written


def _entry(data: bytes) -> HuddleEntry:
    entry = pickle.loads(data)  # our own spool, written by this run: nobody else's data
    assert isinstance(entry, HuddleEntry)
    return entry


def _spool_file(path: Path, data: bytes) -> None:
    """A visit's file in the spool, 0600, moved into place whole at the end (a rename: never
    seen torn). Not synced to disk one by one: a sync costs milliseconds, thousands of them
    a night's minutes; plan.json, the report and the day's documents are."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _emptied(folder: Path, pattern: str) -> Path:
    private_folder(folder)
    for stale in folder.glob(pattern):
        stale.unlink()
    return folder


def _move(spooled: Path, target: Path) -> Path:
    os.replace(spooled, target)
    return target

