"""JSON in and out: the one place previsit parses and writes JSON.

Every read of FHIR JSON — a server's answer, a bundle file, a plan.json — goes through
`loads` or `object_or_none`, so that limits on what a hostile or broken source can make
previsit do (nesting depth, size, number parsing) are enforced in one place. Outputs are
written by `dumps` with sorted keys, so the same run gives byte-identical files.

Parsing is orjson first: fast, a fixed nesting limit, no recursion in Python. orjson also
refuses two things that RFC 8259 allows and real exports contain — a lone surrogate escape
(`"\\ud800"`) and a number too large for a double (`1e400`, a 400-digit integer) — and one
such value must not cost a whole bundle file or a whole appointment search. Those texts
are read again by the standard library, and what it returns is made safe: a lone surrogate
becomes U+FFFD (it cannot be written as UTF-8 anywhere: a sheet, plan.json, a terminal),
and a huge integer stays a Python int for `record.py` to set aside. NaN and Infinity are not
JSON and are refused.
"""

from __future__ import annotations

import gc
import json
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import orjson

MAX_DEPTH = 1024  # orjson's own fixed limit: arrays and objects nested deeper are refused
_BOM = "\ufeff"
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_DUMPS = (orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE
          | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME
          | orjson.OPT_PASSTHROUGH_SUBCLASS)
# What orjson spells unlike Python's float repr, and only that (checked on every double):
# fixed notation from 1e-5 to 1e-4 (0.00001 for 1e-05) and a one-digit negative exponent
# (1e-9 for 1e-09). Positive exponents and everything else are spelled alike.
_FIXED_SMALL = re.compile(rb"0\.0000")
_SHORT_EXPONENT = re.compile(rb"e-[0-9](?![0-9])")
_NUMBER_BYTES = frozenset(b"0123456789.")
_WHITESPACE = re.compile(r"[ \t\n\r]*")  # JSON's whitespace, and only that

class JsonError(ValueError):
    """Text that is not JSON (or not the JSON expected)."""


def loads(data: bytes | str) -> Any:
    """Parse JSON text (a UTF-8 byte order mark is ignored); JsonError when it cannot be
    parsed."""
    data = _without_bom(data)
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        if "depth" in str(exc):
            # Not retried: the standard library's parser recurses in C as deep as it is told.
            raise JsonError(f"not valid JSON: nested deeper than {MAX_DEPTH} levels") from None
    try:
        value = json.loads(data, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise JsonError(f"not valid JSON: {exc.msg} at line {exc.lineno} column "
                        f"{exc.colno}") from None
    except RecursionError:
        raise JsonError(f"not valid JSON: nested deeper than {MAX_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:
        # e.g. an integer of more than 4,300 digits (Python refuses to convert it)
        raise JsonError(f"not valid JSON: {type(exc).__name__}: {str(exc)[:100]}") from None
    return _without_lone_surrogates(value)


def split_array(text: str, name: str) -> tuple[Any, list[tuple[int, int]]] | None:
    """A large document `{..., "<name>": [{...}, {...}], ...}` read a piece at a time.

    Parsed whole, a 14 MB Bundle of appointments holds 130 MB of Python objects at once.
    This finds where each object of the array `name` is in `text`, as (start, end): parse
    one with `loads(text[start:end])`, then drop it. Returned with the document's other
    members, parsed by `loads` (the array left out). Anything but that shape, or anything
    unusual (not JSON, the member twice, an item that is not an object, a NaN, nesting
    too deep): None, and the caller parses the text whole, which says what is wrong. The
    items' ends are found by the standard library's parser (one item held at a time).
    """
    others: list[str] = []
    items: list[tuple[int, int]] | None = None
    try:
        at = _skip(text, 0)
        if text[at:at + 1] != "{":
            return None
        at = _skip(text, at + 1)
        while text[at:at + 1] == '"':
            start = at
            key, at = _SCAN.raw_decode(text, at)
            at = _skip(text, at)
            if text[at:at + 1] != ":":
                return None
            at = _skip(text, at + 1)
            if key != name:
                at = _SCAN.raw_decode(text, at)[1]
                others.append(text[start:at])
            elif items is not None or text[at:at + 1] != "[":
                return None
            else:
                items = []
                at = _items(text, _skip(text, at + 1), items)
            at = _skip(text, at)
            if text[at:at + 1] == ",":
                at = _skip(text, at + 1)
            elif text[at:at + 1] == "}":
                if items is None or _skip(text, at + 1) != len(text):
                    return None
                return loads("{" + ",".join(others) + "}"), items
    except (ValueError, RecursionError, _NotSplit):
        return None
    return None


def _skip(text: str, at: int) -> int:
    """Past the whitespace at `at`."""
    match = _WHITESPACE.match(text, at)
    return match.end() if match else at


class _NotSplit(Exception):
    """The array is not one of objects only: parse the text whole."""


def _items(text: str, at: int, items: list[tuple[int, int]]) -> int:
    """Where each object of the array at `at` (after its `[`) is; the end of the array."""
    if text[at:at + 1] == "]":
        return at + 1
    while text[at:at + 1] == "{":
        end = _SCAN.raw_decode(text, at)[1]
        items.append((at, end))
        at = _skip(text, end)
        if text[at:at + 1] == "]":
            return at + 1
        if text[at:at + 1] != ",":
            break
        at = _skip(text, at + 1)
    raise _NotSplit


def object_or_none(data: bytes | str) -> dict[str, Any] | None:
    """The JSON object in `data`, or None when it is not JSON or not an object."""
    try:
        body = loads(data)
    except JsonError:
        return None
    return body if isinstance(body, dict) else None


def dumps(data: Any, default: Callable[[Any], Any] | None = None) -> str:
    """An output file's text: indented, keys sorted, UTF-8 as is, a final newline.

    Byte for byte what `json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False,
    default=default)` writes (outputs of earlier runs compare equal), at a tenth of the
    cost. Whatever orjson refuses (an integer beyond 64 bits, a key that is not a string, a
    lone surrogate, nesting deeper than 254) and any output with a float orjson spells
    differently is written by the standard library. `default` gives the JSON value of what
    neither writes itself (a dataclass, a date) and raises TypeError for what has none;
    orjson also hands it a subclass of str, int, float, dict, list or tuple (an enum, a
    NamedTuple), which it must give as its base type, as json writes it. A NaN or an
    infinity (which previsit never holds: record.py sets them aside) comes out as null, as
    JSON requires, rather than json's non-standard NaN.
    """
    try:
        text = orjson.dumps(data, default=default, option=_DUMPS)
    except orjson.JSONEncodeError:
        return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False,
                          default=default) + "\n"
    if _spelled_unlike_json(text):
        return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False,
                          default=default) + "\n"
    return text.decode("utf-8")


