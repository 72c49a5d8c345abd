"""The identifiers previsit puts on what it writes, so that writing twice finds the first.

Every proposal and stored sheet carries an identifier derived only from what it is for
(the appointment and the order's code; the appointment for a sheet). Writes are
conditional on it (`ifNoneExist: identifier=system|value`), so a re-run, or two runs at
once, can never create a second copy. Values are hashed: a plain token needs no escaping
in a search, and does not expose the appointment id in the resource.
"""

from __future__ import annotations

import hashlib

# The default identifier systems ([output] identifier_system, sheet_identifier_system); a
# clinic may set its own. Sheets have a system of their own: a search for our proposals by
# system must not find documents.
DEFAULT_SYSTEM = "urn:previsit:proposal"
DEFAULT_SHEET_SYSTEM = "urn:previsit:sheet"


def stable_token(prefix: str, *parts: str) -> str:
    """`prefix-` and 32 hex digits of the SHA-256 of the parts (unit-separated)."""
    joined = "\x1f".join(parts)
    return f"{prefix}-{hashlib.sha256(joined.encode('utf-8', 'surrogatepass')).hexdigest()[:32]}"


def proposal_identifier(appointment_id: str, system: str, code: str) -> str:
    """The identifier value of the proposal of one coded action for one appointment."""
    return stable_token("pv", appointment_id, system, code)


def sheet_identifier(appointment_id: str) -> str:
    """The identifier value of one appointment's stored planning sheet."""
    return stable_token("pv-sheet", appointment_id, "planning-sheet")
