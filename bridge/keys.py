"""What makes an API key usable, and its fingerprint: lets a client that holds the bridge
token tell whether the running bridge has its key, without the key ever being shown (health
has no token). The fingerprint is part of the contract, so the client package computes it
(`chamelaion_client.proofs`) and the server shows the same one.
"""

from __future__ import annotations

import re

from chamelaion_client.proofs import key_fingerprint

__all__ = ["API_KEY_PATTERN", "AUTH_SCHEMES", "is_usable_key", "key_fingerprint"]

AUTH_SCHEMES = ("x-api-key", "bearer")
API_KEY_PATTERN = re.compile(r"[\x21-\x7e]{1,1024}")  # what an HTTP header can carry


def is_usable_key(api_key: str) -> bool:
    """Whether a key can be sent at all (a stray newline or space makes every call fail)."""
    return bool(API_KEY_PATTERN.fullmatch(api_key))
