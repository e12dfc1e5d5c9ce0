"""The forms take posts from the service's own pages only: a cross-site post is refused.

`/avibe` and `/avision` are plain HTML forms (the original specification's, without
JavaScript), so any web page a user opens could post to them: a browser sends a form
across sites without asking anyone (no CORS preflight). The check, as frameworks make it
(Django's CsrfViewMiddleware, Go's CrossOriginProtection), reads what the browser writes
and a page cannot forge:

1. `Sec-Fetch-Site: same-origin`: the browser says the post comes from one of our pages.
2. `Origin` (or, when the browser sends none, the origin of `Referer`): it must be the
   service's own origin, or one listed in ALLOWED_ORIGINS (an explicit list: `*`, the CORS
   default, opens the JSON API to every site, not the forms). The service's own origin is
   the request's scheme (X-Forwarded-Proto from a trusted proxy: FORWARDED_ALLOW_IPS, as
   uvicorn applies it) and Host, its port included (none: the scheme's default); a page on
   https matches a service that sees http (TLS ended at a proxy that did not say so). A
   proxy that drops the port from Host (nginx's `$host`) on a port other than 80 or 443
   leaves its own pages to rule 1, which every current browser meets; `$http_host` keeps it.
3. `Origin: null` with no usable Referer (a sandboxed frame, a redirect hiding its source):
   refused.
4. Neither header (nor `Sec-Fetch-Site` naming another site): not a browser's post
   (curl, scripts, the original specification's examples): served.

ROOT_PATH takes no part: an origin has no path, and the forms' paths are matched without
the prefix (paths.py).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from fastapi import Request

from avito_ai.errors import CrossSiteForm

_DEFAULT_PORTS = {"http": 80, "https": 443}
_OWN_PAGE_ONLY = "This form takes posts from the service's own page only"


def _origin_of(url: str) -> tuple[str, str, int | None] | None:
    """(scheme, host, port) of an origin or URL; None when it names none."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    if scheme not in _DEFAULT_PORTS or not host:
        return None
    return scheme, host, port if port is not None else _DEFAULT_PORTS[scheme]


def _own(request: Request, claimed: tuple[str, str, int | None]) -> bool:
    scheme, host, port = claimed
    own_scheme = str(request.scope.get("scheme", "http")).lower()
    if own_scheme not in _DEFAULT_PORTS:
        return False
    if scheme != own_scheme and not (scheme == "https" and own_scheme == "http"):
        return False
    raw_host = request.headers.get("host", "")
    served = _origin_of(f"{scheme}://{raw_host}")  # no port in Host: the scheme's default
    return served is not None and served[1:] == (host, port)


def _listed(request: Request, claimed: tuple[str, str, int | None]) -> bool:
    listed = request.app.state.avito.settings.cors_origins
    return any(_origin_of(origin) == claimed for origin in listed if origin != "*")


def check_form_origin(request: Request) -> None:
    """Raise CrossSiteForm for a post a browser sent from another site's page."""
    headers = request.headers
    if headers.get("sec-fetch-site", "").lower() == "same-origin":
        return
    origin = headers.get("origin")
    source = origin if origin and origin.strip().lower() != "null" else headers.get("referer")
    if source:
        claimed = _origin_of(source)
        if claimed is not None and (_own(request, claimed) or _listed(request, claimed)):
            return
        shown = f"{claimed[0]}://{claimed[1]}:{claimed[2]}" if claimed else "an unreadable origin"
        raise CrossSiteForm(f"{_OWN_PAGE_ONLY}, not from a page of {shown}")
    if origin is not None:  # "null": the browser hides where the post comes from
        raise CrossSiteForm(f"{_OWN_PAGE_ONLY}; the browser hid where this one comes from")
    if headers.get("sec-fetch-site", "").lower() in ("cross-site", "same-site"):
        raise CrossSiteForm(f"{_OWN_PAGE_ONLY}; the browser says this one comes from another")
