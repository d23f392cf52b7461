"""With API_KEY set, every route needs the key but those PUBLIC_ROUTES names: one pure-ASGI check for all.

Per-route dependencies missed the routes nobody gave one (/info, /docs, /openapi.json, the page, its
static files); a middleware in front of the router cannot miss a route. The key comes in header
X-API-Key, compared in constant time. A browser cannot put a header on a page load, a <script> or an
<img>, so on GET and HEAD only the cookie the key page sets counts too: it is SameSite=Strict (another
site cannot make the browser send it) and no GET changes anything. POST and DELETE need the header,
which web/static/app.js sends from local storage. A cookie that passed is handed on as the header, so
the routes' own checks (apis/base.py's authorize) agree with this one.

A refused request gets a 401 in its route's shape (apis/error_shapes.py); a browser asking for HTML
gets a small self-contained page that asks for the key, stores it and reloads.
"""

import hmac
from urllib.parse import unquote

from fastapi.responses import HTMLResponse
from starlette.requests import cookie_parser

from apis.error_shapes import error_body

KEY_NAME = "pictrace-api-key"  # the page's local-storage key (web/static/app.js) and the cookie's name
HEADER = b"x-api-key"
COOKIE_METHODS = ("GET", "HEAD")
MESSAGE = 'missing or wrong X-API-Key header: send the server\'s API key as header "X-API-Key: <key>"'
_NO_STORE = {"Cache-Control": "no-store", "Vary": "Accept, Cookie, X-API-Key"}


class ApiKeyMiddleware:
    def __init__(self, app, api_key: str | None, public_routes: tuple[str, ...] = ("/health",)):
        self.app = app
        self.expected = api_key.encode("utf-8") if api_key else None
        self.exact = frozenset(route for route in public_routes if not route.endswith("*"))
        self.prefixes = tuple(route[:-1] for route in public_routes if route.endswith("*"))

    def is_public(self, path: str) -> bool:
        return path in self.exact or path.startswith(self.prefixes)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.expected is None or self.is_public(scope["path"]):
            return await self.app(scope, receive, send)
        headers = scope["headers"]
        given = next((value for name, value in headers if name == HEADER), None)
        from_cookie = given is None and scope["method"] in COOKIE_METHODS
        if from_cookie:
            given = _cookie(headers)
        if given is not None and hmac.compare_digest(given, self.expected):
            if from_cookie:
                scope = {**scope, "headers": [*headers, (HEADER, self.expected)]}
            return await self.app(scope, receive, send)
        response = self._refusal(scope, sent=given is not None)
        await response(scope, receive, send)

    def _refusal(self, scope, sent: bool):
        accept = b", ".join(value for name, value in scope["headers"] if name == b"accept")
        if scope["method"] in COOKIE_METHODS and b"text/html" in accept:
            why = "The key this browser sent was refused: enter the right one." if sent else "Enter it to go on."
            return HTMLResponse(KEY_PAGE.replace("{why}", why), status_code=401,
                                headers={**_NO_STORE, "Content-Security-Policy": _PAGE_POLICY})
        return error_body(scope["path"], 401, MESSAGE, {**_NO_STORE, "WWW-Authenticate": 'APIKey header="X-API-Key"'})


def _cookie(headers) -> bytes | None:
    text = "; ".join(value.decode("latin-1") for name, value in headers if name == b"cookie")
    value = cookie_parser(text).get(KEY_NAME) if text else None
    return unquote(value).encode("utf-8") if value else None


# inline only: the page must work before anything else on the server may be loaded
_PAGE_POLICY = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
                "form-action 'none'")
KEY_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>API key needed</title>
<link rel="icon" href="data:,">
<style>
  body { font: 16px/1.5 system-ui, sans-serif; margin: 0; min-height: 100vh; display: grid; place-items: center;
         background: #f4f5f7; color: #1d2330; }
  main { background: #fff; padding: 2rem; border-radius: 12px; box-shadow: 0 2px 12px #0002; max-width: 26rem; }
  h1 { font-size: 1.3rem; margin: 0 0 .5rem; }
  form { display: flex; gap: .5rem; margin: 1rem 0; }
  input { flex: 1; padding: .5rem; font: inherit; border: 1px solid #b8bfcc; border-radius: 6px; }
  button { padding: .5rem 1rem; font: inherit; border: 0; border-radius: 6px; background: #2b59c3; color: #fff; }
  small { color: #5b6475; }
</style>
</head>
<body>
<main>
  <h1>This server needs its API key</h1>
  <p id="why">{why}</p>
  <form id="key-form">
    <input id="key" type="password" autocomplete="current-password" aria-label="API key" placeholder="API key"
           required autofocus>
    <button type="submit">Continue</button>
  </form>
  <small>Kept in this browser (local storage, and a cookie for this site alone) and sent as header X-API-Key.</small>
</main>
<script>
"use strict";
document.getElementById("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const key = document.getElementById("key").value.trim();
  if (!key) return;
  localStorage.setItem("pictrace-api-key", key);
  const secure = location.protocol === "https:" ? "; Secure" : "";
  document.cookie = `pictrace-api-key=${encodeURIComponent(key)}; Path=/; Max-Age=31536000; SameSite=Strict${secure}`;
  location.reload();
});
</script>
</body>
</html>
"""
