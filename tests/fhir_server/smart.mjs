// A SMART App Launch 2.x authorization server in front of the FHIR endpoints ("the EHR"),
// behaving like Medplum's where Medplum is particular:
// - EHR launch sends `iss` with a trailing slash;
// - the token response's `scope` is exactly what was asked (never validated or narrowed);
// - `fhirUser` appears only in the id token, as a relative reference (`Practitioner/123`);
// - the id token is signed ES256 although discovery says RS256;
// - a refresh token is issued only when `offline_access` or `online_access` was asked;
// - optionally (--lax-client-auth) confidential clients are not really authenticated.
// Everything else follows the spec: exact redirect_uri match, PKCE S256 required, single-use codes
// (a replay revokes the tokens issued from the code), private_key_jwt assertions checked (alg,
// kid, iss = sub, aud, exp at most 5 minutes ahead, jti not replayed).
//
// Registration file (--clients FILE):
// { "clients": [ { "client_id": "app", "kind": "public" | "confidential-symmetric" |
//                  "confidential-asymmetric" | "backend-services",
//                  "secret": "...",                 (confidential-symmetric; backend-services)
//                  "jwks": { "keys": [ ... ] },     (confidential-asymmetric; backend-services)
//                  "redirect_uris": ["http://127.0.0.1:8000/callback"],
//                  "launch_uri": "http://127.0.0.1:8000/launch",
//                  "launch": ["ehr", "standalone"], "name": "Previsit" } ],
//   "users": [ { "id": "okafor", "fhirUser": "Practitioner/prac-okafor", "name": "Dr. Okafor" } ] }
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { authorizePage, errorPage } from './authorize_page.mjs';
import { JwtError, decodeJwt, signEs256, newSigningKey, verifyWithJwks } from './jose.mjs';
import { html, json, redirect, withQuery } from './responses.mjs';
import { hasScope } from './scopes.mjs';

const KINDS = ['public', 'confidential-symmetric', 'confidential-asymmetric', 'backend-services'];
const JWT_BEARER = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';
const ASSERTION_ALGS = ['RS384', 'ES384'];
const MAX_ASSERTION_LIFETIME_S = 300;
const CLOCK_SKEW_S = 5; // rounding between a client's clock and ours, not a real skew allowance
const CODE_TTL_MS = 120_000;
const LAUNCH_TTL_MS = 600_000;
const PENDING_TTL_MS = 600_000;

export class ClientRegistrationError extends Error {}

class OAuthError extends Error {
  constructor(error, description, status = 400) {
    super(description);
    this.error = error;
    this.status = status;
  }
}

const token = () => randomBytes(24).toString('base64url');
const nowS = () => Math.floor(Date.now() / 1000);
const normaliseUrl = (u) => String(u ?? '').replace(/\/+$/, '');
const s256 = (verifier) => createHash('sha256').update(verifier).digest('base64url');

function safeEqual(a, b) {
  const x = Buffer.from(String(a));
  const y = Buffer.from(String(b));
  return x.length === y.length && timingSafeEqual(x, y);
}

function registerClient(c) {
  const where = `client ${JSON.stringify(c?.client_id)}`;
  if (!c?.client_id || typeof c.client_id !== 'string') {
    throw new ClientRegistrationError('every client needs a string client_id');
  }
  if (!KINDS.includes(c.kind)) {
    throw new ClientRegistrationError(`${where}: kind must be one of ${KINDS.join(', ')}`);
  }
  if (c.kind === 'confidential-symmetric' && !c.secret) {
    throw new ClientRegistrationError(`${where}: a confidential-symmetric client needs a secret`);
  }
  if (c.kind === 'confidential-asymmetric' && !c.jwks?.keys?.length) {
    throw new ClientRegistrationError(`${where}: a confidential-asymmetric client needs jwks.keys`);
  }
  if (c.kind === 'backend-services' && !c.secret && !c.jwks?.keys?.length) {
    throw new ClientRegistrationError(`${where}: a backend-services client needs jwks.keys or a secret`);
  }
  return {
    ...c,
    redirect_uris: c.redirect_uris ?? [],
    launch: c.launch ?? ['ehr', 'standalone'],
  };
}

