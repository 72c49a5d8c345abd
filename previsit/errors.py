"""Every error previsit raises on purpose derives from `PrevisitError`.

Callers that only need to know "previsit refused, here is why" catch the root once (the
CLI does); callers that act differently per cause catch the specific class. Each message
says what was wrong and what to do, naming the file, appointment or request — never a
patient's name or identifier (those go to DEBUG logs and the run report).
"""

from __future__ import annotations


class PrevisitError(Exception):
    """The root of previsit's own errors: the message is safe to show a person."""
