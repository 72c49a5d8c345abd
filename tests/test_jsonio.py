"""jsonio: what a hostile or broken JSON text becomes — a value previsit can use, or JsonError."""

from __future__ import annotations

import dataclasses
import gc
import json
import math
from datetime import date, datetime, timedelta, timezone
from enum import IntEnum, StrEnum
from pathlib import Path
from typing import NamedTuple

import pytest

from previsit.jsonio import (
    MAX_DEPTH,
    JsonError,
    _spelled_unlike_json,
    collector_paused,
    dumps,
    loads,
    object_or_none,
    split_array,
)
from previsit.plan import _encode, json_default


def test_ordinary_json_is_read_as_the_standard_library_reads_it() -> None:
    text = '{"b": [1, 2.5, -0.0, true, null, "x"], "a": {"n": 18446744073709551615}}'
    assert loads(text) == {"b": [1, 2.5, -0.0, True, None, "x"],
                           "a": {"n": 18446744073709551615}}
    assert loads(text.encode()) == loads(text)


@pytest.mark.parametrize("data", ['\ufeff{"a": 1}', b'\xef\xbb\xbf{"a": 1}'])
def test_a_utf8_byte_order_mark_is_ignored(data: str | bytes) -> None:
    assert loads(data) == {"a": 1}


def test_a_lone_surrogate_becomes_the_replacement_character_in_values_and_keys() -> None:
    value = loads('{"name": ["Gil \\ud800"], "k\\udfff": {"deep": ["\\ud800x"]}}')
    assert value == {"name": ["Gil \ufffd"], "k\ufffd": {"deep": ["\ufffdx"]}}
    # ... and a real pair stays the character it encodes
    assert loads('"\\ud83d\\ude00"') == "\U0001f600"
    dumps(value).encode("utf-8")  # writable as UTF-8: the reason for the replacement


def test_numbers_beyond_a_double_are_read_not_refused() -> None:
    # one such value must not cost a whole bundle file; record.py sets it aside
    assert loads('{"v": ' + "1" + "0" * 400 + "}") == {"v": 10**400}
    assert loads("[1e400]") == [float("inf")]


@pytest.mark.parametrize(("text", "message"), [
    ("[NaN]", "not valid JSON: ValueError: NaN is not a JSON number"),
    ("[-Infinity]", "not valid JSON: ValueError: -Infinity is not a JSON number"),
    ("9" * 5000, "not valid JSON: ValueError: Exceeds the limit (4300 digits)"),
    ("{", "not valid JSON: Expecting property name enclosed in double quotes at line 1 "
          "column 2"),
    ("[" * 100_000 + "]" * 100_000, f"not valid JSON: nested deeper than {MAX_DEPTH} levels"),
    (b'{"a": "\xff"}', "not valid JSON: UnicodeDecodeError"),
    ("", "not valid JSON: Expecting value at line 1 column 1"),
])
def test_what_is_not_json_is_a_json_error(text: str | bytes, message: str) -> None:
    with pytest.raises(JsonError) as caught:
        loads(text)
    assert str(caught.value).startswith(message)


def test_nesting_up_to_the_limit_is_read() -> None:
    assert loads("[" * 1000 + "]" * 1000) is not None


def test_object_or_none() -> None:
    assert object_or_none('{"a": 1}') == {"a": 1}
    assert object_or_none("[1]") is None
    assert object_or_none("[" * 5000 + "]" * 5000) is None


def _standard(data: object) -> str:
    """What dumps wrote before orjson, and must still write byte for byte."""
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


@pytest.mark.parametrize("data", [
    {"b": 1, "a": [], "c": {}, "d": [[], {}, [{}]], "e": None, "f": True, "g": False},
    # floats: fixed and exponent notation, the edges of each, signed zero, subnormals
    [0.1, 1.0, -0.0, 100.0, 1e-4, 1e-05, -2.5e-07, 4.477e-05, 1e-09, 1e15, 1e16, 1.5e16,
     123456789012345.6, 1e22, 5e-324, 2.2250738585072014e-308, 1.7976931348623157e308,
     0.30000000000000004, 1 / 3],
    # integers: the 64-bit edges orjson writes, and beyond them (json writes those)
    [2**63 - 1, 2**63, -(2**63), 2**64 - 1, 2**64, -(2**63) - 1, 10**40],
    # strings: control characters, quotes, DEL, line separators, BOM, non-BMP
    "".join(map(chr, range(0x20))) + '"\\/\x7f\x80\u2028\u2029\ufeff é 中 \U0001f600',
    # keys sorted by code point, non-ASCII and astral included
    {"é": 1, "Z": 2, "a": 3, "\U0001f600": 4, "\uffff": 5, "ａ": 6, "": 7},
    {1: "int key", 2: "another"},  # non-string keys: orjson refuses, json converts them
    {"note": "ratio: 1e-5, 0.00001", "when": "2026-12-01"},  # number-like text in strings
    {"x": ("a", "tuple")},
])
def test_dumps_writes_what_the_standard_library_wrote(data: object) -> None:
    assert dumps(data) == _standard(data)


def test_dumps_literal_spellings() -> None:
    assert dumps({"a": 1e-05, "b": [2.5e-07]}) == \
        '{\n  "a": 1e-05,\n  "b": [\n    2.5e-07\n  ]\n}\n'
    assert dumps({"t": "\x1f\n"}) == '{\n  "t": "\\u001f\\n"\n}\n'
    assert dumps([]) == "[]\n"
    assert dumps(0.0001) == "0.0001\n"