function parseBasic(header) {
  const m = /^Basic\s+(.+)$/i.exec(header ?? '');
  if (!m) {
    return undefined;
  }
  const decoded = Buffer.from(m[1], 'base64').toString('utf8');
  const i = decoded.indexOf(':');
  if (i < 0) {
    return { id: decoded, secret: '' };
  }
  // RFC 6749 2.3.1: both parts are form-urlencoded before base64.
  const unform = (s) => decodeURIComponent(s.replace(/\+/g, ' '));
  try {
    return { id: unform(decoded.slice(0, i)), secret: unform(decoded.slice(i + 1)) };
  } catch {
    return { id: decoded.slice(0, i), secret: decoded.slice(i + 1) };
  }
}

function urlsFor(root, fhirPath) {
  return {
    issuer: `${root}/`,
    fhirBase: `${root}${fhirPath}`,
    authorize: `${root}/oauth2/authorize`,
    token: `${root}/oauth2/token`,
    introspect: `${root}/oauth2/introspect`,
    jwks: `${root}/.well-known/jwks.json`,
  };
}

export class AuthServer {
  // listPatients: async () => Patient resources, for the standalone patient picker.
  constructor(config, { stats, listPatients, fhirPath }) {
    this.config = config;
    this.stats = stats;
    this.listPatients = listPatients;
    this.fhirPath = fhirPath;
    this.key = newSigningKey();
    const registration = config.clients ?? {};
    this.clients = new Map();
    for (const c of registration.clients ?? []) {
      const client = registerClient(c);
      if (this.clients.has(client.client_id)) {
        throw new ClientRegistrationError(`client ${client.client_id} is registered twice`);
      }
      this.clients.set(client.client_id, client);
    }
    this.users = registration.users ?? [];
    this.launches = new Map();
    this.pending = new Map();
    this.codes = new Map();
    this.accessTokens = new Map();
    this.refreshTokens = new Map();
    this.seenJtis = new Map();
    this.preauthorizations = [];
  }

  get enabled() {
    return this.clients.size > 0;
  }

  discovery(root) {
    const u = urlsFor(root, this.fhirPath);
    return {
      issuer: u.issuer,
      jwks_uri: u.jwks,
      authorization_endpoint: u.authorize,
      token_endpoint: u.token,
      introspection_endpoint: u.introspect,
      grant_types_supported: ['authorization_code', 'client_credentials', 'refresh_token'],
      token_endpoint_auth_methods_supported: ['private_key_jwt', 'client_secret_basic'],
      token_endpoint_auth_signing_alg_values_supported: ASSERTION_ALGS,
      scopes_supported: [
        'openid',
        'fhirUser',
        'launch',
        'launch/patient',
        'offline_access',
        'online_access',
        'patient/*.rs',
        'user/*.cruds',
        'system/*.rs',
      ],
      response_types_supported: ['code'],
      code_challenge_methods_supported: ['S256'],
      // Medplum quirk: advertises RS256 but signs id tokens with ES256.
      id_token_signing_alg_values_supported: ['RS256'],
      capabilities: [
        'launch-ehr',
        'launch-standalone',
        'authorize-post',
        'client-public',
        'client-confidential-symmetric',
        'client-confidential-asymmetric',
        'context-ehr-patient',
        'context-ehr-encounter',
        'context-standalone-patient',
        'sso-openid-connect',
        'permission-v1',
        'permission-v2',
        'permission-offline',
        'permission-online',
        'permission-patient',
        'permission-user',
      ],
    };
  }

  jwks() {
    return { keys: [this.key.publicJwk] };
  }

  // The FHIR side's view of a bearer token: its record, 'inactive' (expired or revoked), or
  // undefined when this server never issued it.
  lookup(accessToken) {
    const rec = this.accessTokens.get(accessToken);
    if (!rec) {
      return undefined;
    }
    return rec.revoked || Date.now() >= rec.expiresAt ? 'inactive' : rec;
  }

