// The authorization server's pages: the "pick the user (and patient) and authorize" form and the
// error page shown when the client or redirect_uri cannot be trusted. No scripts, no external
// resources; every value is HTML-escaped.

export function escapeHtml(value) {
  return String(value ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);
}

const STYLE = `body{font-family:system-ui,sans-serif;max-width:40rem;margin:2rem auto;padding:0 1rem;color:#222}
h1{font-size:1.3rem}fieldset{margin:1rem 0;border:1px solid #bbb}label{display:block;margin:.3rem 0}
.error{color:#a00;font-weight:bold}code{background:#eee;padding:0 .2rem}button{margin-right:1rem;padding:.4rem 1rem}`;

function page(title, body) {
  return `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>${escapeHtml(title)}</title>
<style>${STYLE}</style></head>
<body>${body}</body></html>
`;
}

export function errorPage(title, message) {
  return page(title, `<h1>${escapeHtml(title)}</h1><p class="error">${escapeHtml(message)}</p>`);
}

export function patientLabel(patient) {
  const name = patient.name?.[0];
  const text = name?.text ?? [...(name?.given ?? []), name?.family].filter(Boolean).join(' ');
  return `${text || '(no name)'}${patient.birthDate ? ` (${patient.birthDate})` : ''} - Patient/${patient.id}`;
}

// The consent form. `pending.id` ties the POST back to the validated authorization request.
export function authorizePage({ pending, client, users, patients, error }) {
  const userChoices = users
    .map((u, i) => {
      const checked = pending.userHint ? u.id === pending.userHint : i === 0;
      return `<label><input type="radio" name="user" value="${escapeHtml(u.id)}"${checked ? ' checked' : ''} required>
${escapeHtml(u.name ?? u.id)} <code>${escapeHtml(u.fhirUser ?? '')}</code></label>`;
    })
    .join('\n');
  const patientChoice = pending.needsPatient
    ? `<fieldset><legend>Patient</legend><label for="patient">Open the app for</label>
<select id="patient" name="patient" required><option value="">(choose a patient)</option>
${patients.map((p) => `<option value="${escapeHtml(p.id)}">${escapeHtml(patientLabel(p))}</option>`).join('\n')}
</select></fieldset>`
    : '';
  const context = pending.launch?.patient ? `<p>Launched from the EHR for <code>Patient/${escapeHtml(pending.launch.patient)}</code>.</p>` : '';
  return page(
    'Authorize',
    `<h1>Authorize ${escapeHtml(client.name ?? client.client_id)}</h1>
${error ? `<p class="error">${escapeHtml(error)}</p>` : ''}
<p>The application <code>${escapeHtml(client.client_id)}</code> asks for:</p>
<ul>${pending.scope.split(/\s+/).filter(Boolean).map((s) => `<li><code>${escapeHtml(s)}</code></li>`).join('')}</ul>
${context}
<form method="post" action="/oauth2/authorize/decision">
<input type="hidden" name="pending" value="${escapeHtml(pending.id)}">
<fieldset><legend>Sign in as</legend>
${userChoices || '<p>No users are configured.</p>'}
</fieldset>
${patientChoice}
<button type="submit" name="decision" value="approve">Authorize</button>
<button type="submit" name="decision" value="deny" formnovalidate>Deny</button>
</form>`
  );
}
