"""Signing and verifying fhe-server job callbacks, for the server and for whoever receives them.

Each callback carries `X-FHE-Signature: t=<unix seconds>,v1=<hex>`, where the hex is
HMAC-SHA256 under the token's callback secret (`GET /v1/callback-secret`) of the ASCII timestamp,
a dot, then the raw body bytes. A receiver recomputes it over the bytes it received and refuses
old timestamps, so a captured callback cannot be replayed later.
"""

from __future__ import annotations

import hashlib
import hmac
import time

SIGNATURE_HEADER = "X-FHE-Signature"
ALGORITHM = "hmac-sha256"
DEFAULT_TOLERANCE_SECONDS = 300.0


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The hex HMAC-SHA256 of `<timestamp>.<body>` under `secret`: the `v1` value."""
    signed = f"{timestamp}.".encode() + body
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def sign_callback(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The `X-FHE-Signature` value for `body` sent at `timestamp` (now by default)."""
    when = int(time.time()) if timestamp is None else timestamp
    return f"t={when},v1={signature(secret, when, body)}"


def parse_signature(header_value: str) -> tuple[int, list[str]] | None:
    """The timestamp and the `v1` signatures of a header value; None when it is malformed."""
    timestamp: int | None = None
    signatures: list[str] = []
    for item in header_value.split(","):
        name, _, value = item.strip().partition("=")
        if name == "t":
            if timestamp is not None or not value.isascii() or not value.isdigit():
                return None
            timestamp = int(value)
        elif name == "v1":
            signatures.append(value)
    if timestamp is None or not signatures:
        return None
    return timestamp, signatures


def verify_callback(
    secret: str,
    header_value: str | None,
    body: bytes,
    tolerance: float = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> bool:
    """True when the header signs exactly `body` under `secret` within `tolerance` seconds of now.

    Pass the body bytes as received, before any JSON parsing: re-encoding changes them.
    """
    if not header_value:
        return False
    parsed = parse_signature(header_value)
    if parsed is None:
        return False
    timestamp, signatures = parsed
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        return False
    expected = signature(secret, timestamp, body)
    return any(hmac.compare_digest(expected, given) for given in signatures)