  preauthorize(spec) {
    const user = spec.user ?? this.users[0]?.id;
    if (spec.user != null && !this.users.some((u) => u.id === spec.user)) {
      throw new ClientRegistrationError(`unknown user ${JSON.stringify(spec.user)}`);
    }
    this.preauthorizations.push({
      clientId: spec.client_id ?? undefined,
      user,
      patient: spec.patient ?? undefined,
      deny: Boolean(spec.deny),
    });
  }

  reset({ tokens }) {
    this.preauthorizations = [];
    this.pending.clear();
    if (tokens) {
      for (const rec of this.accessTokens.values()) rec.revoked = true;
      this.refreshTokens.clear();
      this.codes.clear();
      this.launches.clear();
    }
  }

  // --- endpoints ------------------------------------------------------------------------------

  // Routes /oauth2/* and /ehr/launch. `form` is the parsed urlencoded body (or undefined).
  async handle(method, url, form, headers, root) {
    const path = url.pathname.replace(/\/+$/, '');
    try {
      if (path === '/oauth2/authorize' && (method === 'GET' || method === 'POST')) {
        const params = method === 'GET' ? Object.fromEntries(url.searchParams) : (form ?? {});
        return await this.authorize(params, root);
      }
      if (path === '/oauth2/authorize/decision' && method === 'POST') {
        return await this.decision(form ?? {}, root);
      }
      if (path === '/oauth2/token' && method === 'POST') {
        return this.tokenEndpoint(form, headers, root);
      }
      if (path === '/oauth2/introspect' && method === 'POST') {
        return this.introspect(form ?? {}, headers);
      }
      if (path === '/ehr/launch' && method === 'GET') {
        return this.ehrLaunch(Object.fromEntries(url.searchParams), root);
      }
    } catch (err) {
      if (err instanceof OAuthError) {
        return this.oauthError(err);
      }
      throw err;
    }
    return json(404, { error: 'not_found', error_description: `${method} ${url.pathname} is not an endpoint of this server` });
  }

  oauthError(err) {
    this.stats.tokenRefused(err.error);
    const headers = { 'Cache-Control': 'no-store', Pragma: 'no-cache' };
    if (err.status === 401) {
      headers['WWW-Authenticate'] = 'Basic realm="oauth2"';
    }
    return json(err.status, { error: err.error, error_description: err.message }, headers);
  }

  // GET /ehr/launch?client_id=&patient=&encounter=&appointment=&user=  - what the EHR does when a
  // clinician opens the app: mint an opaque launch and send the browser to the app's launch URL.
  ehrLaunch(q, root) {
    const client = this.clients.get(q.client_id);
    if (!client) {
      return html(400, errorPage('EHR launch failed', `Unknown client_id ${q.client_id ?? '(none)'}`));
    }
    if (!client.launch_uri || !client.launch.includes('ehr')) {
      return html(400, errorPage('EHR launch failed', `Client ${client.client_id} has no launch_uri or may not be launched from the EHR`));
    }
    if (q.user !== undefined && !this.users.some((u) => u.id === q.user)) {
      return html(400, errorPage('EHR launch failed', `Unknown user ${q.user}`));
    }
    const launch = token();
    this.launches.set(launch, {
      clientId: client.client_id,
      patient: q.patient,
      encounter: q.encounter,
      appointment: q.appointment,
      user: q.user,
      expiresAt: Date.now() + LAUNCH_TTL_MS,
    });
    this.stats.auth.launches++;
    // Medplum quirk: iss is the FHIR base WITH a trailing slash.
    return redirect(withQuery(client.launch_uri, { iss: `${urlsFor(root, this.fhirPath).fhirBase}/`, launch }));
  }

