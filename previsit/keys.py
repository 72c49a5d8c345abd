"""Key pairs for SMART Backend Services: the private key stays here, the JWKS goes to the EHR.

SMART's client-confidential-asymmetric profile requires clients to sign with RS384 or ES384
and to register the public key as a JWK Set whose keys carry `kty` and `kid` and the bare
key values (`n`/`e` for RSA, `crv`/`x`/`y` for EC)
(hl7.org/fhir/smart-app-launch/client-confidential-asymmetric.html). The `kid` defaults
to the key's RFC 7638 thumbprint, so the same key always has the same id.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from previsit.errors import KeyFileError
from previsit.files import write_bytes

Algorithm = Literal["RS384", "ES384"]
ALGORITHMS: tuple[Algorithm, ...] = ("RS384", "ES384")
MIN_RSA_BITS = 2048
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey




@dataclass(frozen=True)
class GeneratedKey:
    private_key_path: Path
    kid: str
    algorithm: Algorithm
    jwks: dict[str, Any]  # {"keys": [ {kty, kid, alg, use, key_ops, ...} ]}

    def jwks_json(self) -> str:
        return json.dumps(self.jwks, indent=2)


def generate_key_pair(private_key_path: Path, algorithm: Algorithm = "RS384", *,
                      kid: str | None = None, rsa_bits: int = 3072,
                      overwrite: bool = False) -> GeneratedKey:
    """Create a key pair, write the private key (PKCS#8 PEM, mode 0600), return the JWKS.

    Refuses to replace an existing file unless `overwrite`: the old key may be the one
    the EHR has registered, and losing it locks the nightly job out.
    """
    key = new_private_key(algorithm, rsa_bits=rsa_bits)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    write_private_file(private_key_path, pem, overwrite=overwrite)
    jwk = public_jwk(key, algorithm, kid=kid)
    return GeneratedKey(private_key_path, jwk["kid"], algorithm, {"keys": [jwk]})


def new_private_key(algorithm: Algorithm, *, rsa_bits: int = 3072) -> PrivateKey:
    if algorithm == "RS384":
        if rsa_bits < MIN_RSA_BITS:
            raise KeyFileError(f"RSA keys must have at least {MIN_RSA_BITS} bits, not {rsa_bits}")
        return rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
    if algorithm == "ES384":
        return ec.generate_private_key(ec.SECP384R1())
    raise KeyFileError(f"unsupported algorithm {algorithm!r}: use one of {', '.join(ALGORITHMS)}")


def write_private_file(path: Path, data: bytes, *, overwrite: bool = False) -> None:
    """Write with mode 0600 from the first byte (no window where others could read it).

    Overwriting replaces the file by a rename (previsit.files), so a symlink at `path` is
    replaced, never followed: `--overwrite` must not write a key over the link's target.
    """
    if overwrite:
        try:
            write_bytes(path, data)
        except OSError as exc:
            raise KeyFileError(f"{path}: cannot write the private key: {exc.strerror}") \
                from None
        return
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL  # O_EXCL: fails on any link, too
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{path} already exists; move it away (it may be the key the EHR "
                           "has registered) or pass overwrite") from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot write the private key: {exc.strerror}") from None
    try:
        os.fchmod(fd, 0o600)  # an existing file being overwritten keeps its old mode otherwise
        os.write(fd, data)
    finally:
        os.close(fd)


def load_private_key(path: Path, algorithm: Algorithm) -> PrivateKey:
    """Read a PEM private key and check that it can sign with `algorithm`."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read the private key: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        # The exception text from cryptography never contains key material.
        raise KeyFileError(f"{path}: not an unencrypted PEM private key ({exc})") from None
    check_key_algorithm(key, algorithm, where=str(path))
    assert isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey))
    return key


def check_key_algorithm(key: object, algorithm: Algorithm, *, where: str) -> None:
    if algorithm == "RS384":
        if not isinstance(key, rsa.RSAPrivateKey):
            raise KeyFileError(f"{where}: RS384 needs an RSA key; this is {_kind(key)}")
        if key.key_size < MIN_RSA_BITS:
            raise KeyFileError(f"{where}: RSA key of {key.key_size} bits; "
                               f"at least {MIN_RSA_BITS} are required")
    elif algorithm == "ES384":
        if not isinstance(key, ec.EllipticCurvePrivateKey) or \
                not isinstance(key.curve, ec.SECP384R1):
            raise KeyFileError(f"{where}: ES384 needs an EC key on curve P-384; "
                               f"this is {_kind(key)}")
    else:
        raise KeyFileError(f"unsupported algorithm {algorithm!r}: use one of "
                           f"{', '.join(ALGORITHMS)}")


def public_jwk(key: PrivateKey, algorithm: Algorithm, *, kid: str | None = None
               ) -> dict[str, Any]:
    """The public half as a JWK for the EHR's registration (never the private members)."""
    check_key_algorithm(key, algorithm, where="key")
    jwk: dict[str, Any]
    if isinstance(key, rsa.RSAPrivateKey):
        jwk = dict(RSAAlgorithm.to_jwk(key.public_key(), as_dict=True))
    else:
        jwk = dict(ECAlgorithm.to_jwk(key.public_key(), as_dict=True))
    jwk = {k: v for k, v in jwk.items() if k in ("kty", "n", "e", "crv", "x", "y")}
    jwk.update(kid=kid or jwk_thumbprint(jwk), alg=algorithm, use="sig", key_ops=["verify"])
    return jwk


def public_jwks(private_key_path: Path, algorithm: Algorithm, *, kid: str | None = None
                ) -> dict[str, Any]:
    """The JWKS of an existing private key (to print it again for the EHR)."""
    return {"keys": [public_jwk(load_private_key(private_key_path, algorithm), algorithm,
                                kid=kid)]}


def jwk_thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638: SHA-256 over the required members in lexicographic order, base64url."""
    required = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y")}[jwk["kty"]]
    canonical = json.dumps({k: jwk[k] for k in required}, separators=(",", ":"),
                           sort_keys=True)
    digest = hashlib.sha256(canonical.encode("utf-8")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _kind(key: object) -> str:
    if isinstance(key, rsa.RSAPrivateKey):
        return f"an RSA key ({key.key_size} bits)"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return f"an EC key on {key.curve.name}"
    return f"a {type(key).__name__}"
