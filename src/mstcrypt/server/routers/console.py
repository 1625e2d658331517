"""The operations console (``/console``): server-rendered pages for operators.

Who reaches what (``tests/test_access.py``):

* ``/console/static/*``, ``GET /console/login`` — anybody (no data);
* ``POST /console/login`` — the one-time console code in the form is the credential;
* ``POST /console/code`` — an operator's §7.3 session token (certificate login only);
* every other route — a console session cookie (:mod:`mstcrypt.apps.console.sessions`),
  and for each action the same role as the matching ``/admin`` route. Bearer tokens of
  any kind are ignored here: without the cookie a page sends the browser to the login.

Every state-changing form carries the session's CSRF token and must come from this
origin (``Origin`` / ``Sec-Fetch-Site``); every answer carries a strict
Content-Security-Policy (no inline script or style), ``no-store`` and framing denial.
Actions call the same :class:`~mstcrypt.kmc.service.Kmc` methods as the API, with the
operator as the audit actor. No secret is rendered after its creation: an enrollment
code is shown once, in the answer to the form that created it.
"""

from __future__ import annotations

import csv
import hmac
import io
import secrets
import threading
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime, timedelta
from importlib import resources
from typing import Annotated, Any

import jinja2
from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.routing import APIRoute

from mstcrypt.apps.console.errors import ConsoleLoginRequired, CsrfError
from mstcrypt.apps.console.overview import AuditFilter, Overview
from mstcrypt.apps.console.sessions import ConsoleAuth, ConsoleSession
from mstcrypt.errors import (
    AccessDeniedError,
    AuthenticationError,
    DecodeError,
    MstCryptError,
    PolicyError,
    VerificationError,
)
from mstcrypt.kmc.ca import REVOCATION_REASONS
from mstcrypt.kmc.operators import (
    ADMINISTRATOR,
    AUDITOR,
    KEY_RECOVERY_OFFICER,
    REGISTRATION_OFFICER,
    ROLES,
)
from mstcrypt.pki import Profile
from mstcrypt.server.deps import Bearer, CaDep, KmcDep, SettingsDep, Source
from mstcrypt.server.errors import status_of
from mstcrypt.server.routers import metrics

__all__ = ["COOKIE", "CSP", "PRE_COOKIE", "router"]

COOKIE = "__Host-mstcrypt-console"
PRE_COOKIE = "__Host-mstcrypt-console-login"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; connect-src 'self'"
)
_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    # not no-referrer: Chromium then sends "Origin: null" with same-origin form posts
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}
_MAX_FORM = 64 * 1024
_STATIC = {"console.css": "text/css", "console.js": "text/javascript"}
_PROFILES = [p.value for p in Profile if p.value.endswith("_sign")]

_env = jinja2.Environment(
    loader=jinja2.PackageLoader("mstcrypt.apps.console", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)


def _when(value: Any) -> str:
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M UTC")
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value).strftime("%Y-%m-%d %H:%M")
    return "—" if value is None else str(value)


_env.filters["when"] = _when


class ConsoleRoute(APIRoute):
    """Console answers are HTML: a missing or refused session sends the browser to the
    login page (303), other typed errors render an error page with the API's status;
    every answer gets the security headers and, when renewed, the session cookie."""

    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        handler = super().get_route_handler()

        async def run(request: Request) -> Response:
            try:
                response = await handler(request)
            except ConsoleLoginRequired:
                response = RedirectResponse("/console/login", status_code=303)
                if request.cookies.get(COOKIE):
                    _clear(response, COOKIE)
            except MstCryptError as exc:
                response = _render(
                    request,
                    "error.html",
                    status=status_of(exc),
                    error=type(exc).__name__,
                    detail=str(exc),
                )
            renewed = getattr(request.state, "console_renewed", None)
            if renewed and not getattr(request.state, "console_logged_out", False):
                _set(response, COOKIE, renewed)
            for name, value in _HEADERS.items():
                response.headers.setdefault(name, value)
            response.headers.setdefault("Cache-Control", "no-store")
            return response

        return run


#: the pages (HTML answers, cookie sessions)
pages = APIRouter(prefix="/console", tags=["console"], route_class=ConsoleRoute)
#: the CLI's step (JSON answers, like the rest of the API)
api = APIRouter(prefix="/console", tags=["console"])


# -- plumbing ------------------------------------------------------------------------------
_auth_lock = threading.Lock()


