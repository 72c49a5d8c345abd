"""The [web] settings and the URL comparisons security decisions rest on."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from web_fakes import settings

from previsit.web.settings import DEFAULT_READ_TYPES, WebSettings
from previsit.web.urls import UrlError, is_loopback, normalize_url, origin_of, require_secure


@pytest.mark.parametrize(("url", "normal"), [
    ("https://api.medplum.com/fhir/R4/", "https://api.medplum.com/fhir/R4"),
    ("HTTPS://API.Medplum.COM:443/fhir/R4", "https://api.medplum.com/fhir/R4"),
    ("http://127.0.0.1:80/fhir", "http://127.0.0.1/fhir"),
    ("https://ehr.example:8443/Fhir/R4//", "https://ehr.example:8443/Fhir/R4"),
    ("https://ehr.example/fhir#fragment", "https://ehr.example/fhir"),
    ("http://[::1]:8080/fhir", "http://[::1]:8080/fhir"),
])
def test_issuers_are_compared_in_normal_form(url: str, normal: str) -> None:
    assert normalize_url(url) == normal


@pytest.mark.parametrize("url", ["ehr.example/fhir", "ftp://ehr.example/fhir", "https://",
                                 "https://user:pw@ehr.example/fhir", "https://ehr.example:x/"])
def test_what_is_not_an_http_url_is_refused(url: str) -> None:
    with pytest.raises(UrlError):
        normalize_url(url)


def test_plain_http_is_for_loopback_only() -> None:
    assert require_secure("http://localhost:8080/fhir", "x") == "http://localhost:8080/fhir"
    assert is_loopback("http://127.0.0.2/") and is_loopback("http://[::1]/")
    assert not is_loopback("http://127.0.0.1.evil.example/")
    with pytest.raises(UrlError, match="is not https"):
        require_secure("http://ehr.example/fhir", "issuer")
    assert origin_of("https://EHR.example:443/fhir/R4") == "https://ehr.example"


def test_defaults() -> None:
    web = WebSettings()
    assert (web.host, web.port, web.session_hours, web.feedback_suppression_months) == \
        ("127.0.0.1", 8400, 8.0, 12)
    assert web.redirect_uri == "http://127.0.0.1:8400/callback"
    assert not web.secure_cookies and not web.enable_actions
    assert web.refresh == "offline_access" and web.cds_algorithms == ("ES384", "RS384")
    assert web.read_types == DEFAULT_READ_TYPES
    assert "*" not in "".join(web.read_types)


def test_the_registered_issuer_is_found_by_any_spelling() -> None:
    web = settings(issuers=[{"iss": "https://api.medplum.com/fhir/R4/", "client_id": "a"}])
    found = web.issuer_for("HTTPS://api.medplum.com/fhir/R4")
    assert found is not None and found.iss == "https://api.medplum.com/fhir/R4/"
    assert web.issuer_for("https://api.medplum.com/fhir/R5") is None
    assert web.issuer_for("javascript:alert(1)") is None


@pytest.mark.parametrize(("values", "message"), [
    ({"public_url": "http://previsit.clinic.example"}, "is not https"),
    ({"issuers": [{"iss": "http://ehr.example/fhir", "client_id": "a"}]}, "is not https"),
    ({"issuers": [{"iss": "https://ehr.example/fhir", "client_id": "a"},
                  {"iss": "https://EHR.example/fhir/", "client_id": "b"}]}, "list it once"),
    ({"issuers": [{"iss": "https://ehr.example/fhir", "client_id": "a",
                   "client_type": "confidential-symmetric"}]}, "client_secret_env"),
    ({"issuers": [{"iss": "https://ehr.example/fhir", "client_id": "a",
                   "client_type": "confidential-asymmetric", "key_id": "k"}]},
     "private_key_file and key_id"),
    ({"issuers": [{"iss": "https://ehr.example/fhir", "client_id": "a",
                   "client_secret": "inline-secret"}]}, "Extra inputs are not permitted"),
    ({"issuers": [{"iss": "https://ehr.example/fhir", "client_id": "a",
                   "endpoint_origins": ["https://auth.example/path"]}]}, "is not an origin"),
    ({"read_types": ["Patient", "*"]}, "not a FHIR resource type"),
    ({"cds_issuers": [{"iss": "https://ehr.example", "jwks_url": "https://ehr.example/k"},
                      {"iss": "https://ehr.example/", "jwks_url": "https://ehr.example/k"}]},
     "listed twice"),
    ({"session_hours": 0}, "greater than 0"),
])
def test_unusable_settings_are_refused_with_the_key(values: dict[str, object],
                                                    message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        settings(**values)
