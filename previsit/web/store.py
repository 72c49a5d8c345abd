"""Server-side state of `previsit serve` in one SQLite file.

What lives here, and why nothing of it lives in the browser:
- **launch states**: one per OAuth round trip, keyed by the `state` parameter, holding the
  PKCE verifier and everything the callback needs (so a launch inside an EHR iframe works
  without third-party cookies); single-use, consumed atomically.
- **sessions**: who acts for which patient with which tokens; the browser holds only a
  random session id, and the database only its SHA-256.
- **CDS Hooks `jti`s** seen, until the JWT they came in expires (replay protection).
- **CDS cards issued** (card uuid → finding, patient) so that feedback, which names only the
  card, can be traced to the finding and patient it declined.
- **finding feedback**: CDS feedback (accepted / overridden with a coded reason) and
  dismissals in the app, keyed by a keyed hash of the patient reference so the nightly run
  can ask "was finding X declined for patient P since D?" without the database holding
  patient ids in the clear.

Tokens, the PKCE verifier and the session's clinical context are encrypted (AES-GCM, see
`keyring.py`), each bound to its row. Several uvicorn workers share the file: WAL journal,
a busy timeout, and writes in IMMEDIATE transactions.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from previsit.auth import Secret
from previsit.errors import PrevisitError
from previsit.web.keyring import Keyring
from previsit.web.urls import normalize_url

SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 10.0
# A card's feedback arrives within minutes; a week covers a clinic that sends it late.
CARD_LIFETIME_S = 7 * 24 * 3600.0
SECONDS_PER_MONTH = 30.4375 * 24 * 3600

LaunchMode = Literal["ehr", "standalone"]
LaunchLevel = Literal["patient", "user"]
Outcome = Literal["accepted", "overridden", "dismissed"]

_MIGRATIONS: tuple[str, ...] = (
    # 1: the first schema
    """
    CREATE TABLE launch_states (
        state_hash   TEXT PRIMARY KEY,
        issuer       TEXT NOT NULL,
        mode         TEXT NOT NULL,
        level        TEXT NOT NULL,
        redirect_uri TEXT NOT NULL,
        scope        TEXT NOT NULL,
        secrets      BLOB NOT NULL,
        binder_hash  TEXT,
        created_at   REAL NOT NULL,
        expires_at   REAL NOT NULL,
        used_at      REAL
    );
    CREATE TABLE sessions (
        id_hash           TEXT PRIMARY KEY,
        issuer            TEXT NOT NULL,
        level             TEXT NOT NULL,
        created_at        REAL NOT NULL,
        expires_at        REAL NOT NULL,
        access_expires_at REAL,
        version           INTEGER NOT NULL,
        payload           BLOB NOT NULL
    );
    CREATE INDEX sessions_expiry ON sessions (expires_at);
    CREATE TABLE cds_jti (
        issuer     TEXT NOT NULL,
        jti        TEXT NOT NULL,
        expires_at REAL NOT NULL,
        PRIMARY KEY (issuer, jti)
    );
    CREATE TABLE cds_cards (
        card_id     TEXT PRIMARY KEY,
        service     TEXT NOT NULL,
        finding_key TEXT NOT NULL,
        patient_key TEXT NOT NULL,
        issued_at   REAL NOT NULL,
        expires_at  REAL NOT NULL
    );
    CREATE TABLE finding_feedback (
        id             INTEGER PRIMARY KEY AUTOINCREMENT,
        source         TEXT NOT NULL,
        service        TEXT,
        card_id        TEXT,
        finding_key    TEXT NOT NULL,
        patient_key    TEXT NOT NULL,
        outcome        TEXT NOT NULL,
        reason_system  TEXT,
        reason_code    TEXT,
        reason_display TEXT,
        user_ref       TEXT,
        outcome_at     REAL NOT NULL,
        recorded_at    REAL NOT NULL
    );
    CREATE INDEX finding_feedback_lookup
        ON finding_feedback (patient_key, finding_key, outcome_at);
    CREATE UNIQUE INDEX finding_feedback_card_once
        ON finding_feedback (card_id, outcome) WHERE card_id IS NOT NULL;
    """,
)


class StoreError(PrevisitError):
    """The state database cannot be opened or used; the message names the file."""


class LaunchStateError(PrevisitError):
    """The `state` of an OAuth callback is unknown, already used or expired."""

    def __init__(self, reason: Literal["unknown", "used", "expired"]) -> None:
        self.reason = reason
        text = {"unknown": "this sign-in link is not one previsit started",
                "used": "this sign-in link was already used",
                "expired": "this sign-in took too long"}[reason]
        super().__init__(f"{text}; launch the app again from the EHR")


class UnknownCardError(PrevisitError):
    """Feedback names a card this service never issued (or issued too long ago)."""


@dataclass(frozen=True)
class LaunchState:
    """What the callback needs to finish one launch, stored server-side under its state."""

    issuer: str  # the registered issuer string
    mode: LaunchMode
    level: LaunchLevel
    redirect_uri: str
    scope: str  # as requested
    code_verifier: Secret
    nonce: str | None
    binder_hash: str | None  # SHA-256 of the launch cookie set with the redirect, if any
    created_at: float
    expires_at: float


@dataclass(frozen=True)
class TokenSet:
    access_token: Secret
    expires_at: float | None  # epoch seconds; None: the server did not say
    refresh_token: Secret | None = None
    id_token: Secret | None = None


@dataclass(frozen=True)
class Session:
    issuer: str  # the registered issuer string (the FHIR base the tokens are for)
    level: LaunchLevel
    user: str | None  # fhirUser as an absolute URL: who acts
    patient: str | None  # the launch patient's id (patient-level sessions)
    encounter: str | None
    appointment: str | None  # "Appointment/<id>" from fhirContext, when the EHR sent one
    scope_requested: str
    scope_granted: str  # as the token response said (servers may echo the request)
    tokens: TokenSet
    created_at: float
    expires_at: float
    version: int = 1  # bumped on every token update (compare-and-swap between workers)


@dataclass(frozen=True)
class Coding:
    system: str | None
    code: str | None
    display: str | None = None


@dataclass(frozen=True)
class FeedbackRecord:
    source: Literal["cds-hooks", "app"]
    service: str | None
    card_id: str | None
    finding_key: str
    outcome: Outcome
    reason: Coding | None
    user: str | None
    outcome_at: float


def _hash(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def binder_hash(binder: str) -> str:
    """How the launch cookie's value is kept server-side."""
    return _hash("binder:" + binder)


