"""What the granted SMART scopes let the app do, read the way production servers read them.

The token response's `scope` says what was granted; previsit reads it as Medplum applies
it: a wildcard scope of the session's level (`patient/*.rs`) decides for every resource
type, so a type-specific write beside it (`patient/ServiceRequest.cu`) grants nothing;
otherwise the first scope naming the type decides. v1 `.read` is `rs`, `.*` is `cruds`,
and v1 `.write` grants nothing (Medplum maps it to nothing).

`unavailable()` says, for each action on proposals, why it cannot be offered — shown on
the page, so a clinician knows what to ask the EHR's administrators for.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

_V1 = {"read": "rs", "*": "cruds", "write": ""}

# What each action writes: accept creates the order and updates the proposal; dismiss
# updates (or, before the nightly run wrote it, creates) the proposal; propose now creates
# it. Every action creates a Provenance.
ACTION_NEEDS: Mapping[str, tuple[tuple[str, str], ...]] = {
    "accept": (("ServiceRequest", "cu"), ("MedicationRequest", "cu"), ("Provenance", "c")),
    "dismiss": (("ServiceRequest", "cu"), ("MedicationRequest", "cu"), ("Provenance", "c")),
    "propose": (("ServiceRequest", "c"), ("MedicationRequest", "c"), ("Provenance", "c")),
}
ACTION_WORDS = {"accept": "Accept", "dismiss": "Dismiss", "propose": "Propose now"}


@dataclass(frozen=True)
class Grant:
    scope: str  # as granted
    level: str  # "patient" or "user"

    def _parsed(self) -> list[tuple[str, str]]:
        out = []
        for item in self.scope.split():
            level, _, rest = item.partition("/")
            if level != self.level or "." not in rest:
                continue
            resource_type, _, permissions = rest.partition(".")
            permissions = permissions.split("?", 1)[0]
            out.append((resource_type, _V1.get(permissions, permissions)))
        return out

    def permissions(self, resource_type: str) -> str:
        """The letters (c r u d s) the server applies to this type."""
        parsed = self._parsed()
        wildcard = next((p for t, p in parsed if t == "*"), None)
        if wildcard is not None:
            return wildcard
        return next((p for t, p in parsed if t == resource_type), "")

    def wildcard(self) -> str | None:
        return next((f"{self.level}/*.{p}" for t, p in self._parsed() if t == "*"), None)

    def missing(self, resource_type: str, needed: str) -> str:
        have = self.permissions(resource_type)
        return "".join(letter for letter in needed if letter not in have)


def unavailable(grant: Grant, *, actions_enabled: bool) -> dict[str, str]:
    """Action → why it is not offered (absent: it is offered)."""
    if not actions_enabled:
        reason = ("acting on proposals is switched off in previsit's configuration "
                  "(web.enable_actions)")
        return dict.fromkeys(ACTION_NEEDS, reason)
    out: dict[str, str] = {}
    for action, needs in ACTION_NEEDS.items():
        lacking = [(t, grant.missing(t, n)) for t, n in needs if grant.missing(t, n)]
        if not lacking:
            continue
        wildcard = grant.wildcard()
        what = ", ".join(f"{t} ({_verbs(m)})" for t, m in lacking)
        if wildcard is not None:
            out[action] = (f"the EHR's authorization server applies the wildcard scope "
                           f"{wildcard} to every resource type, so previsit may not "
                           f"write {what}")
        else:
            out[action] = f"the EHR did not grant previsit the right to write {what}"
    return out


def _verbs(letters: str) -> str:
    words = {"c": "create", "u": "update", "r": "read", "s": "search", "d": "delete"}
    return " and ".join(words[letter] for letter in letters)
