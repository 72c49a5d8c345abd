"""Key pairs for SMART Backend Services: private key on disk (0600), public JWKS for the EHR."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import jwt
import pytest

from previsit.errors import KeyFileError
from previsit.keys import generate_key_pair, jwk_thumbprint, load_private_key, public_jwks

PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}


@pytest.mark.parametrize(("alg", "kty"), [("RS384", "RSA"), ("ES384", "EC")])
def test_generated_key_signs_what_its_jwks_verifies(tmp_path: Path, alg: str, kty: str) -> None:
    path = tmp_path / "previsit.pem"
    generated = generate_key_pair(path, alg, rsa_bits=2048)  # type: ignore[arg-type]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    [jwk] = generated.jwks["keys"]
    assert jwk["kty"] == kty and jwk["alg"] == alg
    assert jwk["use"] == "sig" and jwk["key_ops"] == ["verify"]
    assert jwk["kid"] == generated.kid == jwk_thumbprint(jwk)
    assert not PRIVATE_MEMBERS & set(jwk)
    if kty == "EC":
        assert jwk["crv"] == "P-384"
    token = jwt.encode({"iss": "x"}, load_private_key(path, alg), algorithm=alg,  # type: ignore[arg-type]
                       headers={"kid": generated.kid})
    public = jwt.PyJWK(jwk)
    assert jwt.decode(token, public.key, algorithms=[alg]) == {"iss": "x"}


def test_an_rsa_key_has_at_least_2048_bits(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="at least 2048"):
        generate_key_pair(tmp_path / "k.pem", "RS384", rsa_bits=1024)
    assert not (tmp_path / "k.pem").exists()


def test_an_existing_key_is_not_replaced_unless_asked(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    path.write_text("the key the EHR knows")
    path.chmod(0o644)
    with pytest.raises(KeyFileError, match="already exists"):
        generate_key_pair(path, "ES384")
    assert path.read_text() == "the key the EHR knows"
    generate_key_pair(path, "ES384", overwrite=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "BEGIN PRIVATE KEY" in path.read_text()


def test_the_jwks_of_an_existing_key_can_be_printed_again(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    generated = generate_key_pair(path, "ES384", kid="nightly-2026")
    assert generated.kid == "nightly-2026"
    assert public_jwks(path, "ES384", kid="nightly-2026") == generated.jwks


def test_a_key_of_the_wrong_type_is_named_with_its_file(tmp_path: Path) -> None:
    path = tmp_path / "ec.pem"
    generate_key_pair(path, "ES384")
    expected = f"{path}: RS384 needs an RSA key; this is an EC key"
    with pytest.raises(KeyFileError, match=re.escape(expected)):
        load_private_key(path, "RS384")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key")
    expected = f"{garbage}: not an unencrypted PEM private key"
    with pytest.raises(KeyFileError, match=re.escape(expected)):
        load_private_key(garbage, "ES384")


def test_thumbprint_matches_rfc_7638_example() -> None:
    # RFC 7638 §3.1: the example RSA key and its SHA-256 thumbprint.
    jwk = {"kty": "RSA", "e": "AQAB", "alg": "RS256", "kid": "2011-04-29", "n": (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSo"
        "c_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGj"
        "QR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-"
        "bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw")}
    assert jwk_thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_overwrite_replaces_a_symlink_instead_of_writing_through_it(tmp_path: Path) -> None:
    victim = tmp_path / "victim.conf"
    victim.write_text("precious\n")
    link = tmp_path / "previsit.pem"
    link.symlink_to(victim)
    with pytest.raises(KeyFileError, match="already exists"):  # without overwrite: refused
        generate_key_pair(link, "ES384")
    generate_key_pair(link, "ES384", overwrite=True)
    assert victim.read_text() == "precious\n"
    assert not link.is_symlink() and link.read_bytes().startswith(b"-----BEGIN PRIVATE KEY")
    assert oct(link.stat().st_mode & 0o777) == "0o600"
