"""Job callbacks: which URLs they may go to, and their signed delivery.

A callback URL must be absolute http(s), without `user:password@`, with a valid port, and its host
must resolve only to public unicast addresses; the operator's allow-list (FHE_SERVER_CALLBACK_ALLOW)
opens the host names and address ranges it names, and nothing else. The URL is checked when the job
is submitted and again right before each delivery, and each delivery connects to the address it
has just checked (the host name still goes in `Host` and in TLS), so a name that resolves elsewhere
the second time (DNS rebinding) cannot steer it. Redirects are not followed. Each body is signed
with HMAC-SHA256 under a secret per token, in the format `client.webhook` verifies.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import certifi
import httpx

from fhe.contract.atomic import open_atomic
from fhe.contract.callback_signature import SIGNATURE_HEADER, sign_callback
from server import errors
from server.allow_list import HOST_NAME, AllowList, IPAddress, IPNetwork, canonical, host_name

if TYPE_CHECKING:
    from server.settings import ServerSettings

log = logging.getLogger("fhe_server.callbacks")


IDEMPOTENCY_HEADER = "Idempotency-Key"
"""Names one job's end: every delivery of it (retries, or another replica's) carries the same
value, also in the body as `delivery_id`, so a receiver keeps the first and drops the rest."""
SIGNING_KEY_FILE = "callback-signing.key"
"""The server's callback signing key in the data directory (32 random bytes, mode 0600)."""
MAX_URL_LENGTH = 2048
RESOLVE_TIMEOUT_SECONDS = 5.0
MAX_ADDRESSES_TRIED = 4
LOCALHOST = (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))

BLOCKED_NETWORKS: tuple[tuple[IPNetwork, str], ...] = tuple(
    (ipaddress.ip_network(network), reason)
    for network, reason in (
        ("0.0.0.0/8", "this network"),
        ("100.64.0.0/10", "shared address space"),
        ("192.0.0.0/24", "IETF protocol assignments"),
        ("192.88.99.0/24", "6to4 relay anycast"),
        ("198.18.0.0/15", "benchmarking"),
        ("240.0.0.0/4", "reserved"),
        ("::/8", "reserved (IPv4-compatible, NAT64 and other embeddings)"),
        ("100::/64", "discard-only"),
        ("2001::/23", "IETF protocol assignments (Teredo and others)"),
        ("2001:db8::/32", "documentation"),
        ("5f00::/16", "segment routing"),
        ("fec0::/10", "site-local"),
    )
)
"""Ranges refused beyond what `ipaddress` calls non-global (its list varies by Python version)."""

SIX_TO_FOUR = ipaddress.ip_network("2002::/16")


