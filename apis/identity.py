"""Who is asking: a user id from a signed cookie, and the check that keeps other sites from changing records.

- UserCookieMiddleware (pure ASGI): every HTTP request gets a user id in scope["state"]["user"]. The id
  comes from cookie `imageserver-user`, `<id>.<signature>`, where the signature is HMAC-SHA256 of the id
  under the server's key, compared in constant time. No cookie, or one whose signature does not verify (a
  tampered or foreign one), gets a new random id (144 bits from `secrets`), and the response sets it:
  HttpOnly (no script reads it), Path=/, Max-Age of 400 days (the longest browsers keep one; a page
  load, Sec-Fetch-Mode: navigate, sets it again so an active user's never runs out), Secure when the
  request came over https, and SameSite=Lax.

  Why Lax and not Strict: a browser withholds a Strict cookie when the user follows a link from another
  site to this one. The middleware would then see no cookie, give the visitor a new id and set it over
  the old cookie, and the user would lose their gallery on every such link. Lax sends the cookie on a
  top-level GET from elsewhere (which reads, never changes) and withholds it on a cross-site POST, form or
  fetch. Cross-site writes are refused outright by `same_site_only`, not merely left without a cookie.

- current_user: the FastAPI dependency that gives a route that id.
- same_site_only: the dependency for every route that creates or changes something. A POST, PUT, PATCH or
  DELETE is refused 403 when the browser says it comes from another site (`Sec-Fetch-Site: cross-site`),
  or when it carries an `Origin` other than this server's own (scheme://host[:port], from the Host
  header), "null" included. A client that sends neither header (curl, client.py) is let through: it is
  not a browser being driven by another site. Behind a reverse proxy, the proxy must pass the Host the
  browser used (nginx: `proxy_set_header Host $host`) and the scheme in X-Forwarded-Proto (uvicorn
  takes it from a proxy in FORWARDED_ALLOW_IPS, 127.0.0.1 by default), or the browser's own Origin will
  not match and its writes are refused.

The key: SECRET_KEY when set (every server sharing a cookie must share it); else 32 random bytes generated
once into DATA_DIR/secret_key (mode 0600) and read by every process. The file is written complete under a
temporary name and hard-linked into place, which fails when the name exists, so two processes starting
together agree on whichever key was linked first.
"""

import base64
import hashlib
import hmac
import os
import re
import secrets
from pathlib import Path

from fastapi import HTTPException, Request
from starlette.requests import cookie_parser

from atomic_files import fsync

COOKIE = "imageserver-user"
KEY_FILE = "secret_key"
MAX_AGE = 400 * 24 * 3600  # the longest a browser keeps a cookie (Chrome caps Max-Age there)
_DOMAIN = b"imageserver-user\x00"  # a signature made here means nothing for any other use of the key
_ID = re.compile(r"^[A-Za-z0-9_-]{24}$")
_UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_DEFAULT_PORTS = {"http": 80, "https": 443}


def load_key(secret_key: str | None, data_dir: str | os.PathLike) -> bytes:
    """SECRET_KEY's bytes when it is set; else the key kept in DATA_DIR/secret_key, created if missing."""
    if secret_key:
        return secret_key.encode("utf-8")
    path = Path(data_dir) / KEY_FILE
    try:
        return _read_key(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    _create_key(path)
    return _read_key(path)


def _read_key(path: Path) -> bytes:
    text = path.read_text(encoding="ascii").strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) < 16:
        raise RuntimeError(f"{path}: not a key this server wrote (expected hex); remove it to have a new one made")
    return key


