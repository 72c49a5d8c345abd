// FHIR Bulk Data Access export (https://hl7.org/fhir/uv/bulkdata/export.html, v2.0.0) for the
// test server: the asynchronous request pattern a real server follows, over the in-memory data.
//
//   GET  [base]/$export | [base]/Patient/$export | [base]/Group/<id>/$export    kick-off
//        Prefer: respond-async required; _type (comma-separated, repeatable), _since (instant),
//        _outputFormat (application/fhir+ndjson, application/ndjson, ndjson); other parameters
//        are refused with 400 unless Prefer: handling=lenient. 202 + Content-Location.
//   GET    /bulk/jobs/<id>                 status: 202 (X-Progress, Retry-After) for the first
//                                          --export-polls polls, then 200 with the manifest
//   DELETE /bulk/jobs/<id>                 cancel or forget the job (then 404 everywhere)
//   GET    /bulk/jobs/<id>/files/<n>.ndjson  one file of the manifest (output, error)
//
// What is exported is a snapshot taken at the kick-off (its time is the transactionTime):
// for a Group, the Patient compartment of each member (`Group.member.entity`, inactive
// members left out) and the Medications their MedicationRequests reference; for Patient/$export
// the same for every Patient; for [base]/$export every resource of the types asked. `_since`
// keeps resources whose meta.lastUpdated is after it (referenced Medications are sent whatever
// their date, as the IG allows). A member that does not exist is reported in the error file.
// Files hold at most --export-file-lines resources. When the server requires a token
// (--require-token, --clients), the files do too and the manifest says requiresAccessToken.
//
// Status and file requests pass through the scripted faults like /oauth2 requests (their path
// is absolute: `{"path": "^/bulk/jobs/.*/files/", "status": 500}`). /__admin/stats lists every
// job under `bulk.jobs` (level, group, types, since, polls, and resources per type).
import { randomUUID } from 'node:crypto';
import { allOk, badRequest, getResourceTypes, isResourceType, notFound, unauthorized } from '@medplum/core';
import { BASE_PATH } from './fhir.mjs';
import { fhir, json } from './responses.mjs';

const ID = '[A-Za-z0-9\\-.]{1,64}';
const KICK_OFF = new RegExp(`^${BASE_PATH}/(?:(Group)/(${ID})/|(Patient)/)?\\$export$`);
const JOB = /^\/bulk\/jobs\/([0-9a-f-]{36})(?:\/files\/(\d+)\.ndjson)?$/;
const OUTPUT_FORMATS = new Set(['application/fhir+ndjson', 'application/ndjson', 'ndjson']);
const PARAMETERS = new Set(['_type', '_since', '_outputFormat']);
const NDJSON = 'application/fhir+ndjson';

// Where the Patient compartment's resource types (those previsit and the sample data use)
// point at their patient (FHIR R4 CompartmentDefinition patient).
const PATIENT_REFERENCES = {
  AllergyIntolerance: (r) => [r.patient],
  Appointment: (r) => (r.participant ?? []).map((p) => p.actor),
  CarePlan: (r) => [r.subject],
  Condition: (r) => [r.subject],
  DiagnosticReport: (r) => [r.subject],
  DocumentReference: (r) => [r.subject],
  Encounter: (r) => [r.subject],
  Immunization: (r) => [r.patient],
  MedicationDispense: (r) => [r.subject],
  MedicationRequest: (r) => [r.subject],
  MedicationStatement: (r) => [r.subject],
  Observation: (r) => [r.subject],
  Procedure: (r) => [r.subject],
  ServiceRequest: (r) => [r.subject],
};

function outcome(status, text, code) {
  const base = status === 404 ? notFound : badRequest(text);
  return { ...base, issue: [{ ...base.issue[0], ...(code ? { code } : {}), details: { text } }] };
}

function patientIds(resource) {
  if (resource.resourceType === 'Patient') {
    return [resource.id];
  }
  const refs = PATIENT_REFERENCES[resource.resourceType]?.(resource) ?? [];
  return refs.map((ref) => /(?:^|\/)Patient\/([^/]+)$/.exec(ref?.reference ?? '')?.[1]).filter(Boolean);
}

