"""jsonio: what a hostile or broken JSON text becomes — a value previsit can use, or JsonError."""

from __future__ import annotations

import pytest

from previsit.jsonio import MAX_DEPTH, JsonError, dumps, loads, object_or_none


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
