"""Security checks in front of every request (a plain ASGI middleware, cheap per request).

In order: the Host header must name this server (stops DNS rebinding: a page on
``evil.example`` that resolves to 127.0.0.1 sends ``Host: evil.example``); a cross-site
``Origin`` is refused; the access token is checked when there is one; request bodies are
capped; and every response gets a Content-Security-Policy and related headers.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs, urlsplit

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Name of the cookie that carries the token after ``/?token=...``.
COOKIE = "mmsearch_token"
#: Paths answered without a token (a liveness probe reveals nothing).
OPEN_PATHS = frozenset({"/api/health"})
#: The page's policy: only its own scripts and styles, no inline code, no framing.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-resource-policy", b"same-origin"),
]
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


@dataclass(frozen=True)
class Policy:
    """What the middleware enforces.

    Attributes:
        hosts: host names (no port) requests may address; IP literals are accepted only
            when ``any_ip`` is set (a server bound to every interface).
        token: the access token, or None when none is required (loopback only).
        max_body: largest request body in bytes.
        any_ip: accept any IP-literal Host (DNS rebinding needs a name, not an address).
    """

    hosts: frozenset[str]
    token: str | None = None
    max_body: int = 20 * 1024 * 1024
    any_ip: bool = False
    origins: frozenset[str] = frozenset()  # other sites' origins allowed (CORS): the user's

    def origin_allowed(self, origin: str | None) -> bool:
        """Whether ``origin`` is one the user allowed (``--allow-origin``), exactly."""
        return bool(origin) and origin.rstrip("/").lower() in self.origins

    def host_ok(self, host: str) -> bool:
        name = host_name(host)
        if not name:
            return False
        if name in self.hosts:
            return True
        if self.any_ip:
            try:
                ipaddress.ip_address(name)
                return True
            except ValueError:
                return False
        return False


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_name(host: str) -> str:
    """The name part of a Host header value, lower-case: ``[::1]:80`` → ``::1``."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[1:end] if end > 0 else ""
    name, _, port = host.partition(":")
    if port and not port.isdigit():
        return ""
    return name


def allowed_hosts(bind: str, extra: Iterable[str] = ()) -> frozenset[str]:
    """Host names a server bound to ``bind`` answers to: the loopback names, the bind
    address itself (unless it is a wildcard) and the names given."""
    names = set(LOOPBACK_NAMES) | {host_name(h) or h.lower() for h in extra}
    if bind not in ("0.0.0.0", "::", ""):
        names.add(bind.strip("[]").lower())
    return frozenset(names)


class SecurityMiddleware:
    """ASGI middleware enforcing a :class:`Policy` (see the module docstring)."""

    def __init__(self, app: ASGIApp, policy: Policy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            await _send_json(send, *refusal)
            return
        if self.policy.token and _query_token(scope) is not None:
            await self._login(scope, send)
            return
        length = headers.get("content-length", "0")
        if not length.isdigit() or int(length) > self.policy.max_body:
            await _send_json(send, 413, f"request body over {self.policy.max_body:,} bytes")
            return
        body, ok = await _read_body(receive, self.policy.max_body)
        if not ok:
            await _send_json(send, 413, f"request body over {self.policy.max_body:,} bytes")
            return
        await self.app(
            scope, _replay(body, receive), _with_headers(send, self._cors(scope, headers))
        )

    def _cors(self, scope: Scope, headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
        """CORS headers for an allowed origin's request; and, while any origin is allowed,
        thumbnails embeddable by other sites (their pages show them as <img>)."""
        extra: list[tuple[bytes, bytes]] = []
        origin = headers.get("origin")
        if self.policy.origin_allowed(origin):
            extra += [(b"access-control-allow-origin", origin.encode()), (b"vary", b"origin")]
        if self.policy.origins and scope["path"].endswith("/thumbnail"):
            extra.append((b"cross-origin-resource-policy", b"cross-origin"))
        return extra

    def _refusal(self, scope: Scope, headers: dict[str, str]) -> tuple[int, str] | None:
        host = headers.get("host")
        if host is None:
            return 400, "missing Host header"
        if not self.policy.host_ok(host):
            return 421, f"this server does not answer for host {host!r}"
        origin = headers.get("origin")
        if self.policy.origin_allowed(origin):
            pass  # a site the user allowed: CORS headers are added to its answers
        elif origin and origin != "null" and not self.policy.host_ok(urlsplit(origin).netloc):
            return 403, "cross-origin requests are not allowed"
        if self.policy.token and scope["path"] not in OPEN_PATHS:
            if not _authorised(headers, self.policy.token) and _query_token(scope) is None:
                return 401, "a token is needed: open the URL printed by `mmsearch serve`"
            given = _query_token(scope)
            if given is not None and not hmac.compare_digest(given, self.policy.token):
                return 401, "wrong token"
        return None

    async def _login(self, scope: Scope, send: Send) -> None:
        """``/?token=...`` with the right token: set the cookie, redirect to the bare URL
        (so the token does not stay in the address bar or the history)."""
        cookie = f"{COOKIE}={self.policy.token}; Path=/; HttpOnly; SameSite=Strict"
        await send(
            {
                "type": "http.response.start",
                "status": 303,
                "headers": [
                    (b"location", scope["path"].encode() or b"/"),
                    (b"set-cookie", cookie.encode()),
                    *HEADERS,
                ],
            }
        )
        await send({"type": "http.response.body", "body": b""})


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


def _query_token(scope: Scope) -> str | None:
    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token")
    return values[0] if values else None


def _authorised(headers: dict[str, str], token: str) -> bool:
    scheme, _, given = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(given.strip(), token):
        return True
    cookie = SimpleCookie()
    try:
        cookie.load(headers.get("cookie", ""))
    except Exception:  # noqa: BLE001 - a malformed cookie header is just no cookie
        return False
    morsel = cookie.get(COOKIE)
    return morsel is not None and hmac.compare_digest(morsel.value, token)


async def _read_body(receive: Receive, limit: int) -> tuple[bytes, bool]:
    """The whole body, or (partial, False) once it passes ``limit`` (chunked uploads
    carry no Content-Length, so the count is what bounds them)."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return b"", False
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks), True


def _replay(body: bytes, receive: Receive) -> Receive:
    """The buffered body once, then the real channel (which reports the disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _with_headers(send: Send, first: Iterable[tuple[bytes, bytes]] = ()) -> Send:
    own = list(first)  # these win over HEADERS (e.g. a cross-origin resource policy)

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            present = {k.lower() for k, _ in message.get("headers", [])}
            present |= {k for k, _ in own}
            extra = own + [(k, v) for k, v in HEADERS if k not in present]
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)

    return wrapped


async def _send_json(send: Send, status: int, message: str) -> None:
    body = json.dumps({"error": message, "status": status}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *HEADERS,
    ]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
