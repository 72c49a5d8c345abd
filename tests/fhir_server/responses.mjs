// HTTP answers as plain values ({status, headers, body}); server.mjs writes them out.

export const FHIR_JSON = 'application/fhir+json; charset=utf-8';

export function json(status, value, headers = {}) {
  return { status, headers: { 'Content-Type': 'application/json; charset=utf-8', ...headers }, body: JSON.stringify(value) };
}

export function fhir(status, resource, headers = {}) {
  return { status, headers: { 'Content-Type': FHIR_JSON, ...headers }, body: JSON.stringify(resource) };
}

// Pages carry a strict Content-Security-Policy: no scripts, no external resources.
export function html(status, text, headers = {}) {
  return {
    status,
    headers: {
      'Content-Type': 'text/html; charset=utf-8',
      'Content-Security-Policy': "default-src 'none'; style-src 'unsafe-inline'",
      'Cache-Control': 'no-store',
      ...headers,
    },
    body: text,
  };
}

export function redirect(location) {
  return { status: 302, headers: { Location: location, 'Cache-Control': 'no-store' }, body: '' };
}

export function withQuery(base, params) {
  const url = new URL(base);
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null) {
      url.searchParams.set(k, v);
    }
  }
  return url.toString();
}
