"""The keys that protect the web app's data at rest: token encryption and patient pseudonyms.

A keyring is a small JSON document, in a 0600 file created on first use or in an
environment variable:

    {"format": "previsit-web-keyring", "version": 1,
     "data_keys": ["<base64url 32 bytes>", "<older key>", …],
     "pseudonym_key": "<base64url 32 bytes>"}

The first data key encrypts (AES-256-GCM); every listed key decrypts, so rotation is
`rotate_keyring()` (a new first key, the old ones kept) and a restart of the workers; an
old key can be dropped once nothing it encrypted is still alive (sessions last hours).
The pseudonym key never rotates: it turns a patient reference into the stable keyed hash
under which declined findings are stored, and a new key would forget them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from previsit.errors import KeyFileError, PrevisitError
from previsit.keys import write_private_file

FORMAT = "previsit-web-keyring"
_VERSION = 1
_BLOB_VERSION = b"\x01"
_KEY_ID_BYTES = 8
_NONCE_BYTES = 12


class KeyringError(PrevisitError):
    """A keyring that cannot be read, created or used; the message names the file or variable."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _key_id(key: bytes) -> bytes:
    # Names the key inside each ciphertext so decryption needs no trial and error; a
    # truncated hash of a 256-bit random key reveals nothing about it.
    return hashlib.sha256(b"previsit key id" + key).digest()[:_KEY_ID_BYTES]


@dataclass(frozen=True, repr=False)
class Keyring:
    data_keys: tuple[bytes, ...]  # the first encrypts; all decrypt
    pseudonym_key: bytes

    def __post_init__(self) -> None:
        if not self.data_keys or any(len(k) != 32 for k in self.data_keys):
            raise KeyringError("a keyring needs at least one data key of 32 bytes")
        if len(self.pseudonym_key) != 32:
            raise KeyringError("the keyring's pseudonym key must be 32 bytes")

    def __repr__(self) -> str:
        return f"Keyring({len(self.data_keys)} data keys)"

    @classmethod
    def generate(cls) -> Keyring:
        return cls((secrets.token_bytes(32),), secrets.token_bytes(32))

    def rotated(self) -> Keyring:
        """A keyring whose new first key encrypts from now on; the old keys still decrypt."""
        return Keyring((secrets.token_bytes(32), *self.data_keys), self.pseudonym_key)

    # --- encryption ---------------------------------------------------------------------

    def encrypt(self, plaintext: bytes, context: bytes) -> bytes:
        """AES-256-GCM; `context` (e.g. the row's key) is authenticated, so a ciphertext
        copied into another row does not decrypt there."""
        key = self.data_keys[0]
        nonce = secrets.token_bytes(_NONCE_BYTES)
        sealed = AESGCM(key).encrypt(nonce, plaintext, context)
        return _BLOB_VERSION + _key_id(key) + nonce + sealed

    def decrypt(self, blob: bytes, context: bytes) -> bytes:
        if len(blob) < 1 + _KEY_ID_BYTES + _NONCE_BYTES + 16 or blob[:1] != _BLOB_VERSION:
            raise KeyringError("an encrypted value in the state database is malformed")
        kid = blob[1:1 + _KEY_ID_BYTES]
        nonce = blob[1 + _KEY_ID_BYTES:1 + _KEY_ID_BYTES + _NONCE_BYTES]
        sealed = blob[1 + _KEY_ID_BYTES + _NONCE_BYTES:]
        for key in self.data_keys:
            if hmac.compare_digest(_key_id(key), kid):
                try:
                    return AESGCM(key).decrypt(nonce, sealed, context)
                except InvalidTag:
                    break
        raise KeyringError("a value in the state database cannot be decrypted with this "
                           "keyring (its key was removed, or the row was tampered with)")

    # --- pseudonyms ---------------------------------------------------------------------

    def pseudonym(self, value: str) -> str:
        """A stable keyed hash of `value` (HMAC-SHA-256): equal inputs match, the input
        cannot be recovered without the key."""
        digest = hmac.new(self.pseudonym_key, value.encode("utf-8"), hashlib.sha256)
        return _b64(digest.digest())

    # --- serialisation ------------------------------------------------------------------

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, "version": _VERSION,
                           "data_keys": [_b64(k) for k in self.data_keys],
                           "pseudonym_key": _b64(self.pseudonym_key)}, indent=1)

    @classmethod
    def from_json(cls, text: str, *, where: str) -> Keyring:
        try:
            body = json.loads(text)
            if body.get("format") != FORMAT or body.get("version") != _VERSION:
                raise KeyringError(f"{where}: not a previsit web keyring (format "
                                   f"{FORMAT!r}, version {_VERSION})")
            return cls(tuple(_unb64(k) for k in body["data_keys"]),
                       _unb64(body["pseudonym_key"]))
        except KeyringError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError):
            raise KeyringError(f"{where}: the keyring is not valid JSON of the expected "
                               "shape") from None


def load_keyring(*, file: Path, env_name: str | None, env: Mapping[str, str]) -> Keyring:
    """The keyring from the named environment variable, else from `file`, created if absent.

    Several workers may start at once: the file is created exclusively, and a worker that
    loses the race reads the winner's keyring.
    """
    if env_name:
        text = env.get(env_name, "").strip()
        if not text:
            raise KeyringError(f"web.keyring_env names {env_name}, which is not set; put "
                               "a keyring in it (the JSON a keyring file holds) or unset "
                               "keyring_env to use web.keyring_file")
        return Keyring.from_json(text, where=f"${env_name}")
    if not file.exists():
        # Written whole under a private name, then published with link(), which fails if
        # another worker published first: nobody ever reads a half-written keyring.
        draft = file.with_name(f".{file.name}.{os.getpid()}.{secrets.token_hex(4)}")
        try:
            write_private_file(draft, Keyring.generate().to_json().encode("utf-8"))
            os.link(draft, file)
        except FileExistsError:
            pass  # another worker's keyring won; use it
        except (KeyFileError, OSError) as exc:
            raise KeyringError(f"{file}: cannot create the keyring ({exc}); check the "
                               "folder exists and is writable") from None
        finally:
            draft.unlink(missing_ok=True)
    return _read_keyring_file(file)


def rotate_keyring(file: Path) -> Keyring:
    """Put a new encryption key first in the keyring file, keeping the old ones."""
    rotated = _read_keyring_file(file).rotated()
    temporary = file.with_name(file.name + ".new")
    try:
        write_private_file(temporary, rotated.to_json().encode("utf-8"), overwrite=True)
        os.replace(temporary, file)
    except (KeyFileError, OSError) as exc:
        raise KeyringError(f"{file}: cannot write the rotated keyring: {exc}") from None
    return rotated


def _read_keyring_file(file: Path) -> Keyring:
    try:
        mode = file.stat().st_mode
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise KeyringError(f"{file}: cannot read the keyring ({exc.strerror})") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        # Whoever reads this file can read every stored token: refuse rather than warn.
        raise KeyringError(f"{file} can be read by other users of this machine; "
                           f"run: chmod 600 {file}")
    return Keyring.from_json(text, where=str(file))
