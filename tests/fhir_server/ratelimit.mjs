// Fixed-window rate limiting per client, the way Medplum does it with rate-limiter-flexible:
// a window opens at a client's first request and lasts `windowMs`; every consume adds to the
// window's total (even a refused one, so `_consumedPoints` can exceed the limit), and a consume
// that takes the total over the limit is refused.

// What a FHIR interaction costs in "fhirInteractions" points. Medplum's FhirRateLimiter charges
// read 1, history 10, search 20, write 100; a conditional write also runs its search first.
export const COSTS = Object.freeze({
  read: 1,
  vread: 1,
  'history-instance': 10,
  'history-type': 10,
  'history-system': 10,
  'search-type': 20,
  'search-system': 20,
  operation: 20,
  create: 100,
  update: 100,
  patch: 100,
  delete: 100,
  conditional: 20, // added to a conditional create / update / patch / delete
});

export function interactionCost(interaction, conditional) {
  return (COSTS[interaction] ?? 0) + (conditional ? COSTS.conditional : 0);
}

export class FixedWindowLimiter {
  constructor(name, limit, windowMs, now = () => Date.now()) {
    this.name = name;
    this.limit = limit;
    this.windowMs = windowMs;
    this.now = now;
    this.windows = new Map(); // key -> { start, consumed }
  }

  window(key) {
    const now = this.now();
    let w = this.windows.get(key);
    let first = false;
    if (!w || now >= w.end) {
      w = { start: now, end: now + this.windowMs, consumed: 0 };
      this.windows.set(key, w);
      first = true;
    }
    return { w, first, now };
  }

  // Test tooling (/__admin/ratelimit): the client's window now has `remaining` points left and
  // ends in `resetMs`, as if its other work had spent the rest.
  set(key, remaining, resetMs) {
    const now = this.now();
    const w = { start: now, end: now + resetMs, consumed: Math.max(0, this.limit - remaining) };
    this.windows.set(key, w);
    return this.describe(w, now, false);
  }

  // Adds `points` to the client's window. Returns the limiter's view after the consume, in
  // rate-limiter-flexible's JSON shape plus `limit` (what Medplum puts in a 429 body).
  consume(key, points) {
    const { w, first, now } = this.window(key);
    w.consumed += points;
    return this.describe(w, now, first && points > 0);
  }

  // The current state without consuming anything.
  peek(key) {
    const { w, first, now } = this.window(key);
    return this.describe(w, now, first);
  }

  describe(w, now, isFirstInDuration) {
    return {
      allowed: w.consumed <= this.limit,
      spent: w.consumed >= this.limit,
      body: {
        _remainingPoints: Math.max(0, this.limit - w.consumed),
        _msBeforeNext: Math.max(0, w.end - now),
        _consumedPoints: w.consumed,
        _isFirstInDuration: isFirstInDuration,
        limit: this.limit,
      },
    };
  }

  // IETF RateLimit header field value, e.g. `"fhirInteractions";r=49800;t=60`.
  header(state) {
    return `"${this.name}";r=${state.body._remainingPoints};t=${Math.ceil(state.body._msBeforeNext / 1000)}`;
  }

  usage() {
    const now = this.now();
    const out = {};
    for (const [key, w] of this.windows) {
      if (now < w.end) {
        out[key] = { consumed: w.consumed, limit: this.limit, ms_before_next: w.end - now };
      }
    }
    return out;
  }

  reset() {
    this.windows.clear();
  }
}
