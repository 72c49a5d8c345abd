"""The SQLite state of previsit serve: single-use launch states, sessions with tokens encrypted
at rest, jti replay records, CDS feedback and dismissals, purging, schema versions."""

from __future__ import annotations

import sqlite3
import stat
import threading
from pathlib import Path

import pytest
from web_fakes import NOW, Clock

from previsit.auth import Secret
from previsit.web.keyring import Keyring, KeyringError
from previsit.web.store import (
    Coding,
    LaunchState,
    LaunchStateError,
    Session,
    Store,
    StoreError,
    TokenSet,
    UnknownCardError,
)

ISS = "https://ehr.example/fhir/R4"
DAY = 24 * 3600.0


def launch_state(**changes: object) -> LaunchState:
    values: dict[str, object] = dict(
        issuer=ISS, mode="ehr", level="patient", redirect_uri="https://app/callback",
        scope="launch openid fhirUser", code_verifier=Secret("VERIFIER-abcdefghijklmnop"),
        nonce="NONCE-1", binder_hash="b", created_at=NOW, expires_at=NOW + 600)
    values.update(changes)
    return LaunchState(**values)  # type: ignore[arg-type]


def session(**changes: object) -> Session:
    values: dict[str, object] = dict(
        issuer=ISS, level="patient", user="https://ehr.example/fhir/R4/Practitioner/p1",
        patient="PATIENT-ID-42", encounter="ENCOUNTER-7", appointment="Appointment/APPT-9",
        scope_requested="launch openid fhirUser patient/Patient.rs",
        scope_granted="launch openid fhirUser patient/Patient.rs",
        tokens=TokenSet(access_token=Secret("ACCESS-TOKEN-PLAINTEXT"), expires_at=NOW + 3600,
                        refresh_token=Secret("REFRESH-TOKEN-PLAINTEXT"),
                        id_token=Secret("ID-TOKEN-PLAINTEXT")),
        created_at=NOW, expires_at=NOW + 8 * 3600)
    values.update(changes)
    return Session(**values)  # type: ignore[arg-type]


def database_bytes(path: Path) -> bytes:
    """The file and its write-ahead log, as an attacker with a copy of the disk sees them."""
    data = path.read_bytes()
    wal = path.with_name(path.name + "-wal")
    return data + (wal.read_bytes() if wal.exists() else b"")


# --- launch states ------------------------------------------------------------------------


def test_a_launch_state_comes_back_once(store: Store) -> None:
    store.save_launch_state("state-1", launch_state())
    state = store.consume_launch_state("state-1")
    assert state.code_verifier.reveal() == "VERIFIER-abcdefghijklmnop"
    assert (state.issuer, state.mode, state.level, state.nonce) == (ISS, "ehr", "patient",
                                                                    "NONCE-1")
    with pytest.raises(LaunchStateError) as again:
        store.consume_launch_state("state-1")
    assert again.value.reason == "used"
    with pytest.raises(LaunchStateError) as unknown:
        store.consume_launch_state("state-2")
    assert unknown.value.reason == "unknown"


def test_an_expired_launch_state_is_refused(store: Store, clock: Clock) -> None:
    store.save_launch_state("state-1", launch_state(expires_at=NOW + 600))
    clock.now = NOW + 601
    with pytest.raises(LaunchStateError) as expired:
        store.consume_launch_state("state-1")
    assert expired.value.reason == "expired"