def get_auth(request: Request, kmc: KmcDep, settings: SettingsDep) -> ConsoleAuth:
    """The console's session service, with the session policy of the settings."""
    state = request.app.state
    with _auth_lock:
        auth = getattr(state, "console_auth", None)
        if auth is None or auth.kmc is not kmc:
            auth = state.console_auth = ConsoleAuth(kmc, policy=settings.console_policy())
    return auth


AuthDep = Annotated[ConsoleAuth, Depends(get_auth)]


def console_session(request: Request, auth: AuthDep) -> ConsoleSession:
    """The console session of the cookie (never a bearer token)."""
    s = auth.session(request.cookies.get(COOKIE))
    request.state.console = s
    if s.renewed:
        request.state.console_renewed = s.renewed
    return s


Console = Annotated[ConsoleSession, Depends(console_session)]


def _role(s: ConsoleSession, *roles: str) -> None:
    if not s.operator.roles.intersection(roles):
        raise AccessDeniedError(
            f"operator {s.operator.name!r} lacks the role for this operation "
            f"(needs {' or '.join(roles)})"
        )


def _same_origin(request: Request) -> None:
    """A state-changing request must come from a page of this origin."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        raise CsrfError(f"cross-site request refused (Sec-Fetch-Site: {site[:32]})")
    origin = request.headers.get("origin")
    if origin is not None:
        host = request.headers.get("host", "")
        if origin == "null" or urllib.parse.urlsplit(origin).netloc != host:
            raise CsrfError("request from another origin refused")


async def form(request: Request) -> dict[str, str]:
    """The urlencoded form of a POST, strictly: one value per field, UTF-8, bounded."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/x-www-form-urlencoded":
        raise DecodeError("console forms are application/x-www-form-urlencoded")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_FORM:
            raise DecodeError("form too large")
    try:
        pairs = urllib.parse.parse_qsl(
            body.decode("ascii"),
            keep_blank_values=True,
            strict_parsing=bool(body),
            encoding="utf-8",
            errors="strict",
        )
    except (UnicodeDecodeError, ValueError):
        raise DecodeError("the form is not valid urlencoded UTF-8") from None
    out: dict[str, str] = {}
    for k, v in pairs:
        if k in out:
            raise DecodeError(f"form field {k[:32]!r} repeated")
        if "\x00" in v:
            raise DecodeError("form fields cannot contain NUL")
        out[k] = v
    return out


Form = Annotated[dict[str, str], Depends(form)]


def checked(request: Request, s: Console, f: Form) -> ConsoleSession:
    """A console session for a state-changing form: same origin and the CSRF token."""
    _same_origin(request)
    s.check_csrf(f.get("csrf"))
    return s


Checked = Annotated[ConsoleSession, Depends(checked)]


def _set(response: Response, name: str, value: str, max_age: int | None = None) -> None:
    response.set_cookie(
        name, value, max_age=max_age, path="/", secure=True, httponly=True, samesite="strict"
    )


def _clear(response: Response, name: str) -> None:
    response.delete_cookie(name, path="/", secure=True, httponly=True, samesite="strict")


def _nav(s: ConsoleSession | None) -> list[tuple[str, str]]:
    if s is None:
        return []
    roles = s.operator.roles
    items = [("/console", "Dashboard"), ("/console/certificates", "Certificates")]
    if REGISTRATION_OFFICER in roles:
        items.append(("/console/codes", "Enrollment codes"))
    items.append(("/console/keys", "Keys"))
    items.append(("/console/groups", "Groups"))
    if KEY_RECOVERY_OFFICER in roles:
        items.append(("/console/recovery", "Recovery"))
    if roles.intersection((AUDITOR, ADMINISTRATOR)):
        items.append(("/console/audit", "Audit log"))
        items.append(("/console/compliance", "Compliance"))
    items.append(("/console/operators", "Operators"))
    return items


def _render(request: Request, template: str, *, status: int = 200, **ctx: Any) -> HTMLResponse:
    s: ConsoleSession | None = getattr(request.state, "console", None)
    html = _env.get_template(template).render(
        me=s.operator if s else None,
        csrf=s.csrf if s else "",
        nav=_nav(s),
        path=request.url.path,
        roles=s.operator.roles if s else frozenset(),
        **ctx,
    )
    return HTMLResponse(html, status_code=status)


def _limit(value: str, n: int = 128) -> str:
    return value.strip()[:n]