def _create_key(path: Path) -> None:
    """Write a new key complete under a temporary name, then link it to `path` unless it exists by now."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
    temp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(temp, flags, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(secrets.token_hex(32) + "\n")
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(temp, path)  # atomic, and never replaces: the first process to link wins
        except FileExistsError:
            return
        except OSError:  # a filesystem without hard links: exclusive create of the name itself
            _create_exclusive(path, temp.read_bytes())
    finally:
        temp.unlink(missing_ok=True)
    fsync(path.parent)


def _create_exclusive(path: Path, content: bytes) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "wb") as out:
        out.write(content)
        out.flush()
        os.fsync(out.fileno())


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def sign(key: bytes, user: str) -> str:
    """The cookie value for `user`: `<id>.<HMAC-SHA256 of the id, base64url>`."""
    return f"{user}.{_b64(hmac.new(key, _DOMAIN + user.encode('ascii'), hashlib.sha256).digest())}"


def verify(key: bytes, value: str | None) -> str | None:
    """The user id a cookie value carries, or None when it is absent, malformed or not signed with `key`."""
    if not value or value.count(".") != 1:
        return None
    user, _ = value.split(".")
    if not _ID.match(user):
        return None
    if not hmac.compare_digest(sign(key, user).encode("ascii"), value.encode("ascii", "replace")):
        return None
    return user


def new_user() -> str:
    return _b64(secrets.token_bytes(18))


def _header(headers, name: bytes) -> str | None:
    value = next((v for n, v in headers if n == name), None)
    return value.decode("latin-1") if value is not None else None


class UserCookieMiddleware:
    """Put the request's user id in scope["state"]["user"]; set the cookie when the id is new or a page loads.

    UserCookieMiddleware(app, secret_key=settings.secret_key, data_dir=settings.data_dir), or key=bytes.
    """

    def __init__(self, app, secret_key: str | None = None, data_dir: str | os.PathLike | None = None, *,
                 key: bytes | None = None):
        if key is None:
            if not secret_key and data_dir is None:
                raise ValueError("UserCookieMiddleware needs secret_key, data_dir or key")
            key = load_key(secret_key, data_dir)
        self.app = app
        self.key = key

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        text = "; ".join(v.decode("latin-1") for n, v in scope["headers"] if n == b"cookie")
        user = verify(self.key, cookie_parser(text).get(COOKIE)) if text else None
        refresh = user is not None and _header(scope["headers"], b"sec-fetch-mode") == "navigate"
        if user is None:
            user = new_user()
            refresh = True
        state = scope.get("state")
        if not isinstance(state, dict):
            state = scope["state"] = {}
        state["user"] = user
        if not refresh:
            return await self.app(scope, receive, send)
        cookie = f"{COOKIE}={sign(self.key, user)}; Path=/; Max-Age={MAX_AGE}; HttpOnly; SameSite=Lax"
        if scope.get("scheme") == "https":
            cookie += "; Secure"
        header = (b"set-cookie", cookie.encode("ascii"))

        async def send_with_cookie(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), header]}
            await send(message)

        await self.app(scope, receive, send_with_cookie)


def current_user(request: Request) -> str:
    """FastAPI dependency: the id UserCookieMiddleware gave this request."""
    state = request.scope.get("state")
    user = state.get("user") if isinstance(state, dict) else None
    if not user:  # the middleware is not installed: a wiring bug, not the client's fault
        raise RuntimeError("no user id on the request: UserCookieMiddleware must wrap the app")
    return user


def own_origin(scope) -> str | None:
    """scheme://host[:port] of this request, from its Host header (the default port left out)."""
    host = _header(scope["headers"], b"host")
    if not host:
        return None
    return _normal_origin(f"{scope.get('scheme', 'http')}://{host.strip()}")


def _normal_origin(origin: str) -> str | None:
    match = re.match(r"^([a-z][a-z0-9+.-]*)://(\[[0-9a-f:.]+\]|[^:/\[\]]+)(?::(\d{1,5}))?/?$", origin.strip().lower())
    if not match:
        return None
    scheme, host, port = match.groups()
    if port is not None and int(port) == _DEFAULT_PORTS.get(scheme):
        port = None
    return f"{scheme}://{host}" + (f":{int(port)}" if port is not None else "")


def cross_site_reason(scope) -> str | None:
    """Why this request looks like another site's (None when it does not, or changes nothing)."""
    if scope.get("method") not in _UNSAFE_METHODS:
        return None
    headers = scope["headers"]
    if (_header(headers, b"sec-fetch-site") or "").strip().lower() == "cross-site":
        return "cross-site request refused: records can only be changed from this server's own pages"
    origin = _header(headers, b"origin")
    if origin is not None:
        given = _normal_origin(origin)
        if given is None or given != own_origin(scope):
            return f"request from origin {origin.strip()!r} refused: records can only be changed from this server's own pages"
    return None


def same_site_only(request: Request) -> None:
    """FastAPI dependency: 403 {"detail"} for a state-changing request another site made a browser send."""
    reason = cross_site_reason(request.scope)
    if reason is not None:
        raise HTTPException(status_code=403, detail=reason)
