"""The add-on's own client of the bridge's local HTTP API: it knows the contract
(bridge/openapi.json in the repository) and the data folder's layout, never the bridge's code.

Standard library only, for the worker thread. Proxies are bypassed: the bridge is on
loopback. The token leaves this client only for a bridge that first proved it holds it
(health answers a random challenge with an HMAC keyed by it), and only to one that speaks
the API version this add-on was written for.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

API_VERSION = 1  # the major version of the local API this add-on speaks
DEFAULT_URL = "http://127.0.0.1:7878"
DISCOVERY_FILE = "bridge.json"  # written by the running bridge: its url, pid, launched_by
TOKEN_FILE = "token"
LOG_FILE = "bridge.log"
LAUNCHED_BY = "blender"  # how bridges this add-on starts are recorded in bridge.json
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ClientError(Exception):
    """Base for errors whose `str()` is a sentence fit to show in the panel."""


class BridgeUnavailable(ClientError):
    """No bridge of ours answers at the bridge's URL (or one of another API version does)."""


class BridgeRequestError(ClientError):
    """The bridge answered with an error; the message is its one-sentence explanation."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def data_dir(override: str | None = None) -> Path:
    """The bridge's data folder: the override, `CHAMELAION_BRIDGE_DATA`, else the OS's
    per-user data folder (where the bridge puts it by default)."""
    chosen = override or os.environ.get("CHAMELAION_BRIDGE_DATA")
    if chosen:
        return Path(chosen).expanduser().resolve()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return (base / "chamelaion-bridge").resolve()


def read_discovery(folder: Path) -> dict[str, Any] | None:
    """The running (or last) bridge's bridge.json, None when there is none."""
    try:
        info = json.loads((folder / DISCOVERY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def read_token(folder: Path) -> str | None:
    try:
        return (folder / TOKEN_FILE).read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def bridge_url(folder: Path) -> str:
    """`CHAMELAION_BRIDGE_URL`, else the URL the running bridge published, else the default."""
    env = os.environ.get("CHAMELAION_BRIDGE_URL")
    if env:
        return env.rstrip("/")
    info = read_discovery(folder)
    if info and isinstance(info.get("url"), str):
        return info["url"].rstrip("/")
    return DEFAULT_URL


def is_local(url: str) -> bool:
    """Whether `url` names this computer by a loopback name."""
    return urllib.parse.urlparse(url).hostname in LOOPBACK


def _hmac_hex(token: str, message: str) -> str:
    return hmac.new(token.encode(), message.encode(), hashlib.sha256).hexdigest()


class Client:
    """Calls the local API; raises BridgeUnavailable or BridgeRequestError with a sentence."""

    def __init__(self, folder: Path, url: str | None = None, timeout: float = 10.0) -> None:
        self.data_dir = folder
        self.url = (url or bridge_url(folder)).rstrip("/")
        self.token = read_token(folder)
        self.timeout = timeout

    def health(self) -> dict[str, Any]:
        """The bridge's health once it proved it holds our token and speaks our API version
        (else BridgeUnavailable: whatever answers there is not a bridge we can use)."""
        challenge = secrets.token_hex(16)
        try:
            body = self._send(self._build("GET", "/v1/health", query=[("challenge", challenge)]))
        except BridgeRequestError as exc:
            raise self._stranger(f"it answered HTTP {exc.status}") from None
        except ValueError:
            raise self._stranger("it did not answer JSON") from None
        if not self.token:
            raise BridgeUnavailable(
                f"There is no bridge token in {self.data_dir}, so the bridge at {self.url} "
                "cannot be trusted; start the bridge with this data folder."
            )
        proof = body.get("proof") if isinstance(body, dict) else None
        expected = _hmac_hex(self.token, f"{challenge}:{self._port()}")
        if not isinstance(proof, str) or not hmac.compare_digest(proof, expected):
            raise self._stranger("it does not hold this data folder's token")
        if body.get("api_version") != API_VERSION:
            raise BridgeUnavailable(
                f"The Chamelaion bridge at {self.url} speaks API version "
                f"{body.get('api_version', 'unknown')} and this add-on {API_VERSION}, so it was "
                f"sent nothing; stop it with 'chamelaion-bridge stop --data-dir {self.data_dir}'."
            )
        return body

    def create_job(self, body: dict[str, Any]) -> dict[str, Any]:
        """The job as queued; its reference_id is the one the bridge made of ours."""
        return self._request("POST", "/v1/jobs", body)

    def list_jobs(self, *, file: str) -> list[dict[str, Any]]:
        """The jobs, not cleared, that were created with `client.file` = `file`."""
        return self._request("GET", "/v1/jobs", query=[("file", file)])["jobs"]

    def cancel(self, key: str) -> dict[str, Any]:
        return self._request("POST", f"/v1/jobs/{_quoted(key)}/cancel")

    def retry(self, key: str) -> dict[str, Any]:
        return self._request("POST", f"/v1/jobs/{_quoted(key)}/retry")

    def clear(self, key: str) -> dict[str, Any]:
        """Take a final job out of the listings (its files stay)."""
        return self._request("DELETE", f"/v1/jobs/{_quoted(key)}")

    def hand_over_key(self, api_key: str) -> dict[str, Any] | None:
        """Send our API key only when the bridge has none or another one (health shows the
        key's HMAC fingerprint); the bridge's answer when it was sent, else None."""
        fingerprint = self.health().get("api_key_fingerprint")
        if self.token and fingerprint == _hmac_hex(self.token, api_key)[:16]:
            return None
        return self._request("PUT", "/v1/api-key", {"api_key": api_key, "auth": "x-api-key"})

    def _request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        query: Sequence[tuple[str, str]] = (),
    ) -> Any:
        # Proof before every call: another program may have taken the port since the last one.
        self.health()
        request = self._build(method, path, body, query)
        request.add_header("Authorization", f"Bearer {self.token}")
        return self._send(request)

    def _build(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        query: Sequence[tuple[str, str]] = (),
    ) -> urllib.request.Request:
        url = self.url + path + ("?" + urllib.parse.urlencode(list(query)) if query else "")
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        return request

    def _send(self, request: urllib.request.Request) -> Any:
        try:
            with _OPENER.open(request, timeout=self.timeout) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise BridgeRequestError(_error_message(exc), exc.code) from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            raise BridgeUnavailable(
                f"The Chamelaion bridge at {self.url} is not answering "
                f"({str(reason) or type(reason).__name__}); start it with 'chamelaion-bridge "
                "serve'."
            ) from None

    def _stranger(self, why: str) -> BridgeUnavailable:
        return BridgeUnavailable(
            f"What answers at {self.url} is not the Chamelaion bridge of {self.data_dir} "
            f"({why}) and was sent nothing; start the bridge with 'chamelaion-bridge serve'."
        )

    def _port(self) -> int:
        parts = urllib.parse.urlsplit(self.url)
        return parts.port or (443 if parts.scheme == "https" else 80)


def _quoted(key: str) -> str:
    return urllib.parse.quote(key, safe="")


def _error_message(exc: urllib.error.HTTPError) -> str:
    try:
        message = json.loads(exc.read()).get("error")
    except (ValueError, AttributeError, OSError):
        message = None
    return message or f"The bridge answered HTTP {exc.code} {exc.reason}."