# -- public: assets and the login page -------------------------------------------------------
@pages.get("/static/{name}", response_class=Response)
def static(name: str) -> Response:
    if name not in _STATIC:
        return Response(b"not found", status_code=404, media_type="text/plain")
    data = resources.files("mstcrypt.apps.console").joinpath("static", name).read_bytes()
    return Response(
        data,
        media_type=_STATIC[name],
        headers={"Cache-Control": "public, max-age=300"},
    )


@pages.get("/login", response_class=HTMLResponse)
def login_page(request: Request) -> Response:
    """The login form. Its pre-login token (cookie + hidden field) binds the form to this
    browser, so another site cannot log the browser into a session of its choosing."""
    pre = request.cookies.get(PRE_COOKIE)
    if not pre or len(pre) != 32 or not pre.isalnum():
        pre = secrets.token_hex(16)
    response = _render(request, "login.html", pre=pre)
    _set(response, PRE_COOKIE, pre, max_age=600)
    return response


@pages.post("/login", response_class=HTMLResponse)
def login(request: Request, f: Form, auth: AuthDep, source: Source) -> Response:
    """Exchange a console code (once) for a new console session."""
    _same_origin(request)
    pre = request.cookies.get(PRE_COOKIE, "")
    given = f.get("pre", "")
    if not pre or not hmac.compare_digest(pre.encode(), given.encode()):
        raise CsrfError("the login form is not this browser's (reload the login page)")
    code = f.get("code", "").strip()
    if not code:
        raise DecodeError("paste the console code that `mstcrypt console open` printed")
    cookie, _session = auth.exchange(code, source=source)
    response = RedirectResponse("/console", status_code=303)
    _set(response, COOKIE, cookie)
    _clear(response, PRE_COOKIE)
    return response


# -- the CLI's step: a code for the operator's certificate session ---------------------------
@api.post("/code")
def console_code(
    request: Request, token: Bearer, auth: AuthDep, kmc: KmcDep, source: Source
) -> dict[str, Any]:
    """A one-time console code for the operator whose §7.3 session token this is
    (certificate login only; static credentials are refused)."""
    if not token.startswith("MST1."):
        raise AuthenticationError("the console needs a certificate login (§7.3 session token)")
    try:
        claims = request.app.state.login().verify_session(token)
    except VerificationError as exc:
        raise AuthenticationError(f"session token refused: {exc}") from None
    who = kmc.operators.from_session(claims)
    code, expires = auth.issue_code(who, claims, source=source)
    return {"code": code, "expires": expires, "login_path": "/console/login", "operator": who.name}


# -- session ----------------------------------------------------------------------------------
@pages.post("/logout", response_class=HTMLResponse)
def logout(request: Request, s: Checked, auth: AuthDep, source: Source) -> Response:
    auth.logout(s, source=source)
    request.state.console_logged_out = True
    response = RedirectResponse("/console/login", status_code=303)
    _clear(response, COOKIE)
    return response


# -- pages ------------------------------------------------------------------------------------
@pages.get("", response_class=HTMLResponse)
def dashboard(request: Request, s: Console, kmc: KmcDep) -> Response:
    return _render(request, "dashboard.html", d=Overview(kmc).dashboard())


@pages.get("/certificates", response_class=HTMLResponse)
def certificates(
    request: Request, s: Console, kmc: KmcDep, q: str = "", status: str = ""
) -> Response:
    q, status = _limit(q), _limit(status, 16)
    rows = Overview(kmc).certificates(query=q, status=status)
    return _render(request, "certificates.html", rows=rows, q=q, state=status)


@pages.get("/certificates/{serial}", response_class=HTMLResponse)
def certificate(request: Request, serial: str, s: Console, kmc: KmcDep) -> Response:
    from mstcrypt.kmc.context import NotFoundError

    c = Overview(kmc).certificate(_limit(serial, 40))
    if c is None:
        raise NotFoundError(f"no certificate with serial {serial[:40]}")
    return _render(request, "certificate.html", c=c, reasons=REVOCATION_REASONS, done=None)


@pages.post("/certificates/{serial}/revoke", response_class=HTMLResponse)
def revoke(request: Request, serial: str, s: Checked, f: Form, kmc: KmcDep, ca: CaDep) -> Response:
    _role(s, REGISTRATION_OFFICER)
    reason = f.get("reason", "")
    if reason not in REVOCATION_REASONS:
        raise PolicyError(f"unknown revocation reason {reason[:32]!r}")
    if f.get("confirm") != serial:
        raise PolicyError("type the certificate's serial to confirm the revocation")
    revoked = ca.revoke(serial, reason=reason, actor=s.operator.name)
    c = Overview(kmc).certificate(serial)
    return _render(request, "certificate.html", c=c, reasons=REVOCATION_REASONS, done=revoked)


