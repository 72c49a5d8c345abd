"""PDF output: the sheets' HTML printed by WeasyPrint, with no network access.

WeasyPrint is optional (it needs Pango from the operating system), so it is imported
when a PDF is asked for, and a missing library becomes an error that says what to install.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from previsit.errors import PdfUnavailableError
from previsit.files import write_bytes

# What WeasyPrint needs from Debian/Ubuntu (https://doc.courtbouillon.org/weasyprint,
# "Installation"): Pango for text layout and its FreeType backend.
DEBIAN_PACKAGES = ("libpango-1.0-0", "libpangoft2-1.0-0")




def _refuse_fetch(url: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
    # The sheets are self-contained; anything that would be fetched is a bug or an
    # injection, and a printout must not phone out with patient context in the URL.
    raise ValueError(f"previsit sheets load nothing from outside the page (asked for {url!r})")


def _fetcher(weasyprint: Any) -> Any:
    """A url_fetcher that fetches nothing, in the shape this WeasyPrint wants.

    From WeasyPrint 70 a url_fetcher is a `URLFetcher` (WeasyPrint reads its attributes);
    a plain function, as earlier versions took, crashes the PDF at the first reference. No
    protocol is allowed and `fetch` refuses anyway; errors are not fatal, so the page is
    printed without what it asked for (and WeasyPrint logs a warning).
    """
    base = getattr(getattr(weasyprint, "urls", None), "URLFetcher", None)
    if base is None:  # WeasyPrint before 70: a callable
        return _refuse_fetch

    class RefuseEveryFetch(base):  # type: ignore[misc, valid-type]
        def fetch(self, url: str, headers: Any = None) -> Any:
            return _refuse_fetch(url)

    return RefuseEveryFetch(allowed_protocols=(), allow_redirects=False,
                            fail_on_errors=False)


def _weasyprint() -> Any:
    install = (f"install it with `pip install weasyprint` and the system libraries with "
               f"`apt-get install {' '.join(DEBIAN_PACKAGES)}` (Debian/Ubuntu)")
    try:
        return importlib.import_module("weasyprint")
    except ImportError as exc:
        raise PdfUnavailableError(f"PDF output needs WeasyPrint, which is not installed: "
                                  f"{install}") from exc
    except OSError as exc:  # WeasyPrint is there but cannot load Pango
        raise PdfUnavailableError(f"WeasyPrint cannot load its system libraries ({exc}): "
                                  f"{install}") from exc


def write_pdf(html: str, path: Path) -> None:
    """Print `html` (a sheet from previsit.sheets) to a PDF file at `path` (written
    atomically, readable by its owner only: it holds the patient's plan)."""
    weasyprint = _weasyprint()
    document = weasyprint.HTML(string=html, url_fetcher=_fetcher(weasyprint))
    write_bytes(path, document.write_pdf())