class CallbackRefused(Exception):
    """A callback URL that may not be used; `transient` when only its resolution failed."""

    def __init__(self, code: str, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.transient = transient


def _invalid(message: str) -> CallbackRefused:
    return CallbackRefused("invalid_callback_url", message)


def address_refusal(address: IPAddress) -> str | None:
    """Why a callback may not go to `address` (loopback, private...); None for public unicast."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address_refusal(address.ipv4_mapped)
        if address in SIX_TO_FOUR and address.sixtofour is not None:
            embedded = address_refusal(address.sixtofour)
            if embedded:
                return f"6to4 of a {embedded} address"
    checks = (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("private", address.is_private),
        ("reserved", address.is_reserved),
        ("site-local", getattr(address, "is_site_local", False)),
    )
    for reason, applies in checks:
        if applies:
            return reason
    for network, reason in BLOCKED_NETWORKS:
        if address.version == network.version and address in network:
            return reason
    if not address.is_global:
        return "not globally routable"
    return None


@dataclass(frozen=True)
class CallbackURL:
    """A callback URL taken apart: what to resolve, and what to send as `Host` and TLS name."""

    url: str
    scheme: str
    host: str
    literal: IPAddress | None
    port: int
    host_header: str
    target: str

    def pinned(self, address: IPAddress) -> httpx.URL:
        """The URL with its host replaced by `address`, so the connection goes to that address."""
        return httpx.URL(
            scheme=self.scheme, host=str(address), port=self.port, raw_path=self.target.encode()
        )


def _ipv4_literal(host: str) -> ipaddress.IPv4Address | None:
    """The address an IPv4 literal in any spelling stands for (127.1, 2130706433, 0x7f000001,
    017700000001, as inet_aton reads them); None for a host name."""
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def _is_localhost(host: str) -> bool:
    """True for localhost and its subdomains, which always mean loopback (RFC 6761)."""
    name = host_name(host)
    return name == "localhost" or name.endswith(".localhost")


def parse_callback_url(url: str) -> CallbackURL:
    """Take an absolute http(s) URL apart; CallbackRefused (invalid_callback_url) otherwise."""
    if len(url) > MAX_URL_LENGTH:
        raise _invalid(f"the callback URL is longer than {MAX_URL_LENGTH} characters")
    if not url.isprintable() or " " in url:
        raise _invalid("the callback URL holds spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise _invalid(f"the callback URL {url!r} is malformed: {error}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _invalid(f"the callback URL must be absolute http(s), not {url!r}")
    if "@" in parts.netloc:
        raise _invalid("the callback URL may not hold a user name or password (user:pw@)")
    if port == 0:
        raise _invalid("the callback URL's port must be between 1 and 65535")
    host = parts.hostname
    literal: IPAddress | None = None
    if ":" in host:
        try:
            literal = ipaddress.IPv6Address(host)
        except ValueError:
            raise _invalid(f"the callback URL's host {host!r} is no IPv6 address") from None
        shown = f"[{literal.compressed}]"
    else:
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise _invalid(f"the callback URL's host {host!r} is no valid host name") from None
        if not HOST_NAME.fullmatch(host_name(host)):
            raise _invalid(f"the callback URL's host {host!r} is no valid host name")
        literal = _ipv4_literal(host)
        shown = host
    safe = "/%:@!$&'()*+,;=-._~"
    target = quote(parts.path or "/", safe=safe)
    if parts.query:
        target += "?" + quote(parts.query, safe=safe + "?")
    return CallbackURL(
        url=url,
        scheme=parts.scheme,
        host=host,
        literal=literal,
        port=port or (443 if parts.scheme == "https" else 80),
        host_header=shown if port is None else f"{shown}:{port}",
        target=target,
    )


def _getaddrinfo(host: str, port: int) -> list[IPAddress]:
    found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[IPAddress] = []
    for _, _, _, _, sockaddr in found:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


async def resolve(parsed: CallbackURL) -> list[IPAddress]:
    """Every address the URL's host stands for (in a thread: getaddrinfo blocks)."""
    if parsed.literal is not None:
        return [parsed.literal]
    if _is_localhost(parsed.host):
        return list(LOCALHOST)
    try:
        addresses = await asyncio.wait_for(
            asyncio.to_thread(_getaddrinfo, parsed.host, parsed.port), RESOLVE_TIMEOUT_SECONDS
        )
    except (OSError, UnicodeError, ValueError, TimeoutError) as error:
        raise CallbackRefused(
            "invalid_callback_url",
            f"the callback host {parsed.host!r} does not resolve ({type(error).__name__})",
            transient=True,
        ) from None
    if not addresses:
        raise CallbackRefused(
            "invalid_callback_url",
            f"the callback host {parsed.host!r} resolves to no address",
            transient=True,
        )
    return addresses


def refusal(parsed: CallbackURL, addresses: list[IPAddress], allow: AllowList) -> str | None:
    """Why the URL may not be called at these addresses; None when it may."""
    if allow.allows_host(parsed.host):
        return None
    for address in addresses:
        if allow.allows_address(address):
            continue
        reason = address_refusal(canonical(address))
        if reason is None:
            continue
        if parsed.literal is not None or _is_localhost(parsed.host):
            shown = canonical(address)
            if parsed.host == str(shown):
                return f"{parsed.host} is {reason}"
            return f"{parsed.host} is {shown} ({reason})"
        log.info("callback host %s refused: it resolves to %s (%s)", parsed.host, address, reason)
        return f"{parsed.host} resolves to a refused address ({reason})"
    return None


async def check_callback_url(url: str, allow: AllowList) -> tuple[CallbackURL, list[IPAddress]]:
    """The parsed URL and its checked addresses; CallbackRefused when it may not be called."""
    parsed = parse_callback_url(url)
    addresses = await resolve(parsed)
    reason = refusal(parsed, addresses, allow)
    if reason is not None:
        raise CallbackRefused(
            "callback_not_allowed",
            f"{reason}; callbacks go only to public addresses unless FHE_SERVER_CALLBACK_ALLOW "
            "names them",
        )
    return parsed, addresses


async def checked_callback_url(url: str | None, allow: AllowList) -> str | None:
    """The callback URL of a job submission when it may be called; 400 otherwise."""
    if not url:
        return None
    try:
        await check_callback_url(url, allow)
    except CallbackRefused as refused:
        raise errors.from_code(refused.code, refused.message) from None
    return url


def _write_new_key(path: Path) -> None:
    """Create the key file with 32 random bytes, mode 0600, unless another process did first."""
    with open_atomic(path, sync=True, exclusive=True, permissions=0o600) as handle:
        handle.write(os.urandom(32))


@functools.cache
def _signing_key(data_dir: Path, configured: str) -> bytes:
    if configured:
        return configured.encode()
    path = data_dir / SIGNING_KEY_FILE
    if not path.is_file():
        data_dir.mkdir(parents=True, exist_ok=True)
        _write_new_key(path)
    key = path.read_bytes()
    if len(key) < 32:
        raise errors.ConfigurationError(
            f"{path} holds {len(key)} bytes, not a 32-byte callback signing key"
        )
    return key


def signing_key(settings: ServerSettings) -> bytes:
    """FHE_SERVER_CALLBACK_SIGNING_KEY, or the random key kept in the data directory."""
    return _signing_key(settings.data_dir, settings.callback_signing_key.get_secret_value())


def callback_secret(key: bytes, owner: str | None) -> str:
    """The secret signing one token's callbacks: HMAC-SHA256(server key, token name)."""
    name = owner or ""
    return "whsec_" + hmac.new(key, name.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Delivery:
    """How one delivery went: delivered or not, the error, and whether trying again may help."""

    delivered: bool
    error: str | None = None
    retry: bool = True


class CallbackSender:
    """Delivers signed callbacks to checked addresses only, without following redirects."""

    def __init__(
        self,
        allow: AllowList,
        key: bytes,
        timeout_seconds: float,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.allow = allow
        self.key = key
        self.timeout_seconds = timeout_seconds
        self.tls = tls or ssl.create_default_context(cafile=certifi.where())

    def signed(self, owner: str | None, payload: dict[str, Any]) -> tuple[bytes, str]:
        """The JSON body and its `X-FHE-Signature` under the owner's secret, signed now."""
        body = json.dumps(payload, separators=(",", ":")).encode()
        return body, sign_callback(callback_secret(self.key, owner), body, int(time.time()))

    async def deliver(self, url: str, owner: str | None, payload: dict[str, Any]) -> Delivery:
        """Check the URL again, then POST the signed payload to an address just checked."""
        try:
            parsed, addresses = await check_callback_url(url, self.allow)
        except CallbackRefused as refused:
            return Delivery(False, f"{refused.code}: {refused.message}", retry=refused.transient)
        body, signature = self.signed(owner, payload)
        headers = {
            "Host": parsed.host_header,
            "Content-Type": "application/json",
            "User-Agent": "fhe-server-callback",
            SIGNATURE_HEADER: signature,
        }
        if isinstance(payload.get("delivery_id"), str):
            headers[IDEMPOTENCY_HEADER] = payload["delivery_id"]
        extensions = {} if parsed.literal is not None else {"sni_hostname": host_name(parsed.host)}
        failures: list[str] = []
        async with httpx.AsyncClient(
            timeout=self.timeout_seconds,
            follow_redirects=False,
            trust_env=False,
            verify=self.tls,
        ) as http:
            for address in addresses[:MAX_ADDRESSES_TRIED]:
                request = http.build_request(
                    "POST",
                    parsed.pinned(canonical(address)),
                    content=body,
                    headers=headers,
                    extensions=extensions,
                )
                try:
                    status = await asyncio.wait_for(self._send(http, request), self.timeout_seconds)
                except (httpx.ConnectError, httpx.ConnectTimeout) as failure:
                    failures.append(f"{address}: {type(failure).__name__}: {failure}")
                    continue
                except (TimeoutError, httpx.TimeoutException):
                    return Delivery(False, f"no answer within {self.timeout_seconds:g} s")
                except httpx.HTTPError as failure:
                    return Delivery(False, f"{type(failure).__name__}: {failure}")
                if 200 <= status < 300:
                    return Delivery(True)
                if 300 <= status < 400:
                    return Delivery(False, f"HTTP {status} (redirects are not followed)")
                return Delivery(False, f"HTTP {status}")
        return Delivery(False, "; ".join(failures) or "no address to connect to")

    @staticmethod
    async def _send(http: httpx.AsyncClient, request: httpx.Request) -> int:
        """Send and return the status, without reading the receiver's answer body."""
        response = await http.send(request, stream=True)
        await response.aclose()
        return response.status_code