export class BulkExports {
  constructor(config, { repo, fhirService, serialized, authRequired }) {
    this.config = config;
    this.repo = repo;
    this.fhirService = fhirService;
    this.serialized = serialized;
    this.authRequired = authRequired;
    this.reset();
  }

  reset() {
    this.jobs = new Map();
    this.summaries = [];
  }

  toJSON() {
    return { jobs: this.summaries };
  }

  matches(path) {
    return KICK_OFF.test(path) || path.startsWith('/bulk/');
  }

  async handle(req, url, root) {
    const principal = this.fhirService.authenticate(req.headers.authorization, req.socket.remoteAddress);
    const kickOff = KICK_OFF.exec(url.pathname);
    if (kickOff) {
      if (!principal) {
        return fhir(401, unauthorized);
      }
      if (req.method !== 'GET') {
        return fhir(405, outcome(405, `${req.method} is not supported for $export here; use GET`, 'not-supported'));
      }
      return this.kickOff(req, url, root, { group: kickOff[2], patientLevel: Boolean(kickOff[3]) });
    }
    const [, id, file] = JOB.exec(url.pathname) ?? [];
    const job = id && this.jobs.get(id);
    if (!job) {
      return fhir(404, outcome(404, 'No such export job (it may have been deleted)'));
    }
    if (!principal && (file === undefined || job.requiresAccessToken)) {
      return fhir(401, unauthorized);
    }
    if (file === undefined && req.method === 'DELETE') {
      this.jobs.delete(id);
      job.summary.status = job.summary.status === 'complete' ? 'deleted' : 'cancelled';
      return fhir(202, allOk);
    }
    if (req.method !== 'GET') {
      return fhir(405, outcome(405, `${req.method} is not supported here`, 'not-supported'));
    }
    return file === undefined ? this.status(job, root) : this.file(job, Number(file));
  }

  async kickOff(req, url, root, { group, patientLevel }) {
    const prefer = String(req.headers.prefer ?? '');
    if (!/respond-async/.test(prefer)) {
      return fhir(400, outcome(400, 'A Bulk Data kick-off needs the header Prefer: respond-async'));
    }
    const lenient = /handling=lenient/.test(prefer);
    const params = url.searchParams;
    for (const name of new Set(params.keys())) {
      if (!PARAMETERS.has(name) && !lenient) {
        return fhir(400, outcome(400, `Unsupported $export parameter: ${name}`, 'not-supported'));
      }
    }
    const format = params.get('_outputFormat');
    if (format !== null && !OUTPUT_FORMATS.has(format)) {
      return fhir(400, outcome(400, `Unsupported _outputFormat: ${format} (use application/fhir+ndjson)`));
    }
    // Repeated _type parameters count as one comma-separated list (the IG).
    const types = params.getAll('_type').flatMap((v) => v.split(',')).map((t) => t.trim()).filter(Boolean);
    const unknown = types.find((t) => !isResourceType(t));
    if (unknown) {
      return fhir(400, outcome(400, `Unknown resource type in _type: ${unknown}`));
    }
    let since;
    if (params.has('_since')) {
      since = new Date(params.get('_since'));
      if (!/^\d{4}-\d{2}-\d{2}T/.test(params.get('_since')) || Number.isNaN(since.getTime())) {
        return fhir(400, outcome(400, `_since is not a FHIR instant: ${params.get('_since')}`));
      }
    }
    const level = group ? 'group' : patientLevel ? 'patient' : 'system';
    const snapshot = await this.serialized(() => this.snapshot({ level, group, types, since }));
    if (snapshot.missing) {
      return fhir(404, outcome(404, `Group/${group} is not known`));
    }
    const id = randomUUID();
    const summary = {
      id,
      level,
      group: group ?? null,
      types,
      since: params.get('_since'),
      status: 'in-progress',
      polls: 0,
      output: Object.fromEntries(Object.entries(snapshot.byType).map(([t, lines]) => [t, lines.length])),
      errors: snapshot.errors.length,
    };
    this.summaries.push(summary);
    this.jobs.set(id, {
      id,
      summary,
      request: `${root}${url.pathname}${url.search}`,
      transactionTime: snapshot.transactionTime,
      files: this.files(snapshot),
      pollsLeft: this.config.exportPolls,
      requiresAccessToken: this.authRequired,
    });
    return fhir(202, allOk, { 'Content-Location': `${root}/bulk/jobs/${id}` });
  }

