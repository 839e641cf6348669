"""Verifying fhe-server job callbacks on the receiving side (the format lives in `fhe`, which the
server signs with)."""

from fhe.contract.callback_signature import (
    ALGORITHM,
    DEFAULT_TOLERANCE_SECONDS,
    SIGNATURE_HEADER,
    parse_signature,
    sign_callback,
    verify_callback,
)

__all__ = [
    "ALGORITHM",
    "DEFAULT_TOLERANCE_SECONDS",
    "SIGNATURE_HEADER",
    "parse_signature",
    "sign_callback",
    "verify_callback",
]
