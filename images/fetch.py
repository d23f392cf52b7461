"""Fetch a URL given by a client: the project's one guard against server-side request forgery.

Every hop (the first URL and each redirect) is checked for its scheme, and every address its host
resolves to is checked *inside the connection backend*, which then connects to that same checked
address: there is no window for DNS rebinding between the check and the connect.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from dataclasses import dataclass
from urllib.parse import quote, urljoin, urlsplit

import httpcore

from errors import InputError
from telemetry import metrics

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_URL_LENGTH = 2048
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# identity encoding: the byte cap then applies to what we actually hold in memory.
HEADERS = [(b"Accept", b"image/*"), (b"User-Agent", b"imageserver/0.1"), (b"Accept-Encoding", b"identity")]
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _refused(outcome: str, detail: str, status: int = 400) -> InputError:
    """An InputError that also says which fetch outcome it is (telemetry.metrics.FETCH_OUTCOMES)."""
    error = InputError(status, detail)
    error.outcome = outcome
    return error


@dataclass(frozen=True)
class FetchPolicy:
    timeout: float = 10.0  # connect timeout, per-read timeout and total deadline for the whole fetch
    max_bytes: int = 25 * 1024**2
    max_redirects: int = 5
    allow_networks: tuple[IPNetwork, ...] = ()  # allowed even if private/loopback


def parse_networks(text: str) -> tuple[IPNetwork, ...]:
    """"127.0.0.0/8, 10.1.2.3" -> networks (a bare address is a /32 or /128); commas or spaces separate."""
    networks = []
    for item in text.replace(",", " ").split():
        try:
            networks.append(ipaddress.ip_network(item))
        except ValueError as exc:
            raise ValueError(f"bad network {item!r} in allow-list: {exc}") from None
    return tuple(networks)


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, 6to4, NAT64, IPv4-compatible), if any."""
    for v4 in (ip.ipv4_mapped, ip.sixtofour):
        if v4 is not None:
            return v4
    if ip in _NAT64 or (int(ip) >> 32 == 0 and int(ip) > 1):  # ::/96 but not :: or ::1
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _why_forbidden(ip: IPAddress) -> str | None:
    if isinstance(ip, ipaddress.IPv6Address) and (v4 := _embedded_ipv4(ip)) is not None:
        # Judge these by the IPv4 address they reach, not by the IPv6 range they sit in.
        reason = _why_forbidden(v4)
        return reason and f"an IPv6 form of {v4} ({reason})"
    for attribute, reason in (
        ("is_loopback", "a loopback address"),
        ("is_link_local", "a link-local address"),  # includes cloud metadata 169.254.169.254
        ("is_unspecified", "an unspecified address"),
        ("is_multicast", "a multicast address"),
        ("is_reserved", "a reserved address"),  # includes broadcast 255.255.255.255
        ("is_private", "a private address"),
    ):
        if getattr(ip, attribute):
            return reason
    if not ip.is_global:  # e.g. 100.64.0.0/10 (CGNAT), neither private nor global to Python
        return "a non-public address"
    return None


def _check_address(host: str, ip: IPAddress, policy: FetchPolicy) -> None:
    v4 = _embedded_ipv4(ip) if isinstance(ip, ipaddress.IPv6Address) else None
    if any(ip in net or (v4 is not None and v4 in net) for net in policy.allow_networks):
        return
    if reason := _why_forbidden(ip):
        raise _refused("blocked", f"URL host {host!r} resolves to {ip}, {reason}; fetching it is not allowed")


class _GuardedBackend(httpcore.AnyIOBackend):
    """Resolves the host itself, refuses if ANY address is forbidden, then connects by checked IP.

    TLS is unaffected: httpcore passes the URL's host name to start_tls for SNI and certificate checks.
    """

    def __init__(self, policy: FetchPolicy):
        self._policy = policy

    async def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise _refused("connect_error", f"URL host {host!r} could not be resolved: {exc}") from None
        # Scope ids ("fe80::1%eth0") are dropped: such addresses are link-local, hence refused anyway.
        ips = list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos))
        for ip in ips:  # check them all before connecting to any
            _check_address(host, ip, self._policy)
        error: Exception = _refused("connect_error", f"URL host {host!r} has no addresses")
        for ip in ips:
            try:
                return await super().connect_tcp(str(ip), port, timeout, local_address, socket_options)
            except httpcore.ConnectError as exc:
                error = exc
        raise error


def _request_target(url: str) -> tuple[httpcore.URL, bytes]:
    """Validate one hop's URL; return httpcore's URL and the Host header for it."""
    try:
        return _parse_target(url)
    except InputError as exc:
        exc.outcome = "invalid_url"
        raise