  async authorize(p, root) {
    this.stats.auth.authorize++;
    const client = this.clients.get(p.client_id);
    if (!client) {
      return html(400, errorPage('Authorization failed', `Unknown client_id ${p.client_id ?? '(none)'}`));
    }
    if (!p.redirect_uri || !client.redirect_uris.includes(p.redirect_uri)) {
      return html(
        400,
        errorPage('Authorization failed', `redirect_uri ${p.redirect_uri ?? '(none)'} is not registered for ${client.client_id}`)
      );
    }
    // From here on the redirect_uri is trusted: errors go back to the app.
    const back = (error, description) =>
      redirect(withQuery(p.redirect_uri, { error, error_description: description, state: p.state }));
    if (p.response_type !== 'code') {
      return back('unsupported_response_type', 'response_type must be code');
    }
    if (client.kind === 'backend-services') {
      return back('unauthorized_client', 'a backend-services client cannot use the authorization code grant');
    }
    if (!p.scope?.trim()) {
      return back('invalid_scope', 'scope is required');
    }
    const fhirBase = urlsFor(root, this.fhirPath).fhirBase;
    if (normaliseUrl(p.aud) !== normaliseUrl(fhirBase)) {
      return back('invalid_request', `aud must be this server's FHIR base URL ${fhirBase}`);
    }
    if (p.code_challenge_method !== 'S256' || !p.code_challenge) {
      return back('invalid_request', 'PKCE is required: code_challenge with code_challenge_method=S256');
    }
    let launch;
    if (p.launch !== undefined) {
      launch = this.launches.get(p.launch);
      if (!launch || launch.clientId !== client.client_id || Date.now() >= launch.expiresAt) {
        return back('invalid_request', 'unknown or expired launch');
      }
      if (!hasScope(p.scope, 'launch')) {
        launch = undefined; // context is granted only to apps that ask for it (scope `launch`)
      }
    } else if (!client.launch.includes('standalone')) {
      return back('unauthorized_client', `${client.client_id} may only be launched from the EHR`);
    }
    const pending = {
      id: token(),
      clientId: client.client_id,
      redirectUri: p.redirect_uri,
      scope: p.scope,
      state: p.state,
      nonce: p.nonce,
      codeChallenge: p.code_challenge,
      launch,
      userHint: launch?.user ?? p.login_hint,
      needsPatient: p.launch === undefined && hasScope(p.scope, 'launch/patient'),
      expiresAt: Date.now() + PENDING_TTL_MS,
    };
    const i = this.preauthorizations.findIndex((a) => a.clientId === undefined || a.clientId === client.client_id);
    if (i >= 0) {
      const [pre] = this.preauthorizations.splice(i, 1);
      if (pre.deny) {
        return back('access_denied', 'the user denied the request');
      }
      return this.complete(pending, pre.user ?? pending.userHint, pre.patient);
    }
    this.pending.set(pending.id, pending);
    return this.renderPage(pending, client);
  }

  async renderPage(pending, client, error) {
    const patients = pending.needsPatient ? await this.listPatients() : [];
    return html(error ? 400 : 200, authorizePage({ pending, client, users: this.users, patients, error }));
  }

  async decision(form, _root) {
    const pending = this.pending.get(form.pending);
    if (!pending || Date.now() >= pending.expiresAt) {
      return html(400, errorPage('Authorization failed', 'This authorization request is unknown or has expired; start again from the app.'));
    }
    const client = this.clients.get(pending.clientId);
    if (form.decision !== 'approve') {
      this.pending.delete(pending.id);
      return redirect(withQuery(pending.redirectUri, { error: 'access_denied', error_description: 'the user denied the request', state: pending.state }));
    }
    if (this.users.length && !this.users.some((u) => u.id === form.user)) {
      return this.renderPage(pending, client, 'Choose who you are signing in as.');
    }
    if (pending.needsPatient) {
      const patients = await this.listPatients();
      if (!patients.some((pt) => pt.id === form.patient)) {
        return this.renderPage(pending, client, 'Choose a patient.');
      }
    }
    this.pending.delete(pending.id);
    return this.complete(pending, form.user, form.patient);
  }