def test_concurrent_callbacks_with_one_state_let_exactly_one_through(
        tmp_path: Path, keyring: Keyring) -> None:
    path = tmp_path / "state.sqlite3"
    Store(path, keyring).save_launch_state("state-1", launch_state(expires_at=1e12))
    outcomes: list[str] = []
    start = threading.Barrier(8)

    def callback() -> None:
        store = Store(path, keyring)  # like a separate uvicorn worker
        start.wait()
        try:
            store.consume_launch_state("state-1")
            outcomes.append("ok")
        except LaunchStateError as exc:
            outcomes.append(exc.reason)

    threads = [threading.Thread(target=callback) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["ok"] + ["used"] * 7


def test_workers_opening_a_new_database_at_once_all_get_the_same_schema(
        tmp_path: Path, keyring: Keyring) -> None:
    path = tmp_path / "fresh.sqlite3"
    start = threading.Barrier(6)
    errors: list[BaseException] = []

    def worker() -> None:
        start.wait()
        try:
            Store(path, keyring).remember_jti("https://ehr.example", str(threading.get_ident()),
                                              NOW)
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    db = sqlite3.connect(path)
    assert db.execute("SELECT count(*) FROM cds_jti").fetchone()[0] == 6
    db.close()


def test_the_state_and_verifier_are_not_stored_in_clear(tmp_path: Path, store: Store) -> None:
    store.save_launch_state("STATE-IN-THE-URL", launch_state())
    data = database_bytes(tmp_path / "state.sqlite3")
    assert b"STATE-IN-THE-URL" not in data and b"VERIFIER-abc" not in data
    assert b"NONCE-1" not in data


# --- sessions -----------------------------------------------------------------------------


def test_tokens_and_clinical_context_are_not_plaintext_in_the_file(
        tmp_path: Path, store: Store) -> None:
    session_id = store.create_session(session()).reveal()
    data = database_bytes(tmp_path / "state.sqlite3")
    for secret in (b"ACCESS-TOKEN-PLAINTEXT", b"REFRESH-TOKEN-PLAINTEXT", b"ID-TOKEN-PLAINTEXT",
                   b"PATIENT-ID-42", b"ENCOUNTER-7", b"APPT-9", session_id.encode()):
        assert secret not in data, secret
    assert stat.S_IMODE((tmp_path / "state.sqlite3").stat().st_mode) == 0o600
    # … and they come back intact
    stored = store.session(session_id)
    assert stored is not None
    assert stored.tokens.access_token.reveal() == "ACCESS-TOKEN-PLAINTEXT"
    assert stored.tokens.refresh_token == Secret("REFRESH-TOKEN-PLAINTEXT")
    assert (stored.patient, stored.encounter, stored.appointment) == \
        ("PATIENT-ID-42", "ENCOUNTER-7", "Appointment/APPT-9")


def test_session_ids_are_random_and_long(store: Store) -> None:
    ids = {store.create_session(session()).reveal() for _ in range(20)}
    assert len(ids) == 20
    assert all(len(i) >= 43 for i in ids)  # 32 random bytes, base64url


def test_a_session_expires(store: Store, clock: Clock) -> None:
    session_id = store.create_session(session(expires_at=NOW + 8 * 3600)).reveal()
    clock.now = NOW + 8 * 3600 - 1
    assert store.session(session_id) is not None
    clock.now = NOW + 8 * 3600
    assert store.session(session_id) is None
    clock.now = NOW  # deleted on the way, not just hidden
    assert store.session(session_id) is None


def test_logout_deletes_the_server_side(store: Store) -> None:
    session_id = store.create_session(session()).reveal()
    store.delete_session(session_id)
    assert store.session(session_id) is None


def test_a_row_copied_under_another_id_does_not_decrypt(tmp_path: Path, store: Store) -> None:
    victim = store.create_session(session()).reveal()
    attacker = store.create_session(session(patient="OTHER")).reveal()
    db = sqlite3.connect(tmp_path / "state.sqlite3")
    payloads = dict(db.execute("SELECT id_hash, payload FROM sessions").fetchall())
    victim_hash, attacker_hash = sorted(payloads, key=lambda h: h != _hash_of(victim))
    db.execute("UPDATE sessions SET payload = ? WHERE id_hash = ?",
               (payloads[victim_hash], attacker_hash))
    db.commit()
    db.close()
    with pytest.raises(KeyringError, match="cannot be decrypted"):
        store.session(attacker)


def _hash_of(session_id: str) -> str:
    import hashlib

    return hashlib.sha256(f"session:{session_id}".encode()).hexdigest()


def test_token_updates_are_compare_and_swap(store: Store) -> None:
    session_id = store.create_session(session()).reveal()
    current = store.session(session_id)
    assert current is not None
    fresh = TokenSet(Secret("NEW"), NOW + 7200, Secret("R2"), None)
    assert store.replace_tokens(session_id, current, fresh)
    # a second worker that read the old version loses
    assert not store.replace_tokens(session_id, current, TokenSet(Secret("LOSER"), None))
    stored = store.session(session_id)
    assert stored is not None and stored.tokens.access_token.reveal() == "NEW"
    assert stored.version == 2


# --- keys ---------------------------------------------------------------------------------


def test_a_rotated_keyring_still_reads_what_the_old_key_wrote(tmp_path: Path,
                                                              keyring: Keyring) -> None:
    path = tmp_path / "state.sqlite3"
    session_id = Store(path, keyring).create_session(session()).reveal()
    rotated = keyring.rotated()
    stored = Store(path, rotated).session(session_id)
    assert stored is not None and stored.tokens.access_token.reveal() == \
        "ACCESS-TOKEN-PLAINTEXT"
    # new rows use the new key: the old keyring alone cannot read them
    newer = Store(path, rotated).create_session(session()).reveal()
    with pytest.raises(KeyringError):
        Store(path, keyring).session(newer)
    # a keyring without the old key cannot read the old rows
    with pytest.raises(KeyringError):
        Store(path, Keyring.generate()).session(session_id)


# --- CDS Hooks jti, cards, feedback -------------------------------------------------------


def test_a_jti_is_accepted_once_per_issuer(store: Store) -> None:
    assert store.remember_jti("https://ehr.example", "jti-1", NOW + 300)
    assert not store.remember_jti("https://EHR.example/", "jti-1", NOW + 300)
    assert store.remember_jti("https://other-ehr.example", "jti-1", NOW + 300)


def test_feedback_on_a_card_suppresses_that_finding_for_that_patient(
        store: Store, clock: Clock) -> None:
    store.remember_card(card_id="card-1", service="previsit-due", finding_key="colorectal",
                        issuer=ISS, patient_id="pat-1")
    store.remember_card(card_id="card-2", service="previsit-due", finding_key="hba1c",
                        issuer=ISS, patient_id="pat-1")
    clock.now = NOW + 60
    reason = Coding("http://example.org/override-reasons", "patient-declined",
                    "Patient declined")
    store.record_cds_feedback(service="previsit-due", card_id="card-1", outcome="overridden",
                              reason=reason, outcome_at=NOW + 30)
    store.record_cds_feedback(service="previsit-due", card_id="card-1", outcome="overridden",
                              reason=reason, outcome_at=NOW + 30)  # sent twice: stored once
    store.record_cds_feedback(service="previsit-due", card_id="card-2", outcome="accepted",
                              reason=None, outcome_at=NOW + 40)
    declined = store.declines(issuer=ISS + "/", patient_id="pat-1", since=NOW - DAY)
    assert [(d.finding_key, d.outcome, d.reason, d.outcome_at) for d in declined] == \
        [("colorectal", "overridden", reason, NOW + 30)]
    assert store.declines(issuer=ISS, patient_id="pat-2", since=NOW - DAY) == []
    assert store.declines(issuer="https://other.example/fhir", patient_id="pat-1",
                          since=NOW - DAY) == []
    assert store.declines(issuer=ISS, patient_id="pat-1", since=NOW + 31) == []
    assert store.declines(issuer=ISS, patient_id="pat-1", since=NOW - DAY,
                          finding_key="hba1c") == []


def test_feedback_for_a_card_never_issued_is_refused(store: Store) -> None:
    store.remember_card(card_id="card-1", service="previsit-due", finding_key="colorectal",
                        issuer=ISS, patient_id="pat-1")
    with pytest.raises(UnknownCardError):
        store.record_cds_feedback(service="previsit-due", card_id="card-9",
                                  outcome="overridden", reason=None, outcome_at=NOW)
    with pytest.raises(UnknownCardError):  # another service's card
        store.record_cds_feedback(service="other", card_id="card-1",
                                  outcome="overridden", reason=None, outcome_at=NOW)


def test_dismissals_in_the_app_are_declines_with_who_and_why(store: Store) -> None:
    reason = Coding(None, None, "done elsewhere")
    store.record_dismissal(issuer=ISS, patient_id="pat-1", finding_key="tsh", reason=reason,
                           user="https://ehr.example/fhir/R4/Practitioner/p1")
    [declined] = store.declines(issuer=ISS, patient_id="pat-1", since=NOW - 1)
    assert (declined.source, declined.finding_key, declined.outcome, declined.reason,
            declined.user) == ("app", "tsh", "dismissed", reason,
                               "https://ehr.example/fhir/R4/Practitioner/p1")


def test_patients_are_stored_under_a_keyed_hash(tmp_path: Path, store: Store) -> None:
    store.remember_card(card_id="c", service="s", finding_key="f", issuer=ISS,
                        patient_id="PATIENT-REF-XYZ")
    store.record_dismissal(issuer=ISS, patient_id="PATIENT-REF-XYZ", finding_key="f",
                           reason=None, user=None)
    assert b"PATIENT-REF-XYZ" not in database_bytes(tmp_path / "state.sqlite3")
    # the same patient gives the same key in any process with the keyring; another does not
    assert store.patient_key(ISS, "PATIENT-REF-XYZ") == \
        store.patient_key("HTTPS://ehr.example/fhir/R4/", "PATIENT-REF-XYZ")
    assert store.patient_key(ISS, "PATIENT-REF-XYZ") != store.patient_key(ISS, "other")


# --- housekeeping -------------------------------------------------------------------------


def test_purge_deletes_what_has_expired(store: Store, clock: Clock) -> None:
    store.save_launch_state("old", launch_state(expires_at=NOW + 600))
    store.save_launch_state("live", launch_state(expires_at=NOW + 10 * DAY))
    store.create_session(session(expires_at=NOW + 3600))
    live_session = store.create_session(session(expires_at=NOW + 10 * DAY)).reveal()
    store.remember_jti("https://ehr.example", "old", NOW + 300)
    store.record_dismissal(issuer=ISS, patient_id="p", finding_key="f", reason=None,
                           user=None)
    clock.now = NOW + 2 * DAY
    store.record_dismissal(issuer=ISS, patient_id="p", finding_key="g", reason=None,
                           user=None)
    assert store.purge(feedback_months=12) == {
        "launch_states": 1, "sessions": 1, "cds_jti": 1, "cds_cards": 0,
        "finding_feedback": 0}
    assert store.session(live_session) is not None
    clock.now = NOW + 366 * DAY
    counts = store.purge(feedback_months=12)
    assert counts["finding_feedback"] == 1  # the first dismissal, a year and a day old
    assert [d.finding_key for d in store.declines(issuer=ISS, patient_id="p", since=0)] == \
        ["g"]


def test_the_database_uses_wal_and_records_its_schema_version(tmp_path: Path,
                                                              store: Store) -> None:
    db = sqlite3.connect(tmp_path / "state.sqlite3")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA user_version").fetchone()[0] == 1
    db.execute("PRAGMA user_version = 99")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="written by a newer previsit"):
        Store(tmp_path / "state.sqlite3", Keyring.generate())


def test_reopening_keeps_the_data(tmp_path: Path, keyring: Keyring) -> None:
    path = tmp_path / "state.sqlite3"
    session_id = Store(path, keyring).create_session(session()).reveal()
    assert Store(path, keyring).session(session_id) is not None