def test_dumps_of_a_subclass_or_dataclass_is_the_standard_librarys() -> None:
    class Code(str):
        pass

    assert dumps({"c": Code("x")}) == '{\n  "c": "x"\n}\n'

    @dataclasses.dataclass
    class Point:
        x: int

    with pytest.raises(TypeError):
        dumps(Point(1))  # as json.dumps: not JSON data


def test_dumps_of_a_non_finite_float_is_null() -> None:
    """JSON has no NaN; previsit never holds one (record.py sets them aside)."""
    assert dumps([math.nan, math.inf]) == "[\n  null,\n  null\n]\n"


def test_golden_outputs_are_written_byte_for_byte_again() -> None:
    golden = Path(__file__).parent / "golden" / "sample-day"
    files = sorted(golden.rglob("*.json"))
    assert len(files) > 3
    for path in files:
        text = path.read_text(encoding="utf-8")
        assert dumps(loads(text)) == text, path.name


def test_the_collector_is_paused_while_reading_and_back_after_the_last_pause() -> None:
    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled()
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the outer pause still holds
    assert gc.isenabled()
    with pytest.raises(JsonError), collector_paused():
        loads("{oops")
    assert gc.isenabled()  # back after an error too


def test_a_collector_switched_off_before_stays_off() -> None:
    gc.disable()
    try:
        with collector_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


@pytest.mark.parametrize("text,unlike", [
    (b'{\n  "a": 0.00001\n}\n', True),  # json: 1e-05
    (b'{\n  "a": -0.000044771168669661275\n}\n', True),
    (b'[\n  1e-9,\n  2\n]\n', True),  # json: 1e-09
    (b"0.00001\n", True),
    (b'{\n  "a": 10.00001,\n  "b": 1e-10,\n  "c": 1e+16\n}\n', False),  # spelled alike
    # in strings: ids and text that look like such numbers are not numbers
    (b'{\n  "id": "9d35e-4b1f-0.0000",\n  "t": "x-1e-5 mg"\n}\n', False),
])
def test_numbers_spelled_unlike_json_are_found_in_orjson_output(text: bytes,
                                                                 unlike: bool) -> None:
    assert _spelled_unlike_json(text) is unlike


def test_split_array_finds_each_object_of_the_array_and_parses_the_rest() -> None:
    text = ' {"resourceType": "Bundle", "entry" : [ {"a": [1, {"b": "]}"}]} ,\n{"c": 2}],' \
        ' "total": 2, "meta": {"x": "\\"entry\\""}}\n'
    split = split_array(text, "entry")
    assert split is not None
    others, spans = split
    assert others == {"resourceType": "Bundle", "total": 2, "meta": {"x": '"entry"'}}
    assert [text[start:end] for start, end in spans] == ['{"a": [1, {"b": "]}"}]}', '{"c": 2}']
    assert split_array('{"entry": [], "n": 1}', "entry") == ({"n": 1}, [])
    # the member's name as JSON spells it, escapes and all
    assert split_array('{"entr\\u0079": [{}]}', "entry") == ({}, [(16, 18)])


@pytest.mark.parametrize("text", [
    '{"entry": [{}]', '{"entry": [{}]} x', '[{"entry": []}]', '{"n": 1}', '"entry"',
    '{"entry": [{}], "entry": []}',  # twice: which one counts is the whole parser's call
    '{"entry": [{}, 1]}', '{"entry": [{}, "x"]}', '{"entry": [[]]}', '{"entry": {}}',
    '{"entry": [{},]}', '{"entry": [{"n": NaN}]}', '{"n": Infinity, "entry": []}',
    '{"entry": [{"n": 1} {"n": 2}]}', '{"entry" [{}]}', '{"n": 1,}', '{"entry": [{}]}}',
    '{"entry": [' + '[' * 5000 + ']' * 5000 + ']}',
    '\ufeff{"entry": []}'])
def test_split_array_leaves_anything_unusual_to_the_whole_parser(text: str) -> None:
    assert split_array(text, "entry") is None


class _Tone(StrEnum):
    DUE = "due"


class _Rank(IntEnum):
    HIGH = 3


class _Pair(NamedTuple):
    low: float
    high: float


@dataclasses.dataclass(frozen=True)
class _Inner:
    when: datetime
    tone: _Tone


@dataclasses.dataclass(frozen=True)
class _Outer:
    zeta: tuple[_Inner, ...]
    alpha: date
    rank: _Rank
    pair: _Pair
    extra: dict[str, object]


@pytest.mark.parametrize("small", [2.5, 1e-05])  # 1e-05: the standard library writes it
def test_dumps_with_a_default_writes_what_a_plan_to_json_wrote(small: float) -> None:
    value = _Outer(zeta=(_Inner(datetime(2026, 12, 1, 9, 30, tzinfo=timezone(timedelta(
        hours=-6))), _Tone.DUE),), alpha=date(2026, 11, 30), rank=_Rank.HIGH,
        pair=_Pair(small, 7.0), extra={"b": [1, None], "a": True})
    text = dumps(value, default=json_default)
    assert text == dumps(_encode(value))
    assert text == json.dumps(_encode(value), indent=2, sort_keys=True) + "\n"
    assert json.loads(text) == {
        "alpha": "2026-11-30", "extra": {"a": True, "b": [1, None]},
        "pair": [small, 7.0], "rank": 3,
        "zeta": [{"tone": "due", "when": "2026-12-01T09:30:00-06:00"}]}
    with pytest.raises(TypeError):
        dumps({"a": {1, 2}}, default=json_default)  # a set is no JSON, as for json.dumps