@pages.get("/codes", response_class=HTMLResponse)
def codes(request: Request, s: Console, kmc: KmcDep) -> Response:
    _role(s, REGISTRATION_OFFICER)
    return _render(
        request,
        "codes.html",
        rows=Overview(kmc).open_codes(),
        profiles=_PROFILES,
        issued=None,
        expired=None,
    )


@pages.post("/codes", response_class=HTMLResponse)
def issue_code(request: Request, s: Checked, f: Form, kmc: KmcDep) -> Response:
    """Issue an enrollment code: shown in this answer only (``no-store``), never again."""
    _role(s, REGISTRATION_OFFICER)
    owner, cn = _limit(f.get("owner", "")), _limit(f.get("cn", "") or f.get("owner", ""))
    if not owner:
        raise PolicyError("give the owner the certificates are for")
    try:
        profile = Profile(f.get("profile", "device_sign"))
        ttl = int(f.get("ttl", "86400") or "86400")
    except ValueError:
        raise PolicyError("unknown profile or lifetime") from None
    if not 60 <= ttl <= 30 * 86400:
        raise PolicyError("the code's lifetime is 60 s to 30 days")
    subject = {"CN": cn}
    if f.get("org"):
        subject["O"] = _limit(f["org"])
    dns = [d for d in (x.strip() for x in f.get("dns", "").split(",")) if d]
    code, expires = kmc.create_enrollment_code(
        owner=owner,
        subject=subject,
        profile=profile,
        ttl=timedelta(seconds=ttl),
        actor=s.operator.name,
        dns_names=dns,
    )
    issued = {
        "code": code,
        "owner": owner,
        "expires_at": expires,
        "profile": profile.value,
        "qr": _qr(code),
    }
    return _render(
        request,
        "codes.html",
        rows=Overview(kmc).open_codes(),
        profiles=_PROFILES,
        issued=issued,
        expired=None,
    )


def _qr(code: str) -> Any:
    """The code as a QR code (inline SVG: paths and attributes, no script or style), for
    a terminal's camera."""
    import segno
    from markupsafe import Markup

    svg = segno.make(code, error="m").svg_inline(scale=5, dark="#000", light="#fff", title="")
    return Markup(svg)  # noqa: S704 - segno's own SVG of our code alphabet


@pages.post("/codes/{code_id}/expire", response_class=HTMLResponse)
def expire_code(request: Request, code_id: str, s: Checked, kmc: KmcDep) -> Response:
    """End an unused enrollment code now (the API's ``POST
    /admin/enrollment-codes/{id}/expire``)."""
    _role(s, REGISTRATION_OFFICER)
    kmc.enrollment.expire_code(code_id, actor=s.operator.name)
    return _render(
        request,
        "codes.html",
        rows=Overview(kmc).open_codes(),
        profiles=_PROFILES,
        issued=None,
        expired=code_id,
    )


@pages.get("/keys", response_class=HTMLResponse)
def keys(request: Request, s: Console, kmc: KmcDep, owner: str = "") -> Response:
    owner = _limit(owner)
    return _render(request, "keys.html", owner=owner, rows=Overview(kmc).keys(owner), done=None)


def _key_done(request: Request, f: dict[str, str], kmc: Any, done: str) -> Response:
    owner = _limit(f.get("owner", ""))
    return _render(request, "keys.html", owner=owner, rows=Overview(kmc).keys(owner), done=done)


def _confirm_key(s: ConsoleSession, key_id: str, f: dict[str, str]) -> None:
    _role(s, ADMINISTRATOR)
    if f.get("confirm") != key_id:
        raise PolicyError("type the key id to confirm")


@pages.post("/keys/{key_id}/archive", response_class=HTMLResponse)
def archive_key(request: Request, key_id: str, s: Checked, f: Form, kmc: KmcDep) -> Response:
    """Archive a key (administrators), confirmed by typing its id."""
    _confirm_key(s, key_id, f)
    kmc.archive_key(key_id, actor=s.operator.name)
    return _key_done(request, f, kmc, f"archived {key_id}")


