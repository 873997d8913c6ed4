"""`BridgeClient`: calls the bridge's local HTTP API, synchronously, with the standard library
only (the CLI starts quickly; the add-on calls it from its worker thread).

Proxies are bypassed: the bridge is always on loopback. The token leaves this client only for
a bridge that first proved it holds the same token (health answers a random challenge with an
HMAC keyed by it): a stale bridge.json may name a port that another program took over since.
"""

from __future__ import annotations

import hmac
import json
import secrets
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from chamelaion_client import layout
from chamelaion_client.proofs import health_proof, key_fingerprint

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ClientError(Exception):
    """Base for errors whose `str()` is a sentence fit to show a user as it is."""


class BridgeUnavailable(ClientError):
    """No bridge of ours answers at the bridge's URL."""


class BridgeRequestError(ClientError):
    """The bridge answered with an error; the message is its one-sentence explanation."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class BridgeClient:
    """Calls the local API; raises BridgeUnavailable or BridgeRequestError with a sentence.

    `health` checks the bridge's identity, not its API version: callers decide what to do with
    a bridge of another one (restart it, refuse it with their own sentence)."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        data_dir: Path | None = None,
        timeout: float = 10.0,
    ) -> None:
        folder = data_dir or layout.data_dir()
        self.url = (url or layout.bridge_url(folder)).rstrip("/")
        self.token = token or layout.read_token(folder)
        self.timeout = timeout
        self.data_dir = folder

    def health(self) -> dict[str, Any]:
        """The bridge's health, once it proved that it holds our token (else
        BridgeUnavailable: whatever answers there is not our bridge)."""
        challenge = secrets.token_hex(16)
        try:
            body = self._send(self._build("GET", f"/v1/health?challenge={challenge}"))
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
        expected = health_proof(self.token, challenge, self._port())
        if not isinstance(proof, str) or not hmac.compare_digest(proof, expected):
            raise self._stranger("it does not hold this data folder's token")
        return body

    def create_job(self, body: dict[str, Any]) -> dict[str, Any]:
        """The job as queued; its reference_id is the bridge's spelling of the one sent."""
        return self._request("POST", "/v1/jobs", body)

    def list_jobs(
        self, *, state: str | None = None, keys: Sequence[str] = (), file: str | None = None
    ) -> list[dict[str, Any]]:
        """Jobs not cleared, optionally only those in `state`, whose id/reference_id is in
        `keys`, or whose client data names `file`."""
        return self.listing(state=state, keys=keys, file=file)["jobs"]

    def listing(
        self, *, state: str | None = None, keys: Sequence[str] = (), file: str | None = None
    ) -> dict[str, Any]:
        """`{"jobs": [...], "damaged": [...]}`: the jobs, and records the store cannot read."""
        query = [("reference_id", k) for k in keys]
        if state:
            query.append(("state", state))
        if file is not None:
            query.append(("file", file))
        return self._request("GET", "/v1/jobs", query=query)

    def get_job(self, key: str) -> dict[str, Any]:
        return self._request("GET", _job_path(key))

    def cancel(self, key: str) -> dict[str, Any]:
        return self._request("POST", _job_path(key, "cancel"))

    def retry(self, key: str) -> dict[str, Any]:
        return self._request("POST", _job_path(key, "retry"))

    def clear(self, key: str) -> dict[str, Any]:
        """Take a completed, failed or canceled job out of the listings (its files stay);
        BridgeRequestError 409 for a job still running."""
        return self._request("DELETE", _job_path(key))

    def set_api_key(self, api_key: str, auth: str = "x-api-key") -> dict[str, Any]:
        """Make the bridge use this API key from now on; jobs that failed on the old one
        become retryable (the answer's `jobs_updated` counts them)."""
        return self._request("PUT", "/v1/api-key", {"api_key": api_key, "auth": auth})

    def hand_over_key(self, api_key: str, auth: str = "x-api-key") -> dict[str, Any] | None:
        """Send our API key only when the bridge has none or another one (its health shows
        the key's fingerprint); the bridge's answer when it was sent, else None."""
        fingerprint = self.health().get("api_key_fingerprint")
        if self.token and fingerprint == key_fingerprint(self.token, api_key):
            return None
        return self.set_api_key(api_key, auth)

    def events(self) -> Iterator[dict[str, Any]]:
        """Follow `GET /v1/events`: yields each job as it changes (blocks between events)."""
        self.health()
        request = urllib.request.Request(self.url + "/v1/events")
        request.add_header("Accept", "text/event-stream")
        request.add_header("Authorization", f"Bearer {self.token}")
        try:
            response = _OPENER.open(request, timeout=None)
        except urllib.error.HTTPError as exc:
            raise BridgeRequestError(_error_message(exc), exc.code) from None
        except (urllib.error.URLError, ConnectionError) as exc:
            raise BridgeUnavailable(
                f"The Chamelaion bridge at {self.url} is not answering ({_reason(exc)})."
            ) from None
        with response:
            for raw in response:
                line = raw.decode("utf-8").rstrip("\r\n")
                if line.startswith("data:"):
                    yield json.loads(line[5:].strip())

    def _request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        query: Sequence[tuple[str, str]] = (),
    ) -> Any:
        # Proof before every call, not once: another program may have taken the port since
        # the last one (the bridge killed and its port grabbed), and must never get the token.
        self.health()
        request = self._build(method, path + _query_string(query), body)
        request.add_header("Authorization", f"Bearer {self.token}")
        return self._send(request)

    def _build(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> urllib.request.Request:
        url = self.url + path
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
            raise BridgeUnavailable(
                f"The Chamelaion bridge at {self.url} is not answering ({_reason(exc)}); "
                "start it with 'chamelaion-bridge serve'."
            ) from None

    def _stranger(self, why: str) -> BridgeUnavailable:
        return BridgeUnavailable(
            f"What answers at {self.url} is not the Chamelaion bridge of {self.data_dir} "
            f"({why}) and was sent nothing; start the bridge with 'chamelaion-bridge serve'."
        )

    def _port(self) -> int:
        parts = urllib.parse.urlsplit(self.url)
        return parts.port or (443 if parts.scheme == "https" else 80)


def _query_string(query: Sequence[tuple[str, str]]) -> str:
    return "?" + urllib.parse.urlencode(list(query)) if query else ""


def _job_path(key: str, action: str = "") -> str:
    """`/v1/jobs/{key}[/action]`, the key (an id or a reference_id) quoted whole."""
    return f"/v1/jobs/{urllib.parse.quote(key, safe='')}" + (f"/{action}" if action else "")


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", exc)
    return str(reason) or type(reason).__name__


def _error_message(exc: urllib.error.HTTPError) -> str:
    try:
        message = json.loads(exc.read()).get("error")
    except (ValueError, AttributeError, OSError):
        message = None
    return message or f"The bridge answered HTTP {exc.code} {exc.reason}."
