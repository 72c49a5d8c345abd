// The test-only admin API under /__admin (outside the FHIR base, loopback callers only):
//   GET    /__admin/stats          counters (see faults.mjs Stats) plus rate-limit usage and the
//                                  Bulk Data export jobs (bulk.jobs)
//   POST   /__admin/reset          {"data": false, "tokens": false}: forget faults, counters,
//                                  rate-limit windows (FHIR and /oauth2), paging searches,
//                                  pending authorizations and export jobs; with data also every
//                                  stored resource, with tokens every token, code and launch
//   GET    /__admin/faults         scripted faults and how often each fired
//   POST   /__admin/faults         one fault spec or a list (faults.mjs) -> {"ids": [...]}
//   DELETE /__admin/faults         remove all faults
//   POST   /__admin/preauthorize   {"user", "patient", "client_id", "deny"}: the next
//                                  /oauth2/authorize (for that client) completes without the page
//   POST   /__admin/load           a batch/transaction Bundle stored as the admin (no limits,
//                                  scopes, faults or id rules; client ids kept by PUT)
//   POST   /__admin/ratelimit      {"key": "client:ID" | "address:IP", "remaining": N,
//                                  "reset_s": S}: that client's "fhirInteractions" window now has
//                                  N points left and resets in S seconds (default: the window) -
//                                  a quota nearly spent by the client's other work
//   GET    /__admin/config         the effective configuration
import { FaultSpecError } from './faults.mjs';
import { ClientRegistrationError } from './smart.mjs';
import { fhir, json } from './responses.mjs';

const LOOPBACK = new Set(['127.0.0.1', '::1', '::ffff:127.0.0.1']);

export class AdminApi {
  constructor(config, { stats, faults, fhirService, auth, authLimiter, bulk }) {
    this.config = config;
    this.stats = stats;
    this.faults = faults;
    this.fhirService = fhirService;
    this.auth = auth;
    this.authLimiter = authLimiter;
    this.bulk = bulk;
  }

  async handle(req, url, bodyText) {
    if (!LOOPBACK.has(req.socket.remoteAddress)) {
      return json(403, { error: 'the admin API answers loopback callers only' });
    }
    const path = url.pathname.replace(/\/+$/, '');
    const method = req.method;
    let body;
    try {
      body = bodyText ? JSON.parse(bodyText) : undefined;
    } catch (err) {
      return json(400, { error: `body is not JSON: ${err.message}` });
    }
    try {
      if (path === '/__admin/stats' && method === 'GET') {
        return json(200, {
          ...this.stats.toJSON(),
          rate_limits: {
            requests: this.fhirService.requestLimiter?.usage() ?? {},
            fhirInteractions: this.fhirService.pointLimiter?.usage() ?? {},
          },
          bulk: this.bulk?.toJSON() ?? { jobs: [] },
        });
      }
      if (path === '/__admin/reset' && method === 'POST') {
        const options = { data: Boolean(body?.data), tokens: Boolean(body?.tokens) };
        this.faults.clear();
        this.stats.reset();
        this.fhirService.reset(options);
        this.auth?.reset(options);
        this.authLimiter?.reset();
        this.bulk?.reset();
        return json(200, { reset: options });
      }
      if (path === '/__admin/faults' && method === 'GET') {
        return json(200, { faults: this.faults.list() });
      }
      if (path === '/__admin/faults' && method === 'POST') {
        return json(201, { ids: this.faults.add(body) });
      }
      if (path === '/__admin/faults' && method === 'DELETE') {
        this.faults.clear();
        return json(200, { faults: [] });
      }
      if (path === '/__admin/preauthorize' && method === 'POST') {
        if (!this.auth?.enabled) {
          return json(409, { error: 'no SMART clients are configured (--clients)' });
        }
        this.auth.preauthorize(body ?? {});
        return json(201, { queued: this.auth.preauthorizations.length });
      }
      if (path === '/__admin/load' && method === 'POST') {
        if (body?.resourceType !== 'Bundle' || !['batch', 'transaction'].includes(body.type)) {
          return json(400, { error: 'load takes a batch or transaction Bundle' });
        }
        const [status, resource] = await this.fhirService.load(body);
        return fhir(status, resource);
      }
      if (path === '/__admin/ratelimit' && method === 'POST') {
        const limiter = this.fhirService.pointLimiter;
        if (!limiter) {
          return json(409, { error: 'rate limits are off (--rate-limit)' });
        }
        if (typeof body?.key !== 'string' || !Number.isFinite(body?.remaining) || body.remaining < 0) {
          return json(400, { error: 'ratelimit takes {"key": "client:ID", "remaining": N, "reset_s": S}' });
        }
        const resetMs = Number.isFinite(body.reset_s) ? body.reset_s * 1000 : limiter.windowMs;
        return json(200, limiter.set(body.key, body.remaining, resetMs).body);
      }
      if (path === '/__admin/config' && method === 'GET') {
        const { clients, smartConfig, requireToken, adminToken, ...rest } = this.config;
        return json(200, { ...rest, clients: Boolean(clients), smartConfig: Boolean(smartConfig), requireToken: requireToken !== undefined, adminToken: adminToken !== undefined });
      }
    } catch (err) {
      if (err instanceof FaultSpecError || err instanceof ClientRegistrationError) {
        return json(400, { error: err.message });
      }
      throw err;
    }
    return json(404, { error: `${method} ${url.pathname} is not part of the admin API` });
  }
}
