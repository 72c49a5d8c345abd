"""The keyring that encrypts tokens at rest: created 0600 on first use, rotatable, refused when
others can read it."""

from __future__ import annotations

import stat
import threading
from pathlib import Path

import pytest

from previsit.web.keyring import Keyring, KeyringError, load_keyring, rotate_keyring


def test_a_keyring_is_created_0600_on_first_use_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "previsit-web.keys"
    first = load_keyring(file=path, env_name=None, env={})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = load_keyring(file=path, env_name=None, env={})
    sealed = first.encrypt(b"token", b"row-1")
    assert again.decrypt(sealed, b"row-1") == b"token"
    assert first.pseudonym("Patient/1") == again.pseudonym("Patient/1")


def test_workers_starting_together_share_one_keyring(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    start = threading.Barrier(6)
    loaded: list[Keyring] = []

    def worker() -> None:
        start.wait()
        loaded.append(load_keyring(file=path, env_name=None, env={}))

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(loaded) == 6
    assert len({k.data_keys for k in loaded}) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keys"]  # no drafts left behind


def test_a_keyring_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    load_keyring(file=path, env_name=None, env={})
    path.chmod(0o644)
    with pytest.raises(KeyringError, match="chmod 600"):
        load_keyring(file=path, env_name=None, env={})


def test_the_keyring_can_come_from_an_environment_variable(tmp_path: Path) -> None:
    keyring = Keyring.generate()
    loaded = load_keyring(file=tmp_path / "unused", env_name="PREVISIT_WEB_KEYRING",
                          env={"PREVISIT_WEB_KEYRING": keyring.to_json()})
    assert loaded.decrypt(keyring.encrypt(b"x", b"c"), b"c") == b"x"
    assert not (tmp_path / "unused").exists()
    with pytest.raises(KeyringError, match="PREVISIT_WEB_KEYRING, which is not set"):
        load_keyring(file=tmp_path / "unused", env_name="PREVISIT_WEB_KEYRING", env={})
    with pytest.raises(KeyringError, match="not valid JSON"):
        load_keyring(file=tmp_path / "unused", env_name="K", env={"K": "{not json"})


def test_rotation_keeps_old_keys_for_decryption(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    old = load_keyring(file=path, env_name=None, env={})
    sealed_before = old.encrypt(b"before", b"ctx")
    rotated = rotate_keyring(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    reloaded = load_keyring(file=path, env_name=None, env={})
    assert reloaded.decrypt(sealed_before, b"ctx") == b"before"
    sealed_after = reloaded.encrypt(b"after", b"ctx")
    with pytest.raises(KeyringError):
        old.decrypt(sealed_after, b"ctx")  # new data is under the new key
    assert rotated.pseudonym("p") == old.pseudonym("p")  # pseudonyms never change


def test_ciphertexts_are_bound_to_their_context_and_tamper_evident() -> None:
    keyring = Keyring.generate()
    sealed = keyring.encrypt(b"secret", b"session:a")
    assert b"secret" not in sealed
    with pytest.raises(KeyringError):
        keyring.decrypt(sealed, b"session:b")
    flipped = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(KeyringError):
        keyring.decrypt(flipped, b"session:a")
    assert keyring.encrypt(b"secret", b"c") != keyring.encrypt(b"secret", b"c")  # fresh nonce


def test_the_keyring_never_shows_its_keys() -> None:
    keyring = Keyring.generate()
    assert repr(keyring) == "Keyring(1 data keys)"
