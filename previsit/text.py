"""Text from servers and charts, made safe to show: on a terminal, in a log, on a sheet.

A FHIR server's OperationOutcome, a CapabilityStatement's software name or a medication's
text is data, and data must not drive what shows it: an escape sequence retitles a window
or clears a screen, a carriage return rewrites a line, a line feed forges a line in the cron
mail, a right-to-left override reverses the digits that follow ("10-80-6202"), a lone
surrogate cannot even be encoded. `terminal_safe` removes all of that; `shorten` caps a
value's length so that a 10 MB name stays a name. Sheets add bidi isolation on top
(`previsit.sheets.render`): isolation keeps a right-to-left name readable without letting
it reorder its neighbours.
"""

from __future__ import annotations

import re

ELLIPSIS = "…"

# C0 controls (TAB, LF and CR included: data never starts a line of its own), DEL, the C1
# controls (U+009B is a one-character CSI), the line and paragraph separators, and the
# bidirectional marks, embeddings, overrides and isolates.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e"
                     "\u2066-\u2069]")
_BREAKS = re.compile("[\t\n\v\f\r\x85\u2028\u2029]")
# Only the embeddings and overrides (LRE RLE PDF LRO RLO) and the marks: what reorders text
# around it. Isolates (U+2066-U+2069) are what a sheet uses to contain a value.
_BIDI_CONTROLS = re.compile("[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
# scheme://user:password@host: the password of a URL printed in a summary or a log line.
_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^/@\s:]*):[^/@\s]*@")


def terminal_safe(text: object, *, keep_newlines: bool = False, limit: int | None = None
                  ) -> str:
    """`text` as a terminal or a log may show it: line breaks become spaces (kept with
    `keep_newlines`, for previsit's own multi-line messages), every other control and bidi
    character is removed, a lone surrogate becomes U+FFFD, a URL's password becomes ***,
    and with `limit` the result is at most that many characters."""
    value = str(text)
    if keep_newlines:
        lines = [_one_line(line) for line in value.split("\n")]
        value = "\n".join(lines)
    else:
        value = _one_line(value)
    value = without_password(value)
    return shorten(value, limit) if limit is not None else value


def _one_line(text: str) -> str:
    text = _BREAKS.sub(" ", text)
    text = _UNSAFE.sub("", text)
    return _LONE_SURROGATE.sub("\ufffd", text)


def without_bidi_controls(text: str) -> str:
    """`text` without bidi marks, embeddings, overrides and isolates, and without controls
    other than TAB and LF (what a sheet must never pass through from the chart)."""
    text = _BIDI_CONTROLS.sub("", text)
    text = re.sub("[\x00-\x08\x0b-\x1f\x7f-\x9f]", "", text)
    return _LONE_SURROGATE.sub("\ufffd", text)


def shorten(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters, the cut marked with an ellipsis."""
    if len(text) <= limit:
        return text
    return text[:max(limit - 1, 0)].rstrip() + ELLIPSIS


def without_password(url: str) -> str:
    """A URL as it may be printed: `http://user:pw@host/x` becomes `http://user:***@host/x`."""
    return _URL_PASSWORD.sub(r"\1:***@", url)