class Store:
    """The state database. Each call opens its own short connection (safe across threads,
    tasks and processes); methods are synchronous and take milliseconds."""

    def __init__(self, path: Path, keyring: Keyring, *,
                 clock: Callable[[], float] = time.time) -> None:
        self._path = path
        self._keyring = keyring
        self._clock = clock
        self._create_private(path)
        # Switching a new file to WAL needs it to itself: when several workers open a new
        # database at once, the switch can answer the old mode instead of waiting. Retry
        # within the busy timeout; only a file system without WAL keeps refusing.
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while True:
            with self._connect() as db:
                mode = str(db.execute("PRAGMA journal_mode=WAL").fetchone()[0]).lower()
            if mode == "wal":
                break
            if time.monotonic() > deadline:
                raise StoreError(f"{path}: cannot use write-ahead logging (journal mode "
                                 f"{mode}); put the state database on a local disk")
            time.sleep(0.05)
        self._migrate()
        # Held open, never used: when the last connection to a WAL database closes, SQLite
        # checkpoints and removes the WAL, milliseconds that every request (each with its
        # own short connection) would otherwise pay. Checkpoints still happen as the WAL
        # grows (wal_autocheckpoint).
        self._keeper = sqlite3.connect(path, check_same_thread=False)

    def close(self) -> None:
        self._keeper.close()

    def __repr__(self) -> str:
        return f"Store({self._path})"

    # --- plumbing -----------------------------------------------------------------------

    @staticmethod
    def _create_private(path: Path) -> None:
        # The database holds (encrypted) tokens and pseudonyms: readable by its owner only
        # from the first byte. SQLite gives its -wal/-shm files the same permissions.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
            os.close(fd)
        except OSError as exc:
            raise StoreError(f"{path}: cannot create the state database "
                             f"({exc.strerror})") from None

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            db = sqlite3.connect(self._path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"{self._path}: cannot open the state database: {exc}") from None
        try:
            db.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
            # In WAL mode NORMAL never corrupts the file; a power cut may lose the last
            # commits (a launch state, a session: the user launches again). It saves an
            # fsync per write.
            db.execute("PRAGMA synchronous=NORMAL")
            yield db
        except sqlite3.Error as exc:
            raise StoreError(f"{self._path}: state database error: {exc}") from None
        finally:
            db.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction, taken IMMEDIATE so concurrent writers queue on the busy
        timeout instead of failing on upgrade from a read lock."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _migrate(self) -> None:
        with self._write() as db:
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise StoreError(f"{self._path}: written by a newer previsit (schema "
                                 f"{version}, this one knows {SCHEMA_VERSION}); upgrade "
                                 "previsit or point web.state_db elsewhere")
            for number in range(version, SCHEMA_VERSION):
                for statement in _MIGRATIONS[number].split(";"):
                    if statement.strip():
                        db.execute(statement)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def _seal(self, value: dict[str, Any], context: str) -> bytes:
        return self._keyring.encrypt(json.dumps(value).encode("utf-8"), context.encode())

    def _open(self, blob: bytes, context: str) -> dict[str, Any]:
        value = json.loads(self._keyring.decrypt(blob, context.encode()))
        assert isinstance(value, dict)
        return value

    # --- launch states ------------------------------------------------------------------

    def save_launch_state(self, state: str, launch: LaunchState) -> None:
        key = _hash("state:" + state)
        sealed = self._seal({"code_verifier": launch.code_verifier.reveal(),
                             "nonce": launch.nonce}, "launch:" + key)
        with self._write() as db:
            db.execute(
                "INSERT INTO launch_states (state_hash, issuer, mode, level, redirect_uri, "
                "scope, secrets, binder_hash, created_at, expires_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (key, launch.issuer, launch.mode, launch.level, launch.redirect_uri,
                 launch.scope, sealed, launch.binder_hash, launch.created_at,
                 launch.expires_at))

    def consume_launch_state(self, state: str) -> LaunchState:
        """The launch a callback's `state` names, marked used in the same write transaction
        (IMMEDIATE: no other connection can read-then-mark in between), so two callbacks
        with one state cannot both succeed. Raises LaunchStateError."""
        key = _hash("state:" + state)
        now = self._clock()
        with self._write() as db:
            row = db.execute(
                "SELECT issuer, mode, level, redirect_uri, scope, secrets, binder_hash, "
                "created_at, expires_at, used_at FROM launch_states WHERE state_hash = ?",
                (key,)).fetchone()
            if row is None or row[-1] is not None:
                raise LaunchStateError("unknown" if row is None else "used")
            db.execute("UPDATE launch_states SET used_at = ? WHERE state_hash = ?", (now, key))
        row = row[:-1]
        issuer, mode, level, redirect_uri, scope, sealed, binder, created, expires = row
        if now > expires:
            raise LaunchStateError("expired")
        values = self._open(sealed, "launch:" + key)
        return LaunchState(issuer=issuer, mode=mode, level=level, redirect_uri=redirect_uri,
                           scope=scope, code_verifier=Secret(values["code_verifier"]),
                           nonce=values["nonce"], binder_hash=binder, created_at=created,
                           expires_at=expires)

    # --- sessions -----------------------------------------------------------------------

    def create_session(self, session: Session) -> Secret:
        """Store a session; returns its id (the cookie value), random 256 bits."""
        session_id = secrets.token_urlsafe(32)
        key = _hash("session:" + session_id)
        with self._write() as db:
            db.execute(
                "INSERT INTO sessions (id_hash, issuer, level, created_at, expires_at, "
                "access_expires_at, version, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (key, session.issuer, session.level, session.created_at, session.expires_at,
                 session.tokens.expires_at, session.version,
                 self._seal(self._session_payload(session), "session:" + key)))
        return Secret(session_id)

    def session(self, session_id: str) -> Session | None:
        """The live session with this id; None if unknown or expired (an expired one is
        deleted on the way)."""
        key = _hash("session:" + session_id)
        with self._connect() as db:
            row = db.execute(
                "SELECT issuer, level, created_at, expires_at, access_expires_at, version, "
                "payload FROM sessions WHERE id_hash = ?", (key,)).fetchone()
        if row is None:
            return None
        issuer, level, created, expires, access_expires, version, sealed = row
        if self._clock() >= expires:
            self.delete_session(session_id)
            return None
        payload = self._open(sealed, "session:" + key)
        return Session(
            issuer=issuer, level=level, user=payload["user"], patient=payload["patient"],
            encounter=payload["encounter"], appointment=payload["appointment"],
            scope_requested=payload["scope_requested"],
            scope_granted=payload["scope_granted"],
            tokens=TokenSet(access_token=Secret(payload["access_token"]),
                            expires_at=access_expires,
                            refresh_token=_secret_or_none(payload["refresh_token"]),
                            id_token=_secret_or_none(payload["id_token"])),
            created_at=created, expires_at=expires, version=version)

    def replace_tokens(self, session_id: str, current: Session, tokens: TokenSet, *,
                       scope_granted: str | None = None) -> bool:
        """Store refreshed tokens (and the scope granted with them, if the server said)
        unless another worker already did: compare-and-swap on the session's version.
        Returns whether this update was the one stored."""
        key = _hash("session:" + session_id)
        updated = replace(current, tokens=tokens, version=current.version + 1,
                          scope_granted=scope_granted or current.scope_granted)
        with self._write() as db:
            cursor = db.execute(
                "UPDATE sessions SET access_expires_at = ?, version = ?, payload = ? "
                "WHERE id_hash = ? AND version = ?",
                (tokens.expires_at, updated.version,
                 self._seal(self._session_payload(updated), "session:" + key), key,
                 current.version))
            return cursor.rowcount == 1

    def delete_session(self, session_id: str) -> None:
        """Logout: the server side is gone; the cookie alone opens nothing."""
        with self._write() as db:
            db.execute("DELETE FROM sessions WHERE id_hash = ?",
                       (_hash("session:" + session_id),))

    @staticmethod
    def _session_payload(session: Session) -> dict[str, Any]:
        tokens = session.tokens
        return {"user": session.user, "patient": session.patient,
                "encounter": session.encounter, "appointment": session.appointment,
                "scope_requested": session.scope_requested,
                "scope_granted": session.scope_granted,
                "access_token": tokens.access_token.reveal(),
                "refresh_token": tokens.refresh_token.reveal() if tokens.refresh_token
                else None,
                "id_token": tokens.id_token.reveal() if tokens.id_token else None}

    # --- CDS Hooks ----------------------------------------------------------------------

    def remember_jti(self, issuer: str, jti: str, expires_at: float) -> bool:
        """Record a CDS JWT's `jti`; False if this issuer already used it (a replay)."""
        with self._write() as db:
            cursor = db.execute(
                "INSERT OR IGNORE INTO cds_jti (issuer, jti, expires_at) VALUES (?, ?, ?)",
                (normalize_url(issuer), jti, expires_at))
            return cursor.rowcount == 1

    def patient_key(self, issuer: str, patient_id: str) -> str:
        """The keyed hash a patient's feedback is stored under. The nightly run computes
        the same from its FHIR base and the patient id (same keyring)."""
        return self._keyring.pseudonym(f"{normalize_url(issuer)}|Patient/{patient_id}")

    def remember_card(self, *, card_id: str, service: str, finding_key: str, issuer: str,
                      patient_id: str) -> None:
        self.remember_cards([(card_id, finding_key)], service=service, issuer=issuer,
                            patient_id=patient_id)

    def remember_cards(self, cards: Sequence[tuple[str, str]], *, service: str, issuer: str,
                       patient_id: str) -> None:
        """Cards issued in one CDS answer, as (card id, finding key) — in one transaction.
        A card covering several findings lists their rule ids separated by spaces."""
        now = self._clock()
        patient_key = self.patient_key(issuer, patient_id)
        with self._write() as db:
            db.executemany(
                "INSERT OR REPLACE INTO cds_cards (card_id, service, finding_key, patient_key, "
                "issued_at, expires_at) VALUES (?, ?, ?, ?, ?, ?)",
                [(card_id, service, finding_key, patient_key, now, now + CARD_LIFETIME_S)
                 for card_id, finding_key in cards])

    def record_cds_feedback(self, *, service: str, card_id: str,
                            outcome: Literal["accepted", "overridden"],
                            reason: Coding | None, outcome_at: float) -> FeedbackRecord:
        """Store CDS Hooks feedback on a card this service issued. Feedback repeated for
        the same card and outcome is stored once. Raises UnknownCardError."""
        with self._write() as db:
            card = db.execute(
                "SELECT finding_key, patient_key FROM cds_cards "
                "WHERE card_id = ? AND service = ? AND expires_at > ?",
                (card_id, service, self._clock())).fetchone()
            if card is None:
                raise UnknownCardError(f"feedback for card {card_id!r} of service "
                                       f"{service!r}, which this service did not issue "
                                       "(or issued more than a week ago)")
            finding_key, patient_key = card
            db.execute(
                "INSERT OR IGNORE INTO finding_feedback (source, service, card_id, "
                "finding_key, patient_key, outcome, reason_system, reason_code, "
                "reason_display, user_ref, outcome_at, recorded_at) "
                "VALUES ('cds-hooks', ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, ?)",
                (service, card_id, finding_key, patient_key, outcome,
                 reason.system if reason else None, reason.code if reason else None,
                 reason.display if reason else None, outcome_at, self._clock()))
        return FeedbackRecord("cds-hooks", service, card_id, finding_key, outcome, reason,
                              None, outcome_at)

    def record_dismissal(self, *, issuer: str, patient_id: str, finding_key: str,
                         reason: Coding | None, user: str | None) -> FeedbackRecord:
        """A finding dismissed in the app by `user` (a fhirUser reference)."""
        now = self._clock()
        with self._write() as db:
            db.execute(
                "INSERT INTO finding_feedback (source, service, card_id, finding_key, "
                "patient_key, outcome, reason_system, reason_code, reason_display, user_ref, "
                "outcome_at, recorded_at) VALUES ('app', NULL, NULL, ?, ?, 'dismissed', ?, ?, "
                "?, ?, ?, ?)",
                (finding_key, self.patient_key(issuer, patient_id),
                 reason.system if reason else None, reason.code if reason else None,
                 reason.display if reason else None, user, now, now))
        return FeedbackRecord("app", None, None, finding_key, "dismissed", reason, user, now)

    def declines(self, *, issuer: str, patient_id: str, since: float,
                 finding_key: str | None = None) -> list[FeedbackRecord]:
        """Findings declined (overridden in CDS Hooks, dismissed in the app) for this patient
        since `since`, newest first: what the nightly run suppresses."""
        query = ("SELECT source, service, card_id, finding_key, outcome, reason_system, "
                 "reason_code, reason_display, user_ref, outcome_at FROM finding_feedback "
                 "WHERE patient_key = ? AND outcome IN ('overridden', 'dismissed') "
                 "AND outcome_at >= ?")
        params: list[Any] = [self.patient_key(issuer, patient_id), since]
        if finding_key is not None:
            query += " AND finding_key = ?"
            params.append(finding_key)
        with self._connect() as db:
            rows = db.execute(query + " ORDER BY outcome_at DESC", params).fetchall()
        return [FeedbackRecord(source, service, card, finding, outcome,
                               Coding(system, code, display)
                               if system or code or display else None, user, at)
                for source, service, card, finding, outcome, system, code, display, user, at
                in rows]

    # --- housekeeping -------------------------------------------------------------------

    def purge(self, *, feedback_months: int) -> dict[str, int]:
        """Delete what has expired: launch states, sessions, jti records, cards, and
        feedback older than the suppression window. Returns rows deleted per table."""
        now = self._clock()
        feedback_cutoff = now - feedback_months * SECONDS_PER_MONTH
        counts: dict[str, int] = {}
        with self._write() as db:
            for table, condition, value in (
                    ("launch_states", "expires_at < ?", now),
                    ("sessions", "expires_at <= ?", now),
                    ("cds_jti", "expires_at < ?", now),
                    ("cds_cards", "expires_at < ?", now),
                    ("finding_feedback", "outcome_at < ?", feedback_cutoff)):
                counts[table] = db.execute(f"DELETE FROM {table} WHERE {condition}",
                                           (value,)).rowcount
        return counts


def _secret_or_none(value: str | None) -> Secret | None:
    return Secret(value) if value else None
