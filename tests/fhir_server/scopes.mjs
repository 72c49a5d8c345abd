// SMART scopes as Medplum enforces them, quirks included:
// - v2 (`patient|user|system/Type.cruds`, `*` for any type) grant exactly the letters asked for;
// - v1 `.read` = `rs`, `.*` = `cruds`, but v1 `.write` grants nothing (observed: a client asking
//   `system/ServiceRequest.write` is refused `POST ServiceRequest` with 403);
// - when any wildcard-type scope (`patient/*.rs`) is present it alone decides for every type, so a
//   type-specific scope beside it (`patient/ServiceRequest.cu`) adds nothing: writes are refused;
// - `patient/` scopes are not confined to the launch patient (the app must confine itself);
// - for a type, only the first scope naming it counts (Medplum's getScopeForResourceType finds
//   one scope per type): `system/ServiceRequest.rs system/ServiceRequest.cu` is read-only;
// - the context (patient/user/system) otherwise makes no difference; `?criteria` is ignored.
// A token whose scope holds no resource scope at all may do nothing on the FHIR API.

const SCOPE = /^(patient|user|system)\/(\w+|\*)\.(read|write|\*|c?r?u?d?s?)(\?.*)?$/;

const LETTERS_OF = { read: 'rs', write: '', '*': 'cruds' };

// The letter an interaction needs (SMART v2: create, read, update, delete, search).
const LETTER = {
  read: 'r',
  vread: 'r',
  'history-instance': 'r',
  'history-type': 'r',
  create: 'c',
  update: 'u',
  patch: 'u',
  delete: 'd',
  'search-type': 's',
};

export class Grant {
  constructor(scope) {
    this.scope = scope ?? '';
    this.wildcard = null; // Set of letters, when a `*` scope exists
    this.byType = new Map(); // resourceType -> Set of letters
    for (const term of this.scope.split(/\s+/).filter(Boolean)) {
      const m = SCOPE.exec(term);
      if (!m) {
        continue; // openid, fhirUser, launch, offline_access, ...
      }
      const letters = LETTERS_OF[m[3]] ?? m[3];
      if (m[2] === '*') {
        this.wildcard ??= new Set();
        for (const l of letters) this.wildcard.add(l);
      } else if (!this.byType.has(m[2])) {
        this.byType.set(m[2], new Set(letters));
      }
    }
  }

  letters(resourceType) {
    if (this.wildcard) {
      return this.wildcard;
    }
    return this.byType.get(resourceType) ?? new Set();
  }

  // Whether this grant allows `interaction` on `resourceType`. System-level searches and
  // operations ($graphql, ...) need a wildcard scope with search; a batch/transaction itself is
  // allowed (each entry is checked on its own).
  allows(interaction, resourceType) {
    if (interaction === 'batch' || interaction === 'transaction') {
      return true;
    }
    const letter = LETTER[interaction];
    if (!letter || !resourceType) {
      return Boolean(this.wildcard?.has('s') && this.wildcard.has('r'));
    }
    return this.letters(resourceType).has(letter);
  }

  canRead(resourceType) {
    return this.letters(resourceType).has('r') || this.letters(resourceType).has('s');
  }
}

export function hasScope(scope, name) {
  return (scope ?? '').split(/\s+/).includes(name);
}
