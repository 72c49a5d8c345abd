// Command-line options and production profiles of the test FHIR server.
//
// A profile is a set of defaults; every behaviour it switches also has its own option, so a test
// can isolate one behaviour (e.g. `--profile lenient --rate-limit`) or relax one
// (`--profile medplum --no-transaction-limits`). Options given explicitly always win.
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

export const PROFILES = {
  // Today's behaviour, kinder than any production server: any ids, PUT may create, Bundle.total
  // always present, no rate limits, no transaction limits.
  lenient: {
    transactionLimits: false,
    atomicTransactions: true,
    idPolicy: 'any',
    putCreate: true,
    total: 'always',
    paging: 'offset',
    errorStyle: 'lenient',
    rateLimit: false,
    authRateLimit: 0,
    conflicts: false,
    conflictWindowMs: 0,
  },
  // Medplum 5.x as observed in production (/work/shared/production/medplum.md).
  medplum: {
    transactionLimits: true,
    atomicTransactions: true,
    idPolicy: 'uuid',
    putCreate: false,
    total: 'accurate',
    paging: 'offset',
    errorStyle: 'medplum',
    rateLimit: true,
    authRateLimit: 160,
    conflicts: true,
    conflictWindowMs: 50,
  },
  // HAPI FHIR JPA server with its default settings.
  hapi: {
    transactionLimits: false,
    atomicTransactions: true,
    idPolicy: 'hapi',
    putCreate: true,
    total: 'always',
    paging: 'getpages',
    errorStyle: 'hapi',
    rateLimit: false,
    authRateLimit: 0,
    conflicts: false,
    conflictWindowMs: 0,
  },
};

const CHOICES = {
  profile: Object.keys(PROFILES),
  'id-policy': ['any', 'uuid', 'hapi'],
  total: ['always', 'accurate'],
  paging: ['offset', 'getpages'],
  'error-style': ['lenient', 'medplum', 'hapi'],
};

const OPTIONS = {
  port: { type: 'string', default: '0' },
  'latency-ms': { type: 'string', default: process.env.FHIR_TEST_LATENCY_MS ?? '0' },
  'require-token': { type: 'string' },
  'admin-token': { type: 'string' },
  'smart-config': { type: 'string' },
  'default-count': { type: 'string', default: '20' },
  'max-count': { type: 'string', default: '1000' },
  validate: { type: 'boolean', default: true },
  verbose: { type: 'boolean', default: false },
  // The strict profile by default (DESIGN.md: production servers are stricter than a kind test
  // server; tests must meet their limits, not be spared them).
  profile: { type: 'string', default: 'medplum' },
  // Behaviours a profile switches (undefined = the profile's default).
  'transaction-limits': { type: 'boolean' },
  'max-strict-entries': { type: 'string', default: '8' },
  'max-updates': { type: 'string', default: '50' },
  'atomic-transactions': { type: 'boolean' },
  'id-policy': { type: 'string' },
  'put-create': { type: 'boolean' },
  total: { type: 'string' },
  paging: { type: 'string' },
  'error-style': { type: 'string' },
  'rate-limit': { type: 'boolean' },
  'rate-limit-points': { type: 'string', default: '50000' },
  'rate-limit-requests': { type: 'string', default: '60000' },
  'rate-limit-window-s': { type: 'string', default: '60' },
  'auth-rate-limit': { type: 'string' },
  conflicts: { type: 'boolean' },
  'conflict-window-ms': { type: 'string' },
  // Bulk Data export (bulk.mjs).
  'export-polls': { type: 'string', default: '1' },
  'export-retry-after-s': { type: 'string', default: '1' },
  'export-file-lines': { type: 'string', default: '1000' },
  // SMART authorization server.
  clients: { type: 'string' },
  'lax-client-auth': { type: 'boolean', default: false },
  'token-ttl-s': { type: 'string', default: '3600' },
};

function integer(name, text) {
  const n = Number(text);
  if (!Number.isFinite(n) || n < 0) {
    throw new Error(`--${name} must be a number >= 0, got ${JSON.stringify(text)}`);
  }
  return n;
}

function choice(name, value) {
  if (value !== undefined && !CHOICES[name].includes(value)) {
    throw new Error(`--${name} must be one of ${CHOICES[name].join(', ')}, got ${JSON.stringify(value)}`);
  }
  return value;
}

// Parses argv into one frozen configuration object; throws with a readable message on bad input.
export function loadConfig(argv = process.argv.slice(2)) {
  const { values: o } = parseArgs({ args: argv, options: OPTIONS, allowNegative: true });
  const profileName = choice('profile', o.profile);
  const p = PROFILES[profileName];
  const pick = (given, fallback) => (given === undefined ? fallback : given);
  return Object.freeze({
    profile: profileName,
    port: integer('port', o.port),
    latencyMs: integer('latency-ms', o['latency-ms']),
    requireToken: o['require-token'],
    adminToken: o['admin-token'],
    smartConfig: o['smart-config'] ? JSON.parse(readFileSync(o['smart-config'], 'utf8')) : undefined,
    defaultCount: integer('default-count', o['default-count']),
    maxCount: integer('max-count', o['max-count']),
    validate: o.validate,
    verbose: o.verbose,
    transactionLimits: pick(o['transaction-limits'], p.transactionLimits),
    maxStrictEntries: integer('max-strict-entries', o['max-strict-entries']),
    maxUpdates: integer('max-updates', o['max-updates']),
    atomicTransactions: pick(o['atomic-transactions'], p.atomicTransactions),
    idPolicy: pick(choice('id-policy', o['id-policy']), p.idPolicy),
    putCreate: pick(o['put-create'], p.putCreate),
    total: pick(choice('total', o.total), p.total),
    paging: pick(choice('paging', o.paging), p.paging),
    errorStyle: pick(choice('error-style', o['error-style']), p.errorStyle),
    rateLimit: pick(o['rate-limit'], p.rateLimit),
    rateLimitPoints: integer('rate-limit-points', o['rate-limit-points']),
    rateLimitRequests: integer('rate-limit-requests', o['rate-limit-requests']),
    rateLimitWindowMs: integer('rate-limit-window-s', o['rate-limit-window-s']) * 1000,
    authRateLimit: o['auth-rate-limit'] === undefined ? p.authRateLimit : integer('auth-rate-limit', o['auth-rate-limit']),
    conflicts: pick(o.conflicts, p.conflicts),
    conflictWindowMs:
      o['conflict-window-ms'] === undefined ? p.conflictWindowMs : integer('conflict-window-ms', o['conflict-window-ms']),
    exportPolls: integer('export-polls', o['export-polls']),
    exportRetryAfterS: integer('export-retry-after-s', o['export-retry-after-s']),
    exportFileLines: integer('export-file-lines', o['export-file-lines']),
    clients: o.clients ? JSON.parse(readFileSync(o.clients, 'utf8')) : undefined,
    laxClientAuth: o['lax-client-auth'],
    tokenTtlS: integer('token-ttl-s', o['token-ttl-s']),
  });
}