@pages.post("/keys/{key_id}/destroy", response_class=HTMLResponse)
def destroy_key(request: Request, key_id: str, s: Checked, f: Form, kmc: KmcDep) -> Response:
    """Destroy a key (administrators), confirmed by typing its id."""
    _confirm_key(s, key_id, f)
    kmc.destroy_key(key_id, actor=s.operator.name)
    return _key_done(request, f, kmc, f"destroyed {key_id}")


@pages.post("/keys/{key_id}/rotate", response_class=HTMLResponse)
def rotate_key(request: Request, key_id: str, s: Checked, f: Form, kmc: KmcDep) -> Response:
    """Rotate the owner's active key (registration officers, as ``POST
    /admin/keys/rotate``), confirmed by typing the owner's name. The new key is
    enveloped to the terminal's signing key and waits for the terminal to collect it;
    its certificate takes the subject and profile of the current one."""
    _role(s, REGISTRATION_OFFICER)
    owner = _limit(f.get("owner", ""))
    if not owner or f.get("confirm") != owner:
        raise PolicyError("type the owner's name to confirm the rotation")
    current = [k for k in kmc.keys(owner) if k["state"] == "active"]
    if [k["id"] for k in current] != [key_id]:
        raise PolicyError(f"key {key_id[:32]} is not {owner}'s active key (reload the page)")
    new_id, _, _ = kmc.rotate_key(owner, actor=s.operator.name)
    return _key_done(request, f, kmc, f"rotated {key_id}: {new_id} awaits pickup by the terminal")


@pages.get("/groups", response_class=HTMLResponse)
def groups(request: Request, s: Console, kmc: KmcDep) -> Response:
    return _render(request, "groups.html", rows=Overview(kmc).groups(), done=None)


def _members(value: str) -> list[str]:
    return [m for m in (x.strip() for x in value.replace("\n", ",").split(",")) if m][:1000]


@pages.post("/groups", response_class=HTMLResponse)
def create_group(request: Request, s: Checked, f: Form, kmc: KmcDep) -> Response:
    """Create an IM group (registration officer; the API's ``POST /admin/groups``)."""
    _role(s, REGISTRATION_OFFICER)
    group_id = _limit(f.get("id", ""), 64)
    kmc.create_group(group_id, _members(f.get("members", "")), actor=s.operator.name)
    return _render(request, "group.html", g=Overview(kmc).group(group_id), done="created")


@pages.get("/groups/{group}", response_class=HTMLResponse)
def group(request: Request, group: str, s: Console, kmc: KmcDep) -> Response:
    from mstcrypt.kmc.context import NotFoundError

    g = Overview(kmc).group(_limit(group, 64))
    if g is None:
        raise NotFoundError(f"no group {group[:64]!r}")
    return _render(request, "group.html", g=g, done=None)


@pages.post("/groups/{group}/members", response_class=HTMLResponse)
def change_group(request: Request, group: str, s: Checked, f: Form, kmc: KmcDep) -> Response:
    """Add or remove members; the group key rotates (the API's ``POST
    /admin/groups/{group}/members``)."""
    _role(s, REGISTRATION_OFFICER)
    version = kmc.change_group(
        group,
        add=_members(f.get("add", "")),
        remove=_members(f.get("remove", "")),
        actor=s.operator.name,
    )
    g = Overview(kmc).group(group)
    return _render(request, "group.html", g=g, done=f"group key version {version}")


@pages.get("/recovery", response_class=HTMLResponse)
def recoveries(request: Request, s: Console, kmc: KmcDep) -> Response:
    _role(s, KEY_RECOVERY_OFFICER)
    return _render(request, "recoveries.html", rows=Overview(kmc).recoveries())


@pages.post("/recovery", response_class=HTMLResponse)
def request_recovery(request: Request, s: Checked, f: Form, kmc: KmcDep) -> Response:
    """A recovery request (the API's ``POST /admin/recovery``): the escrowed key will be
    enveloped to the recipient's public key once a second officer approves."""
    from mstcrypt.crypto.sm2 import SM2PublicKey

    _role(s, KEY_RECOVERY_OFFICER)
    try:
        recipient = SM2PublicKey.from_bytes(bytes.fromhex(f.get("recipient", "").strip()))
    except ValueError:
        raise DecodeError("the recipient public key must be hex (04 || x || y)") from None
    reason = f.get("reason", "").strip()
    if not 3 <= len(reason) <= 500:
        raise PolicyError("give the reason (3 to 500 characters)")
    rid = kmc.request_recovery(
        _limit(f.get("key_id", ""), 64), recipient, reason=reason, actor=s.operator.name
    )
    return _render(request, "recovery.html", r=Overview(kmc).recovery(rid), done=False)


