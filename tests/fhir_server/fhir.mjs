// The FHIR API: Medplum's FhirRouter over the TestRepository, with the production behaviours of
// the chosen profile applied to every request and to every entry of a batch/transaction Bundle:
// authentication and SMART scopes, rate limits, id rules, transaction limits, concurrent
// conditional-update conflicts, scripted faults, paging and error styles.
//
// Every router handler - for a top-level request and for each Bundle entry alike - runs through
// FhirService.hook (HookedRouter wraps what the router finds), so a rule written once applies
// inside batches exactly as Medplum's own repository checks do.
import { createHash, randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  OperationOutcomeError,
  badRequest,
  created,
  forbidden,
  getResourceTypes,
  getSearchParameters,
  isResourceType,
  isUUID,
  normalizeOperationOutcome,
  notFound,
  parseSearchRequest,
  unauthorized,
} from '@medplum/core';
import { FhirRouter } from '@medplum/fhir-router';
import {
  fail,
  genericOutcome,
  hapiOutcome,
  isSuccess,
  statusOf,
  toHapiStyle,
  tooManyRequestsOutcome,
  withStatus,
} from './outcomes.mjs';
import { FixedWindowLimiter, interactionCost } from './ratelimit.mjs';
import { SUPPORTED_OPERATORS } from './repository.mjs';
import { fhir, json } from './responses.mjs';
import { Grant } from './scopes.mjs';

export const BASE_PATH = '/fhir/R4';
export const ADMIN = Object.freeze({ kind: 'admin', key: 'admin', admin: true });

// A FhirRouter whose handlers all pass through one hook (see FhirService.hook).
class HookedRouter extends FhirRouter {
  constructor(hook) {
    super();
    this.hook = hook;
  }

  find(method, url) {
    const result = super.find(method, url);
    if (!result) {
      return result;
    }
    const { handler } = result;
    const interaction = result.data?.interaction;
    return { ...result, handler: (req, repo, router, options) => this.hook(req, interaction, handler, repo, router, options) };
  }
}

