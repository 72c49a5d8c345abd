"""text: what a terminal, a log or a sheet may show of a server's or a chart's text."""

from __future__ import annotations

import pytest

from previsit.text import shorten, terminal_safe, without_bidi_controls, without_password


@pytest.mark.parametrize(("text", "shown"), [
    ("\x1b[5;41mBLINK\x1b[25;49m", "[5;41mBLINK[25;49m"),  # the ESC goes, the rest is inert
    ("\x1b]0;pwned\x07title", "]0;pwnedtitle"),
    ("ok\rOVERWRITTEN", "ok OVERWRITTEN"),
    ("a\r\nFORGED LINE: all planned", "a  FORGED LINE: all planned"),
    ("\x9b2J clear", "2J clear"),  # the one-character CSI
    ("MRN RFM-\u202e100234\u202c", "MRN RFM-100234"),
    ("\u2067rtl\u2069 \u200fmark \u061calm", "rtl mark alm"),
    ("line\u2028separator\x85next", "line separator next"),
    ("tab\there", "tab here"),
    ("Gil \ud800", "Gil \ufffd"),
    ("Ünïcödé, 日本語, ✓", "Ünïcödé, 日本語, ✓"),
    (404, "404"),
])
def test_terminal_safe_leaves_nothing_that_drives_a_terminal(text: object, shown: str) -> None:
    assert terminal_safe(text) == shown


def test_previsit_s_own_line_breaks_can_be_kept() -> None:
    assert terminal_safe("rules:\n  a.yaml: bad\r\x1b[2J", keep_newlines=True) == \
        "rules:\n  a.yaml: bad [2J"


def test_terminal_safe_caps_the_length() -> None:
    assert terminal_safe("A" * 10_000_000, limit=10) == "AAAAAAAAA…"


@pytest.mark.parametrize(("url", "shown"), [
    ("http://nightly:pw-7d3f9a@127.0.0.1:8103/fhir", "http://nightly:***@127.0.0.1:8103/fhir"),
    ("see HTTPS://u:p%40ss@ehr.example/fhir/R4 now", "see HTTPS://u:***@ehr.example/fhir/R4 now"),
    ("https://ehr.example/fhir?x=a:b@c", "https://ehr.example/fhir?x=a:b@c"),  # not userinfo
    ("https://user@ehr.example/fhir", "https://user@ehr.example/fhir"),  # no password
])
def test_a_url_password_is_never_shown(url: str, shown: str) -> None:
    assert without_password(url) == shown
    assert terminal_safe(url) == shown


def test_a_sheet_keeps_isolates_out_of_the_data_and_line_feeds_in() -> None:
    assert without_bidi_controls("Able\u202e1202-21-10\u202c\u2066x\u2069\nnext\x1b") == \
        "Able1202-21-10x\nnext"


@pytest.mark.parametrize(("text", "limit", "shown"), [
    ("short", 10, "short"), ("exactly10!", 10, "exactly10!"), ("a bit too long", 10, "a bit too…"),
])
def test_shorten(text: str, limit: int, shown: str) -> None:
    assert shorten(text, limit) == shown
