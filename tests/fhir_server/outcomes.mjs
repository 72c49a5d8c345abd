// OperationOutcome bodies in each server's own words, and HTTP statuses Medplum's getStatus()
// cannot express (it derives the status from a few well-known outcome ids; HAPI's bodies and
// scripted faults carry none of them).
import { OperationOutcomeError, badRequest, getStatus, isOk } from '@medplum/core';

const STATUS = new WeakMap();

// Attaches an explicit HTTP status to an outcome object (kept by identity through the router and
// the batch processor, which store the very same object in entry.response.outcome).
export function withStatus(outcome, status) {
  STATUS.set(outcome, status);
  return outcome;
}

export function statusOf(outcome) {
  return STATUS.get(outcome) ?? getStatus(outcome);
}

export function isSuccess(outcome) {
  return STATUS.has(outcome) ? STATUS.get(outcome) < 400 : isOk(outcome);
}

export function fail(outcome, status) {
  return new OperationOutcomeError(status === undefined ? outcome : withStatus(outcome, status));
}

// HAPI's OperationOutcome: the message (with its HAPI-nnnn code) in issue.diagnostics.
export function hapiOutcome(status, diagnostics, code = 'processing') {
  return withStatus({ resourceType: 'OperationOutcome', issue: [{ severity: 'error', code, diagnostics }] }, status);
}

// Rewrites any error outcome into HAPI's shape, keeping its status. Messages we know HAPI's code
// for are produced as HAPI outcomes where they arise; this is the fallback for the rest.
export function toHapiStyle(outcome) {
  if (!outcome || outcome.resourceType !== 'OperationOutcome' || isSuccess(outcome)) {
    return outcome;
  }
  if (outcome.issue?.every((i) => i.diagnostics && !i.details)) {
    return outcome;
  }
  const status = statusOf(outcome);
  const issue = (outcome.issue ?? []).map((i) => ({
    severity: i.severity ?? 'error',
    code: i.code === 'invalid' ? 'processing' : (i.code ?? 'processing'),
    diagnostics: [i.details?.text, i.diagnostics].filter(Boolean).join(': ') || 'Error',
  }));
  return withStatus({ resourceType: 'OperationOutcome', issue }, status);
}

export function unknownSearchParameter(style, resourceType, code, validCodes) {
  switch (style) {
    case 'medplum':
      return badRequest(`Unknown search parameter: ${code}`);
    case 'hapi':
      return hapiOutcome(
        400,
        `HAPI-0524: Unknown search parameter "${code}" for resource type "${resourceType}". ` +
          `Valid search parameters for this search are: [${[...validCodes].sort().join(', ')}]`
      );
    default:
      return badRequest(`Unknown search parameter for ${resourceType}: ${code}`);
  }
}

// Medplum's own outcome when a rate limit is spent inside a batch (the top-level response body is
// the limiter's JSON instead, see ratelimit.mjs).
export function tooManyRequestsOutcome(details) {
  return withStatus(
    {
      resourceType: 'OperationOutcome',
      id: 'too-many-requests',
      issue: [
        {
          severity: 'error',
          code: 'throttled',
          details: { text: 'Too Many Requests' },
          diagnostics: JSON.stringify(details),
        },
      ],
    },
    429
  );
}

const GENERIC = {
  400: ['invalid', 'Bad Request'],
  401: ['login', 'Unauthorized'],
  403: ['forbidden', 'Forbidden'],
  404: ['not-found', 'Not found'],
  409: ['conflict', 'Conflict'],
  412: ['processing', 'Precondition Failed'],
  429: ['throttled', 'Too Many Requests'],
  500: ['exception', 'Internal server error'],
  502: ['transient', 'Bad Gateway'],
  503: ['transient', 'Service Unavailable'],
  504: ['timeout', 'Gateway Timeout'],
};

// A plausible OperationOutcome for a scripted fault with no body of its own.
export function genericOutcome(status) {
  const [code, text] = GENERIC[status] ?? [status >= 500 ? 'exception' : 'invalid', `HTTP ${status}`];
  return withStatus(
    { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code, details: { text } }] },
    status
  );
}