  // The resources of the export as NDJSON lines by type, taken now (transactionTime = now).
  snapshot({ level, group, types, since }) {
    let members;
    const errors = [];
    if (level === 'group') {
      const groupResource = this.repo.exists('Group', group) && this.repo.resourcesOfType('Group').find((g) => g.id === group);
      if (!groupResource) {
        return { missing: true };
      }
      members = new Set();
      for (const member of groupResource.member ?? []) {
        const pid = /(?:^|\/)Patient\/([^/]+)$/.exec(member.entity?.reference ?? '')?.[1];
        if (!pid || member.inactive) {
          continue;
        }
        if (!this.repo.exists('Patient', pid)) {
          errors.push({
            resourceType: 'OperationOutcome',
            issue: [{ severity: 'error', code: 'not-found', diagnostics: `Patient/${pid} (a member of Group/${group}) was not found` }],
          });
          continue;
        }
        members.add(pid);
      }
    }
    const compartment = level !== 'system';
    const wanted = types.length ? types : getResourceTypes().filter((t) => this.repo.resourcesOfType(t).length);
    const transactionTime = new Date().toISOString();
    const changed = (r) => !since || !r.meta?.lastUpdated || new Date(r.meta.lastUpdated) > since;
    const belongs = (r) => !compartment || patientIds(r).some((pid) => !members || members.has(pid));
    const byType = {};
    const medications = new Set();
    for (const type of wanted) {
      if (type === 'Medication' && compartment) {
        continue; // referenced ones are added below
      }
      if (compartment && type !== 'Patient' && !PATIENT_REFERENCES[type]) {
        continue; // not in the Patient compartment
      }
      const lines = [];
      for (const resource of this.repo.resourcesOfType(type)) {
        if (!belongs(resource) || !changed(resource)) {
          continue;
        }
        lines.push(JSON.stringify(resource));
        const med = /(?:^|\/)Medication\/([^/]+)$/.exec(resource.medicationReference?.reference ?? '')?.[1];
        if (med) {
          medications.add(med);
        }
      }
      if (lines.length) {
        byType[type] = lines;
      }
    }
    if (compartment && wanted.includes('Medication')) {
      const lines = this.repo
        .resourcesOfType('Medication')
        .filter((r) => medications.has(r.id))
        .map((r) => JSON.stringify(r));
      if (lines.length) {
        byType.Medication = lines;
      }
    }
    return { byType, errors: errors.map((e) => JSON.stringify(e)), transactionTime };
  }

  files(snapshot) {
    const per = Math.max(1, this.config.exportFileLines);
    const files = [];
    for (const [type, lines] of Object.entries(snapshot.byType)) {
      for (let i = 0; i < lines.length; i += per) {
        files.push({ kind: 'output', type, lines: lines.slice(i, i + per) });
      }
    }
    if (snapshot.errors.length) {
      files.push({ kind: 'error', type: 'OperationOutcome', lines: snapshot.errors });
    }
    return files;
  }

  status(job, root) {
    job.summary.polls++;
    if (job.pollsLeft > 0) {
      job.pollsLeft--;
      const done = Math.round((100 * (this.config.exportPolls - job.pollsLeft)) / (this.config.exportPolls + 1));
      return { status: 202, headers: { 'X-Progress': `${done}% complete`, 'Retry-After': String(this.config.exportRetryAfterS) }, body: '' };
    }
    job.summary.status = 'complete';
    const items = (kind) =>
      job.files.flatMap((f, n) => (f.kind === kind ? [{ type: f.type, url: `${root}/bulk/jobs/${job.id}/files/${n}.ndjson`, count: f.lines.length }] : []));
    return json(
      200,
      {
        transactionTime: job.transactionTime,
        request: job.request,
        requiresAccessToken: job.requiresAccessToken,
        output: items('output'),
        deleted: [],
        error: items('error'),
      },
      { Expires: new Date(Date.now() + 3600_000).toUTCString() }
    );
  }

  file(job, n) {
    const file = job.files[n];
    if (!file) {
      return fhir(404, outcome(404, `The export has no file ${n}`));
    }
    return { status: 200, headers: { 'Content-Type': NDJSON }, body: file.lines.map((line) => `${line}\n`).join('') };
  }
}
