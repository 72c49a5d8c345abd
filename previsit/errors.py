"""Every error previsit raises on purpose derives from `PrevisitError`.

Callers that only need to know "previsit refused, here is why" catch the root once (the
CLI does); callers that act differently per cause catch the specific class. Each message
says what was wrong and what to do, naming the file, appointment or request — never a
patient's name or identifier (those go to DEBUG logs and the run report).

    PrevisitError
    ├── ConfigError          the configuration file or an option
    ├── RuleError            a rule file          (DurationError: "10yrs" is not a duration)
    ├── ValueSetError        a value-set file, or a rule naming one that does not exist
    ├── KeyFileError         a private key or JWKS
    ├── RecordError          one patient's data cannot make a record at all
    ├── AppointmentError     an Appointment that cannot be planned
    ├── ProposalError        a proposal that does not validate (a bug or a broken rule)
    ├── UploadError          a file `previsit upload` cannot load
    ├── MergeError           folders that are not the complete shards of one day
    ├── PdfUnavailableError  WeasyPrint or its system libraries are missing
    └── SourceError          a data source (folder or FHIR server) problem
        ├── AuthError        credentials missing, unreadable or refused
        ├── RequestFailed    one HTTP request failed for good (after retries)
        ├── PatientReadError one patient's record cannot be read: that patient fails
        └── WriteError       one transaction could not be written: that visit fails

The classes that signal bad *input* also derive from ValueError, as the standard library's
own parse errors do, so generic "this value is unusable" handling keeps working.
"""

from __future__ import annotations


class PrevisitError(Exception):
    """The root of previsit's own errors: the message is safe to show a person."""


class ConfigError(PrevisitError, ValueError):
    """A configuration that cannot be used; the message names the key and the fix."""


class RuleError(PrevisitError, ValueError):
    """A rule file that cannot be used. The message names the file, the field and the fix."""


class DurationError(RuleError):
    """A duration string that is not of the form <number><y|mo|w|d>."""


class ValueSetError(PrevisitError, ValueError):
    """A value-set file that cannot be used, or a reference to one that does not exist."""


class KeyFileError(PrevisitError, ValueError):
    """A key that cannot be generated, read or used; the message names the file."""


class RecordError(PrevisitError, ValueError):
    """The data cannot make a PatientRecord at all (no Patient resource, wrong type)."""


class AppointmentError(PrevisitError, ValueError):
    """An Appointment that cannot be planned (no patient, no start)."""


class ProposalError(PrevisitError, ValueError):
    """A proposal that does not validate as FHIR R4(B): a bug or a broken rule order."""


class UploadError(PrevisitError, ValueError):
    """A file that cannot be uploaded (bad JSON, no id where one is needed)."""


class MergeError(PrevisitError, ValueError):
    """The folders are not the complete, consistent shards of one day; says which and why."""


class PdfUnavailableError(PrevisitError, RuntimeError):
    """WeasyPrint, or a system library it needs, is not installed."""


class SourceError(PrevisitError):
    """The source cannot answer (folder missing, server unreachable, auth refused).

    Raised by a run only when nothing at all can be planned; the subclasses below that
    concern one patient or one visit are caught by the run and fail only that one.
    """


class AuthError(SourceError):
    """Credentials missing, unreadable, or refused by the authorization server."""


class RequestFailed(SourceError):
    """A request failed for good (after retries); the message is safe to show."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class PatientReadError(SourceError):
    """One patient's record cannot be read; the visits of that patient fail, the run goes on."""

    def __init__(self, patient_id: str, message: str) -> None:
        super().__init__(message)
        self.patient_id = patient_id

    def __reduce__(self) -> tuple[type[PatientReadError], tuple[str, str]]:
        # raised in a process pool's worker (sources.bundles.load_record), it is pickled
        return (type(self), (self.patient_id, str(self)))


class WriteError(SourceError):
    """A transaction could not be written (or its outcome is unknown); `key` names it."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key