def _spelled_unlike_json(text: bytes) -> bool:
    """Whether orjson's indented output holds a number json would spell otherwise.

    Found by their bytes, then confirmed a number token: a value after `": "` or alone on
    an indented line (an array item). Text in a string never is (it follows a quote), so
    ids and notes cost a look, not a fallback; a false alarm would only cost json's time.
    """
    for match in _FIXED_SMALL.finditer(text):
        if _number_starts(text, match.start()) == match.start():
            return True
    for match in _SHORT_EXPONENT.finditer(text):
        start = match.start()
        if start and text[start - 1] in _NUMBER_BYTES and \
                _number_starts(text, start) is not None:
            return True
    return False


def _number_starts(text: bytes, at: int) -> int | None:
    """Where the number token holding byte `at` starts (its sign aside), or None when the
    bytes there are not a JSON value of an indented document."""
    start = at
    while start > 0 and text[start - 1] in _NUMBER_BYTES:
        start -= 1
    value = start - 1 if start > 0 and text[start - 1] == ord("-") else start
    if text[max(0, value - 2):value] == b": ":
        return start
    indent = value
    while indent > 0 and text[indent - 1] == ord(" "):
        indent -= 1
    return start if indent == 0 or text[indent - 1] == ord("\n") else None


@contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cycle collector off while parsed JSON is walked and dropped.

    A parsed document is a tree (no reference cycles): it is freed the moment it is
    dropped, and the collector has nothing to find in it. But its thousands of dicts and
    lists count as allocations, and each collection they trigger walks every live object
    of the process (the rule library, the FHIR models): a third of the time of reading a
    folder of bundles went there. Reads of many files (the bundle source's scan, one
    patient's record) run under this. Nested and concurrent pauses count: the collector
    comes back when the last one ends, and only if it was on before the first.
    """
    global _pauses, _was_enabled
    with _pause_lock:
        if _pauses == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _pauses += 1
    try:
        yield
    finally:
        with _pause_lock:
            _pauses -= 1
            if _pauses == 0 and _was_enabled:
                gc.enable()


_pause_lock = threading.Lock()
_pauses = 0
_was_enabled = False


def _without_bom(data: bytes | str) -> bytes | str:
    # RFC 8259 §8.1: a parser MAY ignore a byte order mark; Windows tools write one.
    if isinstance(data, str):
        return data[1:] if data.startswith(_BOM) else data
    return data[3:] if data.startswith(b"\xef\xbb\xbf") else data


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


# Finds where a value ends (split_array); NaN and Infinity are not JSON.
_SCAN = json.JSONDecoder(parse_constant=_refuse_constant)


def _clean(text: str) -> str:
    return _LONE_SURROGATE.sub("\ufffd", text) if _LONE_SURROGATE.search(text) else text


def _without_lone_surrogates(value: Any) -> Any:
    """`value` with every lone surrogate in its strings (keys too) replaced by U+FFFD.

    Iterative: the value may be nested as deep as the parser allowed, and the walk must not
    be the thing that runs out of stack.
    """
    if isinstance(value, str):
        return _clean(value)
    if not isinstance(value, (dict, list)):
        return value
    pending: list[Any] = [value]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            for key in list(node):
                item = node[key]
                if isinstance(item, str):
                    item = _clean(item)
                elif isinstance(item, (dict, list)):
                    pending.append(item)
                if isinstance(key, str) and _LONE_SURROGATE.search(key):
                    del node[key]
                    key = _clean(key)
                node[key] = item
        else:
            for index, item in enumerate(node):
                if isinstance(item, str):
                    node[index] = _clean(item)
                elif isinstance(item, (dict, list)):
                    pending.append(item)
    return value