// The URL of a request as the client wrote it, relative to the FHIR base. Bundle entries reach
// handlers with the query split off into req.query.
function requestUrl(req) {
  if (req.url.includes('?') || !req.query || !Object.keys(req.query).length) {
    return req.url.replace(/^\//, '');
  }
  const params = new URLSearchParams();
  for (const [k, v] of Object.entries(req.query)) {
    for (const value of [v].flat()) params.append(k, value);
  }
  return `${req.url.replace(/^\//, '')}?${params}`;
}

function isConditional(interaction, req) {
  if (interaction === 'create') {
    return Boolean(req.headers?.['if-none-exist']);
  }
  return ['update', 'patch', 'delete'].includes(interaction) && !req.params?.id;
}

function conditionKey(resourceType, query) {
  const pairs = Object.entries(query ?? {})
    .flatMap(([k, v]) => [v].flat().map((x) => [k, x]))
    .sort(([a, x], [b, y]) => (a === b ? (x < y ? -1 : 1) : a < b ? -1 : 1));
  return `${resourceType}?${new URLSearchParams(pairs)}`;
}

// HAPI's paging cache: `_getpages=<id>` names a search the server remembers.
class PageCache {
  constructor(max = 10_000) {
    this.max = max;
    this.searches = new Map();
  }

  remember(path, query) {
    const params = new URLSearchParams(query);
    params.delete('_offset');
    params.delete('_count');
    const id = randomUUID();
    this.searches.set(id, { path, query: params.toString() });
    if (this.searches.size > this.max) {
      this.searches.delete(this.searches.keys().next().value);
    }
    return id;
  }

  get(id) {
    return this.searches.get(id);
  }

  clear() {
    this.searches.clear();
  }
}

export class FhirService {
  constructor(config, { repo, stats, faults, auth, serialized }) {
    this.config = config;
    this.repo = repo;
    this.stats = stats;
    this.faults = faults;
    this.auth = auth;
    this.serialized = serialized;
    this.router = new HookedRouter((...args) => this.hook(...args));
    this.pages = new PageCache();
    this.requestLimiter = config.rateLimit
      ? new FixedWindowLimiter('requests', config.rateLimitRequests, config.rateLimitWindowMs)
      : undefined;
    this.pointLimiter = config.rateLimit
      ? new FixedWindowLimiter('fhirInteractions', config.rateLimitPoints, config.rateLimitWindowMs)
      : undefined;
    this.conflictHolders = new Map(); // condition key -> Set of request contexts that created it
  }

  reset({ data }) {
    this.requestLimiter?.reset();
    this.pointLimiter?.reset();
    this.pages.clear();
    if (data) {
      this.repo.clear();
    }
  }

  // --- who is calling -------------------------------------------------------------------------

  // The principal of a request, or null when it must be refused with 401.
  authenticate(authorization, address) {
    const bearer = /^Bearer\s+(\S+)\s*$/i.exec(authorization ?? '')?.[1];
    if (this.config.adminToken && bearer === this.config.adminToken) {
      return ADMIN;
    }
    if (this.config.requireToken !== undefined && authorization === `Bearer ${this.config.requireToken}`) {
      return { kind: 'static', key: 'static-token' };
    }
    if (bearer && this.auth?.enabled) {
      const rec = this.auth.lookup(bearer);
      if (rec === 'inactive') {
        return null;
      }
      if (rec) {
        rec.grant ??= new Grant(rec.scope);
        return { kind: 'smart', key: `client:${rec.clientId}`, clientId: rec.clientId, grant: rec.grant };
      }
    }
    if (this.config.requireToken !== undefined || this.auth?.enabled) {
      return null;
    }
    const who = bearer ? `token:${createHash('sha256').update(bearer).digest('hex').slice(0, 12)}` : `address:${address}`;
    return { kind: 'anonymous', key: who };
  }

  // --- the hook every handler runs through ----------------------------------------------------

  async hook(req, interaction, handler, repo, router, options) {
    const ctx = this.current;
    if (interaction === 'batch' || !ctx) {
      return handler(req, repo, router, options);
    }
    const inBatch = Boolean(options?.batch);
    const resourceType = req.params?.resourceType;
    const conditional = isConditional(interaction, req);
    this.stats.interaction(interaction, resourceType, inBatch);
    const admin = ctx.principal.admin;

    let fault;
    if (inBatch && !admin) {
      fault = this.faults.take({ method: req.method, url: requestUrl(req), interaction, inBatch: true });
      if (fault) {
        this.stats.faults_fired++;
        if (fault.when === 'before') {
          await this.entryFault(ctx, fault, resourceType);
        }
      }
    }
    // MemoryRepository answers 200 to an update that created the resource; servers answer 201.
    const creatingPut = interaction === 'update' && req.params?.id && !this.repo.exists(resourceType, req.params.id);
    if (!admin) {
      this.charge(ctx, interactionCost(interaction, conditional), inBatch);
      this.checkScope(ctx, interaction, resourceType, inBatch);
      this.checkIds(interaction, req);
      if (this.config.conflicts && interaction === 'update' && conditional) {
        this.checkConflict(ctx, resourceType, req.query);
      }
    }

    let result;
    try {
      result = await handler(req, repo, router, options);
    } catch (err) {
      throw await this.restyleError(err, interaction, req);
    }
    if (!isSuccess(result[0])) {
      result = [await this.restyleOutcome(result[0], interaction, req), ...result.slice(1)];
    } else if (creatingPut && result[0].id === 'ok') {
      result = [created, ...result.slice(1)];
    }

    if (!admin && this.config.conflicts && interaction === 'update' && conditional && result[0].id === 'created') {
      this.holdCondition(ctx, conditionKey(resourceType, req.query));
    }
    if (ctx.principal.grant && result[1]?.resourceType === 'Bundle' && result[1].type === 'searchset') {
      // Included resources of types the token may not read are left out, not refused.
      result[1].entry = result[1].entry?.filter(
        (e) => e.search?.mode !== 'include' || ctx.principal.grant.canRead(e.resource?.resourceType)
      );
    }
    if (fault?.when === 'after') {
      await this.entryFault(ctx, fault, resourceType);
    }
    return result;
  }

  // SMART scopes, checked for requests made with a token this server issued.
  checkScope(ctx, interaction, resourceType, inBatch) {
    const grant = ctx.principal.grant;
    if (!grant || grant.allows(interaction, resourceType)) {
      return;
    }
    this.stats.scopeRefused({
      client_id: ctx.principal.clientId,
      interaction,
      resource_type: resourceType ?? null,
      in_batch: inBatch,
      scope: grant.scope,
    });
    throw new OperationOutcomeError(forbidden);
  }

  // Ids of PUT Type/id: Medplum wants UUIDs and refuses to create by PUT; HAPI creates by PUT
  // only with an id holding a non-digit (numbers are its own). The admin token bypasses this, so
  // fixtures with readable ids can be seeded.
  checkIds(interaction, req) {
    if (interaction !== 'update' || !req.params?.id) {
      return;
    }
    const { resourceType, id } = req.params;
    if (this.config.idPolicy === 'uuid' && !isUUID(id)) {
      throw fail(badRequest('Invalid id'));
    }
    if (this.repo.exists(resourceType, id)) {
      return;
    }
    if (this.config.idPolicy === 'hapi' && /^\d+$/.test(id)) {
      throw fail(
        hapiOutcome(
          400,
          `HAPI-0960: Can not create resource with ID[${id}], no resource with this ID exists and clients may only ` +
            'assign IDs which contain at least one non-numeric character'
        )
      );
    }
    if (!this.config.putCreate) {
      throw new OperationOutcomeError(notFound);
    }
  }

  // Medplum under two writers of the same conditional update: while the first one's create is
  // still in flight (its response not yet sent), the second fails the way Medplum's own
  // serialisation retry surfaces it. Once the first has answered, a retry succeeds.
  checkConflict(ctx, resourceType, query) {
    const holders = this.conflictHolders.get(conditionKey(resourceType, query));
    if (holders && [...holders].some((other) => other !== ctx)) {
      this.stats.conflicts++;
      throw fail(badRequest('Resource ID did not match resolved ID', `${resourceType}.id`));
    }
  }

  holdCondition(ctx, key) {
    let holders = this.conflictHolders.get(key);
    if (!holders) {
      holders = new Set();
      this.conflictHolders.set(key, holders);
    }
    holders.add(ctx);
    ctx.heldKeys.add(key);
    ctx.respondNotBefore = Math.max(ctx.respondNotBefore, Date.now() + this.config.conflictWindowMs);
  }

  // Called when a request's response has been sent (or the connection dropped).
  release(ctx) {
    for (const key of ctx.heldKeys) {
      const holders = this.conflictHolders.get(key);
      holders?.delete(ctx);
      if (holders?.size === 0) {
        this.conflictHolders.delete(key);
      }
    }
    ctx.heldKeys.clear();
  }

  // Charges the client's "fhirInteractions" budget; refuses (429) once it is spent.
  charge(ctx, cost, inBatch) {
    if (!this.pointLimiter || cost === 0) {
      return;
    }
    const state = this.pointLimiter.consume(ctx.principal.key, cost);
    this.stats.charge(ctx.principal.key, cost);
    if (!state.allowed) {
      ctx.rateLimited = state.body;
      this.stats.rate_limited[inBatch ? 'entries' : 'requests']++;
      throw new OperationOutcomeError(tooManyRequestsOutcome(state.body));
    }
  }

  async entryFault(ctx, fault, resourceType) {
    if (fault.delayMs) {
      await sleep(fault.delayMs);
    }
    if (fault.action === 'delay') {
      return;
    }
    if (fault.action === 'drop') {
      ctx.drop = true;
      return;
    }
    throw new OperationOutcomeError(this.faultOutcome(fault, resourceType));
  }

  faultOutcome(fault, resourceType) {
    if (fault.body?.resourceType === 'OperationOutcome') {
      return withStatus(structuredClone(fault.body), fault.status);
    }
    switch (fault.preset) {
      case 'id-mismatch':
        return withStatus(badRequest('Resource ID did not match resolved ID', `${resourceType ?? 'Resource'}.id`), fault.status);
      case 'rate-limit':
        // As Medplum when the budget runs out mid-batch: this entry and all after it answer 429.
        return tooManyRequestsOutcome(this.spentBody());
      default:
        return withStatus(structuredClone(genericOutcome(fault.status)), fault.status);
    }
  }

  spentBody() {
    const limit = this.config.rateLimitPoints;
    return { _remainingPoints: 0, _msBeforeNext: this.config.rateLimitWindowMs, _consumedPoints: limit + 1, _isFirstInDuration: false, limit };
  }

  // --- error styles ---------------------------------------------------------------------------

  async restyleError(err, interaction, req) {
    const outcome = normalizeOperationOutcome(err);
    const restyled = await this.restyleOutcome(outcome, interaction, req);
    return restyled === outcome && err instanceof OperationOutcomeError ? err : new OperationOutcomeError(restyled);
  }

  // HAPI's messages for the errors HAPI clients meet most; everything else is reshaped at output.
  async restyleOutcome(outcome, interaction, req) {
    if (this.config.errorStyle !== 'hapi') {
      return outcome;
    }
    const { resourceType, id } = req.params ?? {};
    if (outcome.id === 'not-found' && id && ['read', 'vread', 'history-instance', 'update', 'patch', 'delete'].includes(interaction)) {
      return hapiOutcome(404, `HAPI-2001: Resource ${resourceType}/${id} is not known`);
    }
    if (outcome.id === 'multiple-matches' && interaction === 'create' && req.headers?.['if-none-exist']) {
      const criteria = [req.headers['if-none-exist']].flat()[0];
      const matches = await this.repo.searchResources(parseSearchRequest(`${resourceType}?${criteria}&_count=1000`));
      return hapiOutcome(
        412,
        `HAPI-0958: Failed to CREATE resource with match URL "${resourceType}?${criteria}" because this search matched ${matches.length} resources`
      );
    }
    return outcome;
  }

  outputStyle(outcome) {
    return this.config.errorStyle === 'hapi' ? toHapiStyle(outcome) : outcome;
  }

  // --- one FHIR request -----------------------------------------------------------------------

  // `req` is the Node request; `bodyText` its body. Returns a response value (responses.mjs).
  async handle(req, ctx, url, bodyText, baseUrl, parseBody) {
    const method = req.method ?? 'GET';
    let relPath = url.pathname.slice(BASE_PATH.length).replace(/^\/+|\/+$/g, '');
    if (relPath === 'metadata' && method === 'GET') {
      return fhir(200, this.capabilityStatement(baseUrl));
    }
    const principal = this.authenticate(req.headers.authorization, req.socket.remoteAddress);
    if (!principal) {
      return fhir(401, this.outputStyle(unauthorized));
    }
    ctx.principal = principal;
    const limited = this.checkRequestBudget(ctx);
    if (limited) {
      return limited;
    }

    let search = url.search;
    let paging;
    if (relPath === '' && method === 'GET' && url.searchParams.has('_getpages')) {
      const id = url.searchParams.get('_getpages');
      const stored = this.pages.get(id);
      if (!stored) {
        return this.withRateHeaders(ctx, fhir(410, hapiOutcome(410, `HAPI-0417: Search ID "${id}" does not exist and may have expired`)));
      }
      const params = new URLSearchParams(stored.query);
      params.set('_offset', url.searchParams.get('_getpagesoffset') ?? '0');
      params.set('_count', url.searchParams.get('_count') ?? String(this.config.defaultCount));
      relPath = stored.path;
      search = `?${params}`;
      paging = { searchId: id };
    }
    const relUrl = relPath + search;

    let fault;
    if (!principal.admin) {
      const interaction = this.interactionOf(method, relUrl);
      fault = this.faults.take({ method, url: relUrl, interaction, inBatch: false });
      if (fault) {
        this.stats.faults_fired++;
        if (fault.when === 'before') {
          const answer = await this.topLevelFault(ctx, fault, relPath);
          if (answer) {
            return this.withRateHeaders(ctx, answer);
          }
        }
      }
    }

    const first = relPath.split('/')[0];
    if (first !== '' && !first.startsWith('$') && !isResourceType(first)) {
      const outcome =
        this.config.errorStyle === 'hapi'
          ? hapiOutcome(404, `HAPI-0302: Unknown resource type '${first}' - Server knows how to handle: [${getResourceTypes().join(', ')}]`)
          : { ...notFound, issue: [{ ...notFound.issue[0], diagnostics: `Unknown resource type: ${first}` }] };
      return this.withRateHeaders(ctx, fhir(404, outcome));
    }
    const body = parseBody(bodyText, req.headers['content-type']);
    const [outcome, resource] = await this.serialized(() => this.processAs(ctx, method, relUrl, body, req.headers));
    this.decorate(resource, baseUrl, relUrl, body, paging);
    const status = statusOf(outcome);
    let answer;
    if (status === 429 && ctx.rateLimited) {
      answer = json(429, ctx.rateLimited); // Medplum's body: the limiter's own JSON, no Retry-After
    } else {
      answer = this.fhirAnswer(status, resource ?? this.outputStyle(outcome), baseUrl);
    }
    if (fault?.when === 'after') {
      answer = (await this.topLevelFault(ctx, fault, relPath)) ?? answer;
    }
    return this.withRateHeaders(ctx, answer);
  }

  interactionOf(method, relUrl) {
    try {
      return FhirRouter.prototype.find.call(this.router, method, relUrl)?.data?.interaction;
    } catch {
      return undefined;
    }
  }

  // The "requests" budget (one point per HTTP request) and an already spent points budget are
  // refused before any work, like Medplum's in-memory block.
  checkRequestBudget(ctx) {
    if (!this.requestLimiter || ctx.principal.admin) {
      return undefined;
    }
    const requests = this.requestLimiter.consume(ctx.principal.key, 1);
    if (!requests.allowed) {
      this.stats.rate_limited.requests++;
      return this.withRateHeaders(ctx, json(429, requests.body));
    }
    const points = this.pointLimiter.peek(ctx.principal.key);
    if (points.spent && points.body._consumedPoints > this.pointLimiter.limit) {
      this.stats.rate_limited.requests++;
      return this.withRateHeaders(ctx, json(429, { ...points.body, _isFirstInDuration: false }));
    }
    return undefined;
  }

  withRateHeaders(ctx, answer) {
    if (this.requestLimiter && ctx.principal && !ctx.principal.admin) {
      const key = ctx.principal.key;
      answer.headers.RateLimit = [
        this.requestLimiter.header(this.requestLimiter.peek(key)),
        this.pointLimiter.header(this.pointLimiter.peek(key)),
      ];
    }
    return answer;
  }

  async topLevelFault(ctx, fault, relPath) {
    if (fault.delayMs) {
      await sleep(fault.delayMs);
    }
    if (fault.action === 'delay') {
      return undefined;
    }
    if (fault.action === 'drop') {
      ctx.drop = true;
      return { status: 0, headers: {}, body: '' };
    }
    const headers = { ...fault.headers };
    if (fault.body !== undefined) {
      if (typeof fault.body === 'string') {
        return { status: fault.status, headers: { 'Content-Type': 'text/plain; charset=utf-8', ...headers }, body: fault.body };
      }
      return fault.body?.resourceType ? fhir(fault.status, fault.body, headers) : json(fault.status, fault.body, headers);
    }
    if (fault.preset === 'rate-limit') {
      return json(429, this.spentBody(), headers);
    }
    const outcome = fault.preset === 'id-mismatch' ? this.faultOutcome(fault, relPath.split('/')[0] || undefined) : genericOutcome(fault.status);
    return fhir(fault.status, this.outputStyle(outcome), headers);
  }

  fhirAnswer(status, resource, baseUrl) {
    const headers = {};
    const meta = resource?.meta;
    if (resource?.id && meta?.versionId && resource.resourceType !== 'OperationOutcome') {
      headers.ETag = `W/"${meta.versionId}"`;
      if (meta.lastUpdated) {
        headers['Last-Modified'] = new Date(meta.lastUpdated).toUTCString();
      }
      if (status === 201) {
        headers.Location = `${baseUrl}/${resource.resourceType}/${resource.id}/_history/${meta.versionId}`;
      }
    }
    return fhir(status, resource, headers);
  }

  // The request whose repository work is running. Repository work is serialised (server.mjs),
  // so one field is enough to tell the hook whose request an entry belongs to (AsyncLocalStorage
  // would do the same but turns on promise hooks, which slowed every request by a third).
  async processAs(ctx, ...args) {
    this.current = ctx;
    try {
      return await this.process(...args, ctx);
    } finally {
      this.current = undefined;
    }
  }

  // Runs one request through the router. Transactions are checked against the profile's limits
  // and, when atomic, rolled back on the first failed entry.
  async process(method, relUrl, body, headers, ctx) {
    const request = (url, b) => ({ method, url, pathname: '', body: b, params: {}, query: {}, headers, config: {} });
    const bundlePost = method === 'POST' && relUrl.split('?')[0] === '' && body?.resourceType === 'Bundle';
    if (bundlePost) {
      this.stats.bundle(body.type);
    }
    if (!bundlePost || body.type !== 'transaction') {
      return this.router.handleRequest(request(relUrl, body), this.repo);
    }
    if (this.config.transactionLimits && !ctx.principal.admin) {
      const refused = this.transactionLimitOutcome(body);
      if (refused) {
        return [refused];
      }
    }
    // The transaction runs with batch mechanics (config.transactions unset): Medplum's own
    // transaction mode cannot roll back in MemoryRepository, and it would refuse large
    // conditional transactions even when --no-transaction-limits asks otherwise.
    if (!this.config.atomicTransactions) {
      return this.router.handleRequest(request(relUrl, body), this.repo);
    }
    const snap = this.repo.snapshot();
    const [outcome, result] = await this.router.handleRequest(request(relUrl, body), this.repo);
    // An entry failed when its outcome says so (statuses set by withStatus included) or, lacking
    // an outcome, when its status is not 2xx.
    const failed = result?.entry?.find((e) =>
      e?.response?.outcome ? !isSuccess(e.response.outcome) : !String(e?.response?.status).startsWith('2')
    );
    if (!isSuccess(outcome) || failed) {
      this.repo.restore(snap);
      return [failed?.response?.outcome ?? (isSuccess(outcome) ? badRequest('Transaction failed') : outcome)];
    }
    return [outcome, result];
  }

  // Medplum's limits (fhir-router batch.ts): a transaction with any conditional create, update or
  // delete needs strict isolation and may hold at most 8 entries; at most 50 updates (PUT) in all.
  transactionLimitOutcome(bundle) {
    const entries = bundle.entry ?? [];
    let updates = 0;
    let strict = false;
    for (const entry of entries) {
      const method = entry?.request?.method;
      const url = entry?.request?.url ?? '';
      const interaction = method ? this.interactionOf(method, url) : undefined;
      if (interaction === 'create' && entry.request.ifNoneExist) {
        strict = true;
      } else if (interaction === 'update') {
        strict ||= url.includes('?');
        updates++;
      } else if (interaction === 'delete' && url.includes('?')) {
        strict = true;
      }
    }
    if (updates > this.config.maxUpdates) {
      return badRequest('Transaction contains more update operations than allowed');
    }
    if (strict && entries.length > this.config.maxStrictEntries) {
      return badRequest('Transaction requires strict isolation but has too many entries');
    }
    return undefined;
  }

  // --- response post-processing ---------------------------------------------------------------

  decorate(resource, baseUrl, relUrl, requestBody, paging) {
    if (resource?.resourceType !== 'Bundle') {
      return;
    }
    if (resource.type === 'searchset') {
      this.decorateSearchset(resource, baseUrl, relUrl, paging);
    } else if (resource.type === 'batch-response' || resource.type === 'transaction-response') {
      // Response entries are in request order, so each searchset's query is the request entry's url.
      (resource.entry ?? []).forEach((entry, i) => {
        if (entry?.response?.outcome) {
          const outcome = entry.response.outcome;
          entry.response.status = String(statusOf(outcome));
          entry.response.outcome = this.outputStyle(outcome);
        }
        this.stats.entryStatus(entry?.response?.status);
        const url = requestBody?.entry?.[i]?.request?.url;
        if (entry?.resource?.resourceType === 'Bundle' && url) {
          this.decorate(entry.resource, baseUrl, url.replace(/^\//, ''), undefined, undefined);
        }
      });
    }
  }

  // The router produces searchsets without Bundle.link or entry.fullUrl. Add them: Medplum-style
  // self/first/next/previous from _count/_offset (every other query parameter kept as sent), or
  // HAPI-style `{base}?_getpages=...` links the server remembers. Bundle.total is removed unless
  // the profile always sends it or the client asked (_total=accurate|estimate, _summary=count).
  decorateSearchset(bundle, baseUrl, relUrl, paging) {
    const [path, query = ''] = relUrl.split('?');
    const params = new URLSearchParams(query);
    const count = this.repo.effectiveCount(params.get('_count') ?? undefined);
    const offset = Math.max(0, Number.parseInt(params.get('_offset') ?? '0', 10) || 0);
    const matches = (bundle.entry ?? []).filter((e) => e.search?.mode !== 'include').length;
    // total is always computed by MemoryRepository; fall back to "a full page means maybe more".
    const more = bundle.total !== undefined ? offset + matches < bundle.total : matches >= count;
    if (this.config.paging === 'getpages') {
      const searchId = paging?.searchId ?? (count > 0 && matches > 0 && more ? this.pages.remember(path, query) : undefined);
      const page = (o) => `${baseUrl}?_getpages=${searchId}&_getpagesoffset=${o}&_count=${count}&_pretty=true&_bundletype=searchset`;
      bundle.id = randomUUID();
      bundle.meta = { lastUpdated: new Date().toISOString() };
      bundle.link = [{ relation: 'self', url: paging ? page(offset) : `${baseUrl}/${relUrl}` }];
      if (searchId && count > 0 && matches > 0 && more) {
        bundle.link.push({ relation: 'next', url: page(offset + count) });
      }
      if (searchId && count > 0 && offset > 0) {
        bundle.link.push({ relation: 'previous', url: page(Math.max(0, offset - count)) });
      }
    } else {
      const link = (relation, newOffset) => {
        const p = new URLSearchParams(query);
        p.set('_count', String(count));
        p.set('_offset', String(newOffset));
        return { relation, url: `${baseUrl}/${path}?${p}` };
      };
      bundle.link = [{ relation: 'self', url: `${baseUrl}/${relUrl}` }, link('first', 0)];
      if (count > 0 && matches > 0 && more) {
        bundle.link.push(link('next', offset + count));
      }
      if (count > 0 && offset > 0) {
        bundle.link.push(link('previous', Math.max(0, offset - count)));
      }
    }
    const asked = ['accurate', 'estimate'].includes(params.get('_total')) || params.get('_summary') === 'count';
    if (this.config.total === 'accurate' && !asked) {
      delete bundle.total;
    }
    for (const entry of bundle.entry ?? []) {
      if (entry.resource?.id && !entry.fullUrl) {
        entry.fullUrl = `${baseUrl}/${entry.resource.resourceType}/${entry.resource.id}`;
      }
    }
  }

  capabilityStatement(baseUrl) {
    // Advertise only standard parameters this server can match (not Medplum's own additions).
    const supported = (p) =>
      Boolean(SUPPORTED_OPERATORS[p.type]) && !p.url?.startsWith('https://medplum.com/') && !['_compartment', '_project'].includes(p.code);
    const interactions = ['read', 'vread', 'update', 'patch', 'delete', 'history-instance', 'create', 'search-type'];
    const root = baseUrl.slice(0, -BASE_PATH.length);
    const smart = this.auth?.enabled || this.config.smartConfig;
    return {
      resourceType: 'CapabilityStatement',
      status: 'active',
      date: new Date().toISOString(),
      kind: 'instance',
      software: { name: `previsit-test-fhir-server (Medplum fhir-router, in memory; profile ${this.config.profile})` },
      implementation: { description: 'In-memory FHIR R4 test server', url: baseUrl },
      fhirVersion: '4.0.1',
      format: ['application/fhir+json', 'json'],
      rest: [
        {
          mode: 'server',
          ...(smart
            ? {
                security: {
                  service: [
                    { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/restful-security-service', code: 'SMART-on-FHIR' }] },
                  ],
                  ...(this.auth?.enabled
                    ? {
                        extension: [
                          {
                            url: 'http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris',
                            extension: [
                              { url: 'authorize', valueUri: `${root}/oauth2/authorize` },
                              { url: 'token', valueUri: `${root}/oauth2/token` },
                              { url: 'introspect', valueUri: `${root}/oauth2/introspect` },
                            ],
                          },
                        ],
                      }
                    : {}),
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

  // Loads a Bundle (batch or transaction) as the admin: no limits, scopes, faults or id rules.
  async load(bundle) {
    const ctx = newRequestContext();
    ctx.principal = ADMIN;
    const [outcome, resource] = await this.serialized(() => this.processAs(ctx, 'POST', '', bundle, {}));
    return [statusOf(outcome), resource ?? outcome];
  }
}

export function newRequestContext() {
  return { principal: undefined, rateLimited: undefined, heldKeys: new Set(), respondNotBefore: 0, drop: false };
}
