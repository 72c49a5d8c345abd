// Scripted faults ("the next N requests matching ... answer S") and the counters tests read back.
//
// A fault spec (JSON, as POSTed to /__admin/faults):
//   method       "POST"                  optional, any method when absent
//   path         "^Patient/"             optional regex; FHIR requests (and Bundle entries) are
//                                        matched on their URL relative to the FHIR base
//                                        ("Patient/123?x=1", "" for a batch POST), other requests on
//                                        their absolute path ("/oauth2/token")
//   interaction  "create"                optional FHIR interaction (read, search-type, create,
//                                        update, patch, delete, batch, ...)
//   in_batch     false                   false (default): top-level requests only; true: only
//                                        entries inside a batch/transaction Bundle; null: both
//   times        1                       how many matching requests it applies to; null = forever
//   action       "respond"               respond | drop (close the connection, no response) |
//                                        delay (only wait delay_ms, then process normally)
//   when         "before"                before: instead of processing; after: process (the write
//                                        happens) and then answer the fault / drop instead
//   status, body, headers                the answer (body: JSON or text; default: an
//                                        OperationOutcome for the status)
//   delay_ms     0                       wait this long first
//   preset       "id-mismatch" | "rate-limit" | "unavailable"   ready-made status + body
import { randomUUID } from 'node:crypto';

const ACTIONS = ['respond', 'drop', 'delay'];
const WHEN = ['before', 'after'];
const PRESETS = ['id-mismatch', 'rate-limit', 'unavailable'];

export class FaultSpecError extends Error {}

function check(condition, message) {
  if (!condition) {
    throw new FaultSpecError(message);
  }
}

function normalise(spec) {
  check(spec && typeof spec === 'object' && !Array.isArray(spec), 'a fault must be a JSON object');
  const known = ['method', 'path', 'interaction', 'in_batch', 'times', 'action', 'when', 'status', 'body', 'headers', 'delay_ms', 'preset'];
  for (const key of Object.keys(spec)) {
    check(known.includes(key), `unknown fault field ${JSON.stringify(key)} (known: ${known.join(', ')})`);
  }
  const action = spec.action ?? (spec.status === undefined && spec.preset === undefined && spec.delay_ms ? 'delay' : 'respond');
  check(ACTIONS.includes(action), `action must be one of ${ACTIONS.join(', ')}`);
  const when = spec.when ?? 'before';
  check(WHEN.includes(when), `when must be one of ${WHEN.join(', ')}`);
  check(spec.preset === undefined || PRESETS.includes(spec.preset), `preset must be one of ${PRESETS.join(', ')}`);
  if (action === 'respond') {
    check(
      Number.isInteger(spec.status) || spec.preset !== undefined,
      'a responding fault needs an integer status or a preset'
    );
  }
  check(spec.times === undefined || spec.times === null || (Number.isInteger(spec.times) && spec.times > 0), 'times must be a positive integer or null');
  let pathRe;
  try {
    pathRe = spec.path === undefined ? undefined : new RegExp(spec.path);
  } catch (err) {
    throw new FaultSpecError(`path is not a valid regular expression: ${err.message}`);
  }
  return {
    id: randomUUID(),
    method: spec.method?.toUpperCase(),
    path: spec.path,
    pathRe,
    interaction: spec.interaction,
    inBatch: spec.in_batch === undefined ? false : spec.in_batch,
    remaining: spec.times === undefined ? 1 : spec.times,
    action,
    when,
    status: spec.status ?? { 'id-mismatch': 400, 'rate-limit': 429, unavailable: 503 }[spec.preset],
    body: spec.body,
    headers: spec.headers ?? {},
    delayMs: spec.delay_ms ?? 0,
    preset: spec.preset,
    fired: 0,
  };
}

export class FaultInjector {
  constructor() {
    this.faults = [];
  }

  add(specs) {
    const list = (Array.isArray(specs) ? specs : [specs]).map(normalise);
    this.faults.push(...list);
    return list.map((f) => f.id);
  }

  // The first live fault matching this request, consumed once; undefined when none.
  take({ method, url, interaction, inBatch }) {
    const fault = this.faults.find(
      (f) =>
        (f.remaining === null || f.remaining > 0) &&
        (f.method === undefined || f.method === method) &&
        (f.pathRe === undefined || f.pathRe.test(url)) &&
        (f.interaction === undefined || f.interaction === interaction) &&
        (f.inBatch === null || f.inBatch === inBatch)
    );
    if (fault) {
      if (fault.remaining !== null) {
        fault.remaining--;
      }
      fault.fired++;
    }
    return fault;
  }

  list() {
    return this.faults.map(({ pathRe: _re, ...f }) => f);
  }

  clear() {
    this.faults = [];
  }
}

function bump(map, key, by = 1) {
  map[key] = (map[key] ?? 0) + by;
}

// Counters for /__admin/stats. Plain objects so they serialise as they are.
export class Stats {
  constructor() {
    this.reset();
  }

  reset() {
    this.requests = { total: 0, by_method: {}, by_status: {}, by_path: {}, bytes_out: 0, bytes_by_method: {} };
    this.interactions = {}; // interaction -> resourceType -> count (top-level and entries)
    this.entries = { total: 0, by_status: {} }; // entries inside batch/transaction Bundles
    this.bundles = {}; // batch / transaction -> count
    this.rate_limited = { requests: 0, entries: 0 };
    this.points = {}; // client key -> points charged (all windows)
    this.tokens = { issued: 0, by_grant: {}, refused: 0, by_error: {} };
    this.scopes_refused = { total: 0, details: [] };
    this.faults_fired = 0;
    this.conflicts = 0;
    this.auth = { authorize: 0, codes_issued: 0, launches: 0, rate_limited: 0 };
  }

  request(method, area, status, bytesOut = 0) {
    this.requests.total++;
    this.requests.bytes_out += bytesOut; // body bytes sent: what a cache saves shows here
    this.requests.bytes_by_method[method] = (this.requests.bytes_by_method[method] ?? 0) + bytesOut;
    bump(this.requests.by_method, method);
    bump(this.requests.by_status, String(status));
    bump(this.requests.by_path, area);
  }

  interaction(interaction, resourceType, inBatch) {
    this.interactions[interaction] ??= {};
    bump(this.interactions[interaction], resourceType ?? '(system)');
    if (inBatch) {
      this.entries.total++;
    }
  }

  entryStatus(status) {
    bump(this.entries.by_status, String(status));
  }

  bundle(type) {
    bump(this.bundles, type);
  }

  charge(key, points) {
    bump(this.points, key, points);
  }

  tokenIssued(grant) {
    this.tokens.issued++;
    bump(this.tokens.by_grant, grant);
  }

  tokenRefused(error) {
    this.tokens.refused++;
    bump(this.tokens.by_error, error);
  }

  scopeRefused(detail) {
    this.scopes_refused.total++;
    if (this.scopes_refused.details.length < 200) {
      this.scopes_refused.details.push(detail);
    }
  }

  toJSON() {
    const { requests, interactions, entries, bundles, rate_limited, points, tokens, scopes_refused, faults_fired, conflicts, auth } = this;
    return { requests, interactions, entries, bundles, rate_limited, points, tokens, scopes_refused, faults_fired, conflicts, auth };
  }
}