  complete(pending, userId, patientId) {
    const code = token();
    const launch = pending.launch;
    this.codes.set(code, {
      clientId: pending.clientId,
      redirectUri: pending.redirectUri,
      scope: pending.scope,
      codeChallenge: pending.codeChallenge,
      nonce: pending.nonce,
      user: userId,
      patient: launch ? launch.patient : pending.needsPatient ? patientId : undefined,
      encounter: launch?.encounter,
      appointment: launch?.appointment,
      expiresAt: Date.now() + CODE_TTL_MS,
      used: false,
      issued: [],
    });
    this.stats.auth.codes_issued++;
    return redirect(withQuery(pending.redirectUri, { code, state: pending.state }));
  }

  // --- token endpoint -------------------------------------------------------------------------

  tokenEndpoint(form, headers, root) {
    if (!form) {
      throw new OAuthError('invalid_request', 'the token request must be application/x-www-form-urlencoded');
    }
    const tokenUrl = urlsFor(root, this.fhirPath).token;
    switch (form.grant_type) {
      case 'authorization_code':
        return this.codeGrant(form, headers, root, tokenUrl);
      case 'refresh_token':
        return this.refreshGrant(form, headers, root, tokenUrl);
      case 'client_credentials':
        return this.clientCredentialsGrant(form, headers, root, tokenUrl);
      default:
        throw new OAuthError('unsupported_grant_type', `grant_type ${JSON.stringify(form.grant_type ?? null)} is not supported`);
    }
  }

  // Who is calling the token endpoint. `lax` (Medplum's behaviour with --lax-client-auth) accepts a
  // confidential client that names itself without proving it.
  authenticateClient(form, headers, tokenUrl, lax) {
    const basic = parseBasic(headers.authorization);
    if (basic) {
      const client = this.clients.get(basic.id);
      const ok = client?.secret && safeEqual(client.secret, basic.secret);
      if (!ok && !(lax && client && client.kind.startsWith('confidential'))) {
        throw new OAuthError('invalid_client', 'client authentication failed (client_secret_basic)', 401);
      }
      if (form.client_id !== undefined && form.client_id !== basic.id) {
        throw new OAuthError('invalid_request', 'client_id does not match the authenticated client');
      }
      return client;
    }
    if (form.client_assertion !== undefined || form.client_assertion_type !== undefined) {
      if (form.client_assertion_type !== JWT_BEARER) {
        throw new OAuthError('invalid_client', `client_assertion_type must be ${JWT_BEARER}`);
      }
      try {
        return this.verifyAssertion(form.client_assertion, tokenUrl);
      } catch (err) {
        if (!(err instanceof OAuthError)) {
          throw err;
        }
        const claimed = this.clients.get(form.client_id ?? safeIssuer(form.client_assertion));
        if (lax && claimed?.kind === 'confidential-asymmetric') {
          return claimed;
        }
        throw err;
      }
    }
    const client = this.clients.get(form.client_id);
    if (!client) {
      throw new OAuthError('invalid_client', `unknown client_id ${JSON.stringify(form.client_id ?? null)}`);
    }
    if (client.kind === 'public' || (lax && client.kind.startsWith('confidential'))) {
      return client;
    }
    throw new OAuthError('invalid_client', `client ${client.client_id} must authenticate (client_secret_basic or private_key_jwt)`);
  }

  verifyAssertion(assertion, tokenUrl) {
    let decoded;
    try {
      decoded = decodeJwt(assertion);
    } catch (err) {
      throw new OAuthError('invalid_client', `client_assertion: ${err.message}`);
    }
    const c = decoded.payload;
    const client = this.clients.get(c.iss);
    if (!client || !client.jwks?.keys?.length) {
      throw new OAuthError('invalid_client', `client_assertion iss ${JSON.stringify(c.iss ?? null)} is not a client with registered keys`);
    }
    const problems = [];
    if (c.sub !== c.iss) problems.push('sub must equal iss (the client_id)');
    const aud = Array.isArray(c.aud) ? c.aud : [c.aud];
    if (!aud.includes(tokenUrl)) problems.push(`aud must be the token endpoint ${tokenUrl}`);
    const now = nowS();
    if (typeof c.exp !== 'number') problems.push('exp is required');
    else if (c.exp <= now) problems.push('the assertion has expired');
    else if (c.exp > now + MAX_ASSERTION_LIFETIME_S + CLOCK_SKEW_S) problems.push('exp must be at most 5 minutes in the future');
    if (typeof c.jti !== 'string' || !c.jti) problems.push('jti is required');
    if (problems.length) {
      throw new OAuthError('invalid_client', `client_assertion: ${problems.join('; ')}`);
    }
    try {
      verifyWithJwks(decoded, client.jwks, ASSERTION_ALGS);
    } catch (err) {
      if (err instanceof JwtError) {
        throw new OAuthError('invalid_client', `client_assertion: ${err.message}`);
      }
      throw err;
    }
    for (const [jti, exp] of this.seenJtis) {
      if (exp < now) this.seenJtis.delete(jti);
    }
    const key = `${client.client_id}\u0000${c.jti}`;
    if (this.seenJtis.has(key)) {
      throw new OAuthError('invalid_client', 'client_assertion: this jti has already been used');
    }
    this.seenJtis.set(key, c.exp);
    return client;
  }

