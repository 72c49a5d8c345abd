"""`previsit serve`: the SMART on FHIR app and the CDS Hooks services — the parts that decide
who is who and what may happen.

- `settings`: the `[web]` configuration (`WebSettings`).
- `smart`: SMART App Launch client (`SmartApp`: launch, callback, id token, refresh).
- `confinement`: keeps a patient-level session to its launch patient (`PatientConfinement`,
  `ConfinedTransport`), which production servers do not do for `patient/` scopes.
- `store`: server-side state in SQLite (launch states, sessions, CDS jti and feedback,
  dismissals), tokens encrypted with the `keyring`.
- `security`: session and launch cookies, CSRF tokens, CSP and other response headers.
- `cds_auth`: authentication of CDS Hooks calls (`CdsAuthenticator`).
- `jwks`, `urls`: JWT verification against a JWK Set; URL normalisation and https rules.

Modules are imported by name (`from previsit.web.smart import SmartApp`) so that importing
one does not pull in the others.
"""
