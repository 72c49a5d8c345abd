// The little JOSE the authorization server needs, on node:crypto alone: sign ES256 tokens with
// the server's key, verify clients' RS384/ES384 assertions against their JWKS.
import { createHash, createPublicKey, generateKeyPairSync, sign, verify } from 'node:crypto';

export const b64url = (buf) => Buffer.from(buf).toString('base64url');
const fromB64url = (text) => Buffer.from(text, 'base64url');

// RFC 7638 thumbprint: a stable key id derived from the key itself.
function thumbprint(jwk) {
  const members = jwk.kty === 'EC' ? { crv: jwk.crv, kty: jwk.kty, x: jwk.x, y: jwk.y } : { e: jwk.e, kty: jwk.kty, n: jwk.n };
  return b64url(createHash('sha256').update(JSON.stringify(members)).digest());
}

const ALGS = {
  ES256: { hash: 'sha256', kty: 'EC', crv: 'P-256' },
  ES384: { hash: 'sha384', kty: 'EC', crv: 'P-384' },
  RS256: { hash: 'sha256', kty: 'RSA' },
  RS384: { hash: 'sha384', kty: 'RSA' },
};

export class JwtError extends Error {}

// The server's signing key: EC P-256, published at jwks_uri.
export function newSigningKey() {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const jwk = publicKey.export({ format: 'jwk' });
  const kid = thumbprint(jwk);
  return { privateKey, kid, publicJwk: { ...jwk, kid, use: 'sig', alg: 'ES256' } };
}

export function signEs256(key, payload) {
  const header = { alg: 'ES256', typ: 'JWT', kid: key.kid };
  const input = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(payload))}`;
  const signature = sign('sha256', Buffer.from(input), { key: key.privateKey, dsaEncoding: 'ieee-p1363' });
  return `${input}.${b64url(signature)}`;
}

export function decodeJwt(token) {
  const parts = typeof token === 'string' ? token.split('.') : [];
  if (parts.length !== 3) {
    throw new JwtError('not a JWT (expected three dot-separated parts)');
  }
  try {
    return {
      header: JSON.parse(fromB64url(parts[0]).toString('utf8')),
      payload: JSON.parse(fromB64url(parts[1]).toString('utf8')),
      input: `${parts[0]}.${parts[1]}`,
      signature: fromB64url(parts[2]),
    };
  } catch {
    throw new JwtError('JWT header or payload is not base64url JSON');
  }
}

// Verifies a decoded JWT's signature with the key of `jwks` named by its `kid`, for the allowed
// algorithms only. Throws JwtError with the reason otherwise.
export function verifyWithJwks(decoded, jwks, allowedAlgs) {
  const { alg, kid } = decoded.header;
  if (!allowedAlgs.includes(alg)) {
    throw new JwtError(`alg ${JSON.stringify(alg)} is not accepted (use one of ${allowedAlgs.join(', ')})`);
  }
  if (!kid) {
    throw new JwtError('the JWT header has no kid');
  }
  const jwk = (jwks?.keys ?? []).find((k) => k.kid === kid);
  if (!jwk) {
    throw new JwtError(`no key with kid ${JSON.stringify(kid)} is registered for this client`);
  }
  const spec = ALGS[alg];
  if (jwk.kty !== spec.kty || (spec.crv && jwk.crv !== spec.crv)) {
    throw new JwtError(`key ${kid} (${jwk.kty} ${jwk.crv ?? ''}) cannot verify ${alg}`);
  }
  let publicKey;
  try {
    publicKey = createPublicKey({ key: jwk, format: 'jwk' });
  } catch (err) {
    throw new JwtError(`registered key ${kid} is not a usable JWK: ${err.message}`);
  }
  const ok = verify(
    spec.hash,
    Buffer.from(decoded.input),
    spec.kty === 'EC' ? { key: publicKey, dsaEncoding: 'ieee-p1363' } : publicKey,
    decoded.signature
  );
  if (!ok) {
    throw new JwtError('signature does not verify');
  }
}