  codeGrant(form, headers, root, tokenUrl) {
    const client = this.authenticateClient(form, headers, tokenUrl, this.config.laxClientAuth);
    if (client.kind === 'backend-services') {
      throw new OAuthError('unauthorized_client', 'a backend-services client cannot use the authorization code grant');
    }
    const rec = this.codes.get(form.code);
    if (!rec) {
      throw new OAuthError('invalid_grant', 'unknown authorization code');
    }
    if (rec.used) {
      // RFC 6749 4.1.2: a code used twice revokes what it gave out.
      for (const t of rec.issued) this.revoke(t);
      throw new OAuthError('invalid_grant', 'authorization code already used; the tokens issued from it are revoked');
    }
    if (rec.clientId !== client.client_id) {
      throw new OAuthError('invalid_grant', 'the authorization code was issued to another client');
    }
    if (Date.now() >= rec.expiresAt) {
      throw new OAuthError('invalid_grant', 'the authorization code has expired');
    }
    if (form.redirect_uri !== rec.redirectUri) {
      throw new OAuthError('invalid_grant', 'redirect_uri does not match the authorization request');
    }
    if (!form.code_verifier || s256(form.code_verifier) !== rec.codeChallenge) {
      throw new OAuthError('invalid_grant', 'PKCE verification failed (code_verifier does not match code_challenge)');
    }
    rec.used = true;
    return this.issue(client, rec, 'authorization_code', root, rec);
  }

  refreshGrant(form, headers, root, tokenUrl) {
    const client = this.authenticateClient(form, headers, tokenUrl, this.config.laxClientAuth);
    const rec = this.refreshTokens.get(form.refresh_token);
    if (!rec || rec.revoked) {
      throw new OAuthError('invalid_grant', 'unknown or revoked refresh token');
    }
    if (rec.clientId !== client.client_id) {
      throw new OAuthError('invalid_grant', 'the refresh token was issued to another client');
    }
    let scope = rec.scope;
    if (form.scope) {
      const granted = new Set(rec.scope.split(/\s+/));
      const extra = form.scope.split(/\s+/).filter((s) => s && !granted.has(s));
      if (extra.length) {
        throw new OAuthError('invalid_scope', `a refresh cannot add scopes: ${extra.join(' ')}`);
      }
      scope = form.scope;
    }
    this.refreshTokens.delete(form.refresh_token); // rotated: each refresh token works once
    return this.issue(client, { ...rec, scope }, 'refresh_token', root, rec.code);
  }

  clientCredentialsGrant(form, headers, root, tokenUrl) {
    const client = this.authenticateClient(form, headers, tokenUrl, false);
    if (client.kind !== 'backend-services') {
      throw new OAuthError('unauthorized_client', `client ${client.client_id} is not registered for backend services (client_credentials)`);
    }
    if (!form.scope?.trim()) {
      throw new OAuthError('invalid_scope', 'scope is required');
    }
    return this.issue(client, { scope: form.scope }, 'client_credentials', root, undefined);
  }

