"""The Chamelaion API as the engine needs it, through the official SDK.

The SDK does the HTTP; this module adds what it lacks: streamed uploads from open file
objects with progress, streamed downloads, and turning every failure into a RemoteError
whose message is one sentence and whose `retryable` tells the engine what to do.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import queue
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Concatenate, ParamSpec, TypeVar
from urllib.parse import urlsplit

import aiohttp
import chamelaion
from chamelaion import AsyncChamelaion, DefaultAioHttpClient

from bridge.config import Secret
from bridge.errors import (
    AuthError,
    BridgeError,
    LocalProblem,
    NotFoundError,
    QuotaError,
    RemoteError,
)

log = logging.getLogger(__name__)
Progress = Callable[[int, int], None]
CHUNK = 1 << 20
READ_AHEAD = 2  # chunks an upload reads ahead of the network
P = ParamSpec("P")
T = TypeVar("T")
MAX_LIST_LIMIT = 100  # what we ask for; the API's real maximum is undocumented
DEFAULT_LIST_LIMIT = 20  # the documented default


@dataclass(frozen=True)
class RemoteRequest:
    """The fields of a LipsyncRequest the engine acts on."""

    id: str
    status: str
    reference_id: str | None = None
    output_url: str | None = None
    error_message: str | None = None
    created_at: str | None = None


def utc(moment: str) -> datetime:
    """An ISO 8601 time as an aware datetime (UTC when it names no zone)."""
    parsed = datetime.fromisoformat(moment)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _from_sdk(item: Any) -> RemoteRequest:
    return RemoteRequest(
        id=item.id,
        status=item.status,
        reference_id=item.reference_id,
        output_url=item.output_url,
        error_message=item.error_message,
        created_at=item.created_at.isoformat() if item.created_at else None,
    )


class _ReadAhead:
    """A read-only file for the SDK's multipart upload that reads in a thread of its own,
    a few chunks ahead: the event loop (where the HTTP client calls `read`) only takes
    chunks that are ready, and waits only while the disk is slower than the network.

    Each chunk handed on is reported (its size), so progress counts what was sent.
    """

    def __init__(self, fh: IO[bytes], report: Callable[[int], None]) -> None:
        self._fh, self._report = fh, report
        self._chunks: queue.Queue[bytes | OSError] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._eof = False

    def read(self, size: int = -1) -> bytes:
        if self._eof:
            return b""
        if self._chunks is None:
            self._chunks, self._stop = queue.Queue(READ_AHEAD), threading.Event()
            self._thread = threading.Thread(
                target=self._fill, args=(self._chunks, self._stop), daemon=True
            )
            self._thread.start()
        item = self._chunks.get()
        if isinstance(item, OSError):
            raise item
        self._eof = not item
        if item:
            self._report(len(item))
        return item

    def _fill(self, chunks: queue.Queue[bytes | OSError], stop: threading.Event) -> None:
        """The reading thread: until the end of the file, or until `stop`."""
        while not stop.is_set():
            try:
                data: bytes | OSError = self._fh.read(CHUNK)
            except (OSError, ValueError) as exc:  # ValueError: closed under us (a canceled upload)
                data = exc if isinstance(exc, OSError) else OSError(str(exc))
            while not stop.is_set():
                try:
                    chunks.put(data, timeout=0.2)
                    break
                except queue.Full:
                    continue
            if not isinstance(data, bytes) or not data:
                return

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        """The HTTP client rewinds before it reads (and for a retry): reading starts over,
        once a reader already running has let go of the file."""
        self.stop()
        if self._thread is not None:
            self._thread.join()
        self._chunks, self._thread, self._eof = None, None, False
        return self._fh.seek(offset, whence)

    def stop(self) -> None:
        self._stop.set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fh, name)


def _retry_after(headers: Any) -> float | None:
    value = headers.get("retry-after") if headers is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _api_message(body: Any) -> str | None:
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return body["error"]
    return None


def translate_error(exc: Exception) -> RemoteError:
    """One readable sentence for any SDK failure, classified for the engine."""
    if isinstance(exc, RemoteError):
        return exc
    if isinstance(exc, chamelaion.APIStatusError):
        status = exc.status_code
        message = _api_message(exc.body)
        if status == 401 or status == 403:
            return AuthError(
                f"The Chamelaion API refused the API key ({message or 'unauthorized'}); "
                "check CHAMELAION_API_KEY or the key in the add-on preferences.",
                status=status,
            )
        if message == "token limit reached" or status == 412:
            return QuotaError(
                "The Chamelaion account is out of credits (token limit reached); "
                "top it up, then retry the job.",
                status=status,
            )
        if status == 404:
            return NotFoundError(
                f"The Chamelaion API has no such request ({message or 'not found'}).",
                status=status,
            )
        if status == 429:
            return RemoteError(
                "The Chamelaion API is rate-limiting us (HTTP 429).",
                status=status,
                retryable=True,
                retry_after=_retry_after(exc.response.headers),
            )
        if status >= 500:
            detail = message or (
                "an HTML error page from a gateway"
                if not isinstance(exc.body, dict)
                else "no detail"
            )
            return RemoteError(
                f"The Chamelaion API had a server error (HTTP {status}: {detail}).",
                status=status,
                retryable=True,
                retry_after=_retry_after(exc.response.headers),
            )
        return RemoteError(
            f"The Chamelaion API refused the request (HTTP {status}: {message or 'no detail'}).",
            status=status,
        )
    if isinstance(exc, chamelaion.APIResponseValidationError):
        return RemoteError(
            "The Chamelaion API sent an answer that is not valid JSON (often a proxy or gateway "
            "page).",
            retryable=True,
        )
    if isinstance(exc, chamelaion.APITimeoutError | TimeoutError):
        return RemoteError("The Chamelaion API did not answer in time.", retryable=True)
    if isinstance(exc, chamelaion.APIConnectionError | aiohttp.ClientError | OSError):
        return RemoteError(
            "The Chamelaion API could not be reached (the connection was refused or dropped).",
            retryable=True,
        )
    log.error(
        "unexpected error talking to the Chamelaion API", exc_info=exc
    )  # a bug: its traceback
    return RemoteError(
        f"Unexpected error talking to the Chamelaion API ({type(exc).__name__}); "
        "details are in bridge.log."
    )


def _api_call(
    method: Callable[Concatenate[RemoteAPI, P], Awaitable[T]],
) -> Callable[Concatenate[RemoteAPI, P], Awaitable[T]]:
    """Every failure of a call to the API as a classified RemoteError: the SDK's, and a bug
    in this module's own code too (logged with its traceback by `translate_error`)."""

    @functools.wraps(method)
    async def call(self: RemoteAPI, *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await method(self, *args, **kwargs)
        except BridgeError:
            raise  # already a sentence: the API's answer, or a local file's problem
        except Exception as exc:
            raise translate_error(exc) from None

    return call


class RemoteAPI:
    """Async access to the lip-sync endpoints. SDK retries are off: the engine retries."""

    def __init__(self, base_url: str, api_key: Secret, *, auth: str = "x-api-key") -> None:
        self.base_url = base_url.rstrip("/")
        self._api_key, self._auth = api_key, auth
        credentials = {"bearer_token": api_key.value} if auth == "bearer" else {}
        if auth != "bearer":
            credentials["api_key"] = api_key.value
        self._sdk = AsyncChamelaion(
            base_url=self.base_url,
            max_retries=0,
            http_client=DefaultAioHttpClient(),
            **credentials,
        )
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        await self._sdk.close()
        if self._session is not None:
            await self._session.close()

    @_api_call
    async def check_key(self) -> str:
        """The key's token name, or AuthError."""
        return (await self._sdk.users.retrieve_current()).name

    @_api_call
    async def generate_from_urls(
        self, video_url: str, audio_url: str, *, reference_id: str, disable_asd: bool
    ) -> str:
        result = await self._sdk.lipsync.generate(
            inputs=[{"type": "video", "url": video_url}, {"type": "audio", "url": audio_url}],
            reference_id=reference_id,
            disable_active_speaker_detection=disable_asd,
        )
        return result.request_id

    @_api_call
    async def generate_with_media(
        self,
        video: Path,
        audio: Path,
        *,
        reference_id: str,
        disable_asd: bool,
        model: str | None = None,
        progress: Progress | None = None,
    ) -> str:
        """Upload both files, streamed from disk: memory stays flat whatever their size."""
        (vfh, afh), total = await asyncio.to_thread(_open_uploads, video, audio)
        sent = 0

        def report(n: int) -> None:
            nonlocal sent
            sent += n
            if progress:
                progress(min(sent, total), total)

        readers = (_ReadAhead(vfh, report), _ReadAhead(afh, report))
        try:
            result = await self._sdk.lipsync.generate_with_media(
                video=(video.name, readers[0], "video/mp4"),
                audio=(audio.name, readers[1], _audio_type(audio)),
                reference_id=reference_id,
                disable_active_speaker_detection=disable_asd,
                extra_body={"model": model} if model else None,
            )
        finally:
            for reader in readers:
                reader.stop()
            await asyncio.to_thread(lambda: (vfh.close(), afh.close()))
        return result.request_id

    async def retrieve(self, id_or_reference: str) -> RemoteRequest | None:
        """A request by uuid or reference_id; None when the API has none."""
        try:
            return await self._retrieve(id_or_reference)
        except NotFoundError:
            return None

    @_api_call
    async def _retrieve(self, id_or_reference: str) -> RemoteRequest:
        return _from_sdk(await self._sdk.lipsync.requests.retrieve(id_or_reference))

    @_api_call
    async def list_page(
        self,
        *,
        offset: int = 0,
        limit: int | None = MAX_LIST_LIMIT,
        reference_id: str | None = None,
    ) -> tuple[list[RemoteRequest], int, int]:
        """One page: (requests, total matching, the limit the API applied).

        `limit=None` leaves it to the API's documented default (20).
        """
        kwargs: dict[str, Any] = {"offset": offset}
        if limit is not None:
            kwargs["limit"] = limit
        if reference_id:
            kwargs["reference_id"] = reference_id
        page = await self._sdk.lipsync.requests.list(**kwargs)
        applied = page.pagination.limit or limit or DEFAULT_LIST_LIMIT
        return [_from_sdk(r) for r in page.data], page.pagination.total, applied

    @_api_call
    async def find_by_reference_id(
        self, reference_id: str, *, created_after: datetime
    ) -> RemoteRequest | None:
        """The request the API holds under this reference_id, made after `created_after`
        (newest if several): the API accepts duplicates, and an older request under the same
        id (another machine, a deleted data folder) is someone else's video."""
        items, _total, _limit = await self.list_page(reference_id=reference_id, limit=None)
        matches = [
            r
            for r in items
            if r.reference_id == reference_id
            and (r.created_at is None or utc(r.created_at) >= created_after)
        ]
        return max(matches, key=lambda r: r.created_at or "") if matches else None

    def _download_headers(self, url: str) -> dict[str, str]:
        """The key goes along only to the API's own host, never to a storage host that an
        output URL may name (a signed URL carries its own permission)."""
        same_origin = urlsplit(url)[:2] == urlsplit(self.base_url)[:2]
        if not same_origin or not self._api_key:
            return {}
        if self._auth == "bearer":
            return {"Authorization": f"Bearer {self._api_key.value}"}
        return {"x-api-key": self._api_key.value or ""}

    async def download(self, url: str, dest: IO[bytes], progress: Progress | None = None) -> int:
        """Stream `url` into the open file `dest` (emptied first); returns the bytes written.

        The caller opens the file, so it decides how (exclusively, never through a link).
        Raises RemoteError(retryable) on drops and short bodies, NotFoundError on 403/404/410
        (an expired signed URL: the engine fetches a fresh one).
        """
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=15, sock_read=120)
            )
        written = 0
        try:
            async with self._session.get(url, headers=self._download_headers(url)) as response:
                if response.status in (403, 404, 410):
                    raise NotFoundError(
                        f"The result file is no longer available (HTTP {response.status}).",
                        status=response.status,
                    )
                if response.status != 200:
                    raise RemoteError(
                        f"Downloading the result failed (HTTP {response.status}).",
                        status=response.status,
                        retryable=response.status == 429 or response.status >= 500,
                        retry_after=_retry_after(response.headers),
                    )
                expected = response.content_length
                await asyncio.to_thread(_empty, dest)
                async for chunk in response.content.iter_chunked(CHUNK):
                    # In a thread: the destination may be a slow network share.
                    await asyncio.to_thread(dest.write, chunk)
                    written += len(chunk)
                    if progress and expected:
                        progress(written, expected)
                await asyncio.to_thread(_flush_to_disk, dest)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise RemoteError(
                "The download of the result was interrupted.", retryable=True
            ) from exc
        if expected is not None and written != expected:
            raise RemoteError(
                f"The download of the result stopped early ({written} of {expected} bytes).",
                retryable=True,
            )
        return written


def _open_uploads(video: Path, audio: Path) -> tuple[tuple[IO[bytes], IO[bytes]], int]:
    """Both prepared files, open, and their total size; LocalProblem when one cannot be read
    (the job waits, and prepares its inputs again if they are gone)."""
    opened: list[IO[bytes]] = []
    try:
        for path in (video, audio):
            opened.append(path.open("rb"))
        total = sum(os.fstat(fh.fileno()).st_size for fh in opened)
    except OSError as exc:
        for fh in opened:
            fh.close()
        raise LocalProblem(
            f"The file to upload {exc.filename} cannot be read ({exc.strerror}); the job "
            "goes on once it can."
        ) from None
    return (opened[0], opened[1]), total


def _empty(fh: IO[bytes]) -> None:
    fh.seek(0)
    fh.truncate()


def _flush_to_disk(fh: IO[bytes]) -> None:
    fh.flush()
    os.fsync(fh.fileno())


def _audio_type(path: Path) -> str:
    return "audio/mpeg" if path.suffix.lower() == ".mp3" else "audio/wav"