@pages.get("/recovery/{request_id}", response_class=HTMLResponse)
def recovery(request: Request, request_id: str, s: Console, kmc: KmcDep) -> Response:
    _role(s, KEY_RECOVERY_OFFICER)
    r = Overview(kmc).recovery(_limit(request_id, 64))
    return _render(request, "recovery.html", r=r, done=False)


@pages.post("/recovery/{request_id}/approve", response_class=HTMLResponse)
def approve(request: Request, request_id: str, s: Checked, f: Form, kmc: KmcDep) -> Response:
    """The second officer's approval, bound to the recipient fingerprint the page showed."""
    _role(s, KEY_RECOVERY_OFFICER)
    kmc.approve_recovery(
        request_id, actor=s.operator.name, recipient_fingerprint=f.get("fingerprint", "")
    )
    return _render(request, "recovery.html", r=Overview(kmc).recovery(request_id), done=True)


@pages.get("/audit", response_class=HTMLResponse)
def audit(
    request: Request,
    s: Console,
    kmc: KmcDep,
    actor: str = "",
    action: str = "",
    target: str = "",
    before: int | None = None,
) -> Response:
    _role(s, AUDITOR, ADMINISTRATOR)
    flt = AuditFilter(_limit(actor), _limit(action, 64), _limit(target), before)
    rows = Overview(kmc).audit(flt)
    older = rows[-1]["seq"] if len(rows) == 50 else None
    return _render(request, "audit.html", rows=rows, f=flt, older=older, report=None)


@pages.get("/audit/verify", response_class=HTMLResponse)
def audit_verify(request: Request, s: Console, kmc: KmcDep, settings: SettingsDep) -> Response:
    """The API's incremental verification: the newest signed checkpoint and the records
    after it (bounded)."""
    _role(s, AUDITOR, ADMINISTRATOR)
    report = kmc.verify_audit(incremental=True, limit=settings.audit_verify_limit)
    rows = Overview(kmc).audit(AuditFilter())
    return _render(request, "audit.html", rows=rows, f=AuditFilter(), older=None, report=report)


@pages.get("/audit/export", response_class=Response)
def audit_export(
    s: Console, kmc: KmcDep, actor: str = "", action: str = "", target: str = ""
) -> Response:
    """The filtered records (newest 10,000) as CSV, with their chain hashes."""
    _role(s, AUDITOR, ADMINISTRATOR)
    rows = Overview(kmc).audit(
        AuditFilter(_limit(actor), _limit(action, 64), _limit(target)), 10_000
    )
    return Response(
        _csv(rows),
        media_type="text/csv",
        headers={"Content-Disposition": 'attachment; filename="audit.csv"'},
    )


def _csv(rows: Iterable[dict[str, Any]]) -> str:
    import json

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["seq", "ts", "actor", "action", "target", "details", "hash"])
    for r in rows:
        cells = [
            r["seq"],
            r["ts"],
            r["actor"],
            r["action"],
            r["target"],
            json.dumps(r["details"], sort_keys=True),
            r["hash"],
        ]
        # a cell starting with =, +, - or @ would be a formula in a spreadsheet
        w.writerow(["'" + c if isinstance(c, str) and c[:1] in "=+-@" else c for c in cells])
    return buf.getvalue()


@pages.get("/compliance", response_class=HTMLResponse)
def compliance(request: Request, s: Console, kmc: KmcDep, settings: SettingsDep) -> Response:
    """The compliance report of Annexes A and B (the audit chain verified from its newest
    signed checkpoint, bounded; the CLI report verifies it whole)."""
    from mstcrypt.apps.console.compliance import charts, collect
    from mstcrypt.apps.console.compliance_map import SECTIONS

    _role(s, AUDITOR, ADMINISTRATOR)
    report = collect(kmc, audit_limit=settings.audit_verify_limit)
    return _render(request, "compliance.html", r=report, sections=SECTIONS, charts=charts(report))


@pages.get("/operators", response_class=HTMLResponse)
def operators(request: Request, s: Console, kmc: KmcDep) -> Response:
    return _render(request, "operators.html", rows=Overview(kmc).operators(), all_roles=ROLES)


router = APIRouter()
router.include_router(api)
router.include_router(pages)
router.include_router(metrics.router)  # GET /metrics (Prometheus)
