"""The add-on's client of the bridge: the shared one (`chamelaion_client`, bundled in the
bridge's wheel, which knows only the contract in openapi.json) that also refuses a bridge of
another API version before sending it anything.

Refused here, such a bridge counts as unavailable, so the launcher runs `start`, which
restarts one this add-on launched (its jobs are durable) and refuses anyone else's.
"""

from __future__ import annotations

from typing import Any

from chamelaion_client import THIS_API, api_of, speaks_this_api
from chamelaion_client.client import BridgeClient, BridgeUnavailable


class OtherApiVersion(BridgeUnavailable):
    """Our data folder's bridge runs but speaks another API version (it was sent nothing)."""


class Client(BridgeClient):
    """A BridgeClient whose health (and so every call) wants this add-on's API version."""

    def health(self) -> dict[str, Any]:
        body = super().health()
        if not speaks_this_api(body):
            raise OtherApiVersion(
                f"The Chamelaion bridge at {self.url} speaks API version "
                f"{api_of(body)} and this add-on needs {THIS_API}, so it was "
                f"sent nothing; stop it with 'chamelaion-bridge stop --data-dir {self.data_dir}'."
            )
        return body