def _parse_target(url: str) -> tuple[httpcore.URL, bytes]:
    if len(url) > MAX_URL_LENGTH:
        raise InputError(400, f"URL is longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InputError(400, f"invalid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise InputError(400, f"URL scheme {parts.scheme!r} is not supported; only http and https URLs are accepted")
    if not parts.hostname:
        raise InputError(400, "URL has no host")
    if "@" in parts.netloc:
        raise InputError(400, "URLs with credentials (user:password@) are not accepted")
    try:
        host = parts.hostname.encode("ascii" if parts.hostname.isascii() else "idna")
    except UnicodeError:
        raise InputError(400, f"URL host {parts.hostname!r} is not a valid host name") from None
    # httpcore's default Host header would leave IPv6 literals unbracketed, so build our own.
    host_header = b"[%b]" % host if b":" in host else host
    if port is not None:
        host_header += b":%d" % port
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    target = quote(target, safe="!#$%&'()*+,/:;=?@[]~")  # percent-encode spaces, non-ASCII, controls
    return httpcore.URL(scheme=parts.scheme.encode(), host=host, port=port, target=target.encode()), host_header


def _header(response: httpcore.Response, name: bytes) -> bytes | None:
    return next((value for key, value in response.headers if key.lower() == name), None)


def _too_large(max_bytes: int) -> InputError:
    return _refused("too_large", f"URL content is larger than the {max_bytes}-byte limit (FETCH_MAX_BYTES)", 413)


async def _read_capped(response: httpcore.Response, max_bytes: int) -> bytes:
    length = _header(response, b"content-length")
    if length and length.strip().isdigit() and int(length) > max_bytes:
        raise _too_large(max_bytes)  # refuse before reading anything
    body = bytearray()
    async for chunk in response.aiter_stream():  # the header may be absent or lie: cap while streaming
        body += chunk
        if len(body) > max_bytes:
            raise _too_large(max_bytes)
    if not body:
        raise _refused("http_error", "URL returned no data")
    return bytes(body)


async def _follow(pool: httpcore.AsyncConnectionPool, url: str, policy: FetchPolicy) -> bytes:
    timeouts = {"connect": policy.timeout, "read": policy.timeout, "write": policy.timeout, "pool": policy.timeout}
    for _ in range(policy.max_redirects + 1):
        target, host_header = _request_target(url)
        headers = [(b"Host", host_header), *HEADERS]
        async with pool.stream("GET", target, headers=headers, extensions={"timeout": timeouts}) as response:
            location = _header(response, b"location")
            if response.status in REDIRECT_STATUSES and location:
                url = urljoin(url, location.decode("latin-1").strip())  # re-checked on the next pass
                continue
            if not 200 <= response.status < 300:
                raise _refused("http_error", f"URL returned HTTP {response.status}")
            return await _read_capped(response, policy.max_bytes)
    raise _refused("http_error", f"too many redirects (more than {policy.max_redirects})")


async def fetch_url(url: str, policy: FetchPolicy) -> bytes:
    """GET `url` under `policy` and return the body; any refusal or failure is an InputError (4xx).
    Each fetch is counted by outcome and timed (GET /metrics; a debug line with the request id)."""
    began, outcome = time.perf_counter(), "error"
    try:
        data = await _fetch(url, policy)
        outcome = "ok"
        return data
    except InputError as exc:
        outcome = getattr(exc, "outcome", "error")
        if outcome == "too_large":
            metrics.rejected("too_large")
        raise
    finally:
        metrics.url_fetch(outcome, time.perf_counter() - began)


async def _fetch(url: str, policy: FetchPolicy) -> bytes:
    _request_target(url)  # refuse a malformed URL before setting anything up
    try:
        # The total deadline: per-read timeouts alone let a server that drips bytes hold us forever.
        async with asyncio.timeout(policy.timeout):
            # A pool per call, built directly: no proxy settings are read from the environment.
            backend = _GuardedBackend(policy)
            async with httpcore.AsyncConnectionPool(network_backend=backend, retries=0) as pool:
                return await _follow(pool, url, policy)
    except (TimeoutError, httpcore.TimeoutException):
        raise _refused("timeout", f"fetching {url} timed out after {policy.timeout:g} s") from None
    except httpcore.ConnectError as exc:
        raise _refused("connect_error", f"could not connect to fetch {url}: {exc or 'connection failed'}") from None
    except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.UnsupportedProtocol) as exc:
        raise InputError(400, f"fetching {url} failed: {exc or type(exc).__name__}") from None
