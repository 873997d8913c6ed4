"""The one client of the bridge's local HTTP API, for the CLI and the Blender add-on alike.

It knows only the contract (bridge/openapi.json) and the data folder's layout, never the
bridge's code: it imports nothing from `bridge`, so the add-on can use it while it speaks to a
bridge of any release. Standard library only.

- `layout`: where a bridge for a data folder is found (the folder, bridge.json, the token,
  the loopback names).
- `proofs`: the token-keyed HMACs by which a bridge proves itself and shows its API key.
- `client`: `BridgeClient`, the routes, and errors whose text is a sentence.
"""

from collections.abc import Mapping
from typing import Any

# The local HTTP API's version, openapi.json's info.version: the major number rises when
# clients would break; the revision with each addition a client may rely on
# (1: the bridge spells a free-text reference_id as a valid one; 2: a job's audio_range).
API_VERSION = 1
API_REVISION = 2
THIS_API = f"{API_VERSION}.{API_REVISION}"

# A job's states that never change again (openapi.json's State), and those of them that
# ended without a result: the ones `retry` accepts.
FINAL_STATES = frozenset({"completed", "failed", "canceled"})
RETRYABLE_STATES = frozenset({"failed", "canceled"})


def api_of(health: Mapping[str, Any]) -> str:
    """A bridge's API version as a sentence names it ("1.1"); before revisions, "1.0"."""
    return f"{health.get('api_version', 'unknown')}.{health.get('api_revision', 0)}"


def speaks_this_api(health: Mapping[str, Any]) -> bool:
    """Whether a bridge (by its health) serves what this client relies on: the same major
    version, at least this revision. An older bridge would answer some requests with 400."""
    revision = health.get("api_revision", 0)
    return (
        health.get("api_version") == API_VERSION
        and isinstance(revision, int)
        and revision >= API_REVISION
    )
