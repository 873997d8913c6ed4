"""The API key's fingerprint: lets a client that holds the bridge token tell whether the
running bridge has its key, without the key ever being shown (health has no token).

Standard library only: the CLI, the daemon and the Blender add-on all compute it.
"""

from __future__ import annotations

import hashlib
import hmac
import re

AUTH_SCHEMES = ("x-api-key", "bearer")
API_KEY_PATTERN = re.compile(r"[\x21-\x7e]{1,1024}")  # what an HTTP header can carry


def is_usable_key(api_key: str) -> bool:
    """Whether a key can be sent at all (a stray newline or space makes every call fail)."""
    return bool(API_KEY_PATTERN.fullmatch(api_key))


def key_fingerprint(token: str, api_key: str) -> str:
    """16 hex digits of HMAC-SHA256 keyed by the bridge token: only token holders can
    compare, and nobody can guess the key from it."""
    digest = hmac.new(token.encode(), api_key.encode(), hashlib.sha256)
    return digest.hexdigest()[:16]
