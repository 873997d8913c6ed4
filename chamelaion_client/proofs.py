"""The HMACs keyed by the bridge token that the contract defines: only a holder of the token
can compute or compare them, so a client learns what it needs without the token travelling."""

from __future__ import annotations

import hashlib
import hmac


def _hmac_hex(token: str, message: str) -> str:
    return hmac.new(token.encode(), message.encode(), hashlib.sha256).hexdigest()


def health_proof(token: str, challenge: str, port: int) -> str:
    """What the real bridge answers to a client's health challenge: only the token's holder
    can compute it, and the listening port in it stops a stranger relaying a real answer."""
    return _hmac_hex(token, f"{challenge}:{port}")


def key_fingerprint(token: str, api_key: str) -> str:
    """16 hex digits that health shows of the bridge's API key: a token holder can tell
    whether the bridge has its key, and nobody can guess the key from it."""
    return _hmac_hex(token, api_key)[:16]