  // The token response. `grant` holds scope and launch context; `origin` is the authorization
  // code record the tokens descend from (revoked together on a code replay).
  issue(client, grant, grantType, root, origin) {
    const u = urlsFor(root, this.fhirPath);
    const iat = nowS();
    const ttl = this.config.tokenTtlS;
    const user = this.users.find((x) => x.id === grant.user);
    const scope = grant.scope;
    const accessToken = signEs256(this.key, {
      iss: u.issuer,
      sub: user?.id ?? client.client_id,
      aud: client.client_id,
      client_id: client.client_id,
      scope,
      ...(grant.patient ? { patient: grant.patient } : {}),
      iat,
      exp: iat + ttl,
      jti: token(),
    });
    const fhirContext = grant.appointment ? [{ reference: `Appointment/${grant.appointment}` }] : undefined;
    this.accessTokens.set(accessToken, {
      clientId: client.client_id,
      scope,
      user: user?.id,
      patient: grant.patient,
      encounter: grant.encounter,
      issuedAt: iat,
      expiresAt: Date.now() + ttl * 1000,
      revoked: false,
    });
    origin?.issued?.push(accessToken);
    const body = { access_token: accessToken, token_type: 'Bearer', expires_in: ttl, scope };
    if (hasScope(scope, 'offline_access') || hasScope(scope, 'online_access')) {
      const refresh = token();
      this.refreshTokens.set(refresh, {
        clientId: client.client_id,
        scope,
        user: grant.user,
        patient: grant.patient,
        encounter: grant.encounter,
        appointment: grant.appointment,
        nonce: undefined,
        code: origin,
      });
      origin?.issued?.push(refresh);
      body.refresh_token = refresh;
    }
    if (hasScope(scope, 'openid') && user) {
      body.id_token = signEs256(this.key, {
        iss: u.issuer,
        sub: user.id,
        aud: client.client_id,
        iat,
        exp: iat + ttl,
        auth_time: iat,
        ...(grant.nonce ? { nonce: grant.nonce } : {}),
        // Medplum quirk: relative, and only here (never in the token response itself).
        ...(hasScope(scope, 'fhirUser') && user.fhirUser ? { fhirUser: user.fhirUser } : {}),
      });
    }
    if (grant.patient) body.patient = grant.patient;
    if (grant.encounter) body.encounter = grant.encounter;
    if (fhirContext) body.fhirContext = fhirContext;
    this.stats.tokenIssued(grantType);
    return json(200, body, { 'Cache-Control': 'no-store', Pragma: 'no-cache' });
  }

  revoke(t) {
    const access = this.accessTokens.get(t);
    if (access) access.revoked = true;
    const refresh = this.refreshTokens.get(t);
    if (refresh) refresh.revoked = true;
  }

  // RFC 7662. The caller authenticates with client_secret_basic or any active bearer token.
  introspect(form, headers) {
    const basic = parseBasic(headers.authorization);
    const bearer = /^Bearer\s+(.+)$/i.exec(headers.authorization ?? '')?.[1];
    const callerOk = basic
      ? Boolean(this.clients.get(basic.id)?.secret && safeEqual(this.clients.get(basic.id).secret, basic.secret))
      : Boolean(bearer && typeof this.lookup(bearer) === 'object');
    if (!callerOk) {
      throw new OAuthError('invalid_client', 'introspection requires client_secret_basic or an active bearer token', 401);
    }
    const rec = this.lookup(form.token);
    if (typeof rec !== 'object') {
      return json(200, { active: false });
    }
    const user = this.users.find((u) => u.id === rec.user);
    return json(200, {
      active: true,
      token_type: 'Bearer',
      scope: rec.scope,
      client_id: rec.clientId,
      sub: rec.user ?? rec.clientId,
      iat: rec.issuedAt,
      exp: Math.floor(rec.expiresAt / 1000),
      ...(rec.patient ? { patient: rec.patient } : {}),
      ...(user?.fhirUser ? { fhirUser: user.fhirUser } : {}),
    });
  }
}

function safeIssuer(assertion) {
  try {
    return decodeJwt(assertion).payload.iss;
  } catch {
    return undefined;
  }
}
