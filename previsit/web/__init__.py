"""previsit serve: the SMART on FHIR app and the CDS Hooks services (foundations)."""
