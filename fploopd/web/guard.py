"""Who may talk to the web server.

With a token (``http_token`` / ``FPLOOPD_HTTP_TOKEN``; required off loopback): every request needs
it, in an ``X-Fploopd-Token`` header, ``Authorization: Bearer``, or (for a browser opening the
page) once as ``?token=`` on a GET, which sets an HttpOnly, SameSite=Strict cookie for the next
GETs. A POST always needs it in a header: browsers send no custom header cross-site without asking
first, so no other site's form or script can submit, cancel or retry.

Without a token (loopback only): the Host header must be a loopback name (a DNS-rebinding page
cannot pass), and a POST needs an ``X-Fploopd-Token`` header (any value) and, when the browser sends
an Origin, the same origin.
"""

from __future__ import annotations

import hmac
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from fploopd.web.server import WebAddress, is_loopback

HEADER = "x-fploopd-token"
COOKIE = "fploopd_token"
SAFE_METHODS = ("GET", "HEAD")


def _same(given: str | None, token: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


def header_token(request: Request) -> str | None:
    if HEADER in request.headers:
        return request.headers[HEADER]
    auth = request.headers.get("authorization", "")
    return auth[7:] if auth.lower().startswith("bearer ") else None


def host_name(value: str) -> str:
    """The host of a Host header or an Origin's netloc, without the port."""
    return urlsplit(f"//{value}").hostname or ""


def refuse(request: Request, address: WebAddress) -> Response | None:
    """None when the request may go on, else the answer that refuses it."""
    if address.token:
        if request.method not in SAFE_METHODS:
            ok = _same(header_token(request), address.token)
        else:
            ok = any(_same(t, address.token) for t in (header_token(request), request.cookies.get(COOKIE), request.query_params.get("token")))
        if not ok:
            return JSONResponse(
                {"error": "a token is needed: the X-Fploopd-Token header (or Authorization: Bearer), or ?token= to open the page"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        return None
    if not is_loopback(host_name(request.headers.get("host", ""))):
        return JSONResponse({"error": "this server answers only to a loopback host name (localhost, 127.0.0.1, [::1])"}, status_code=403)
    if request.method not in SAFE_METHODS:
        origin = request.headers.get("origin")
        if HEADER not in request.headers or (origin and host_name(urlsplit(origin).netloc) != host_name(request.headers["host"])):
            return JSONResponse({"error": "a POST needs the X-Fploopd-Token header and this page's origin"}, status_code=403)
    return None


def remember(request: Request, response: Response, address: WebAddress) -> None:
    """A page opened with ?token= keeps it in a cookie, so its links and images work without it."""
    given = request.query_params.get("token")
    if address.token and _same(given, address.token):
        response.set_cookie(COOKIE, address.token, httponly=True, samesite="strict")
