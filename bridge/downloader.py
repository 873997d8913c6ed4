"""Fetching a finished job's result and publishing it whole, never over another file.

The result streams into a fresh temporary file beside its destination (recorded before it
is created, so a crash leaves nothing behind) and is linked into place only once it plays.
All file work runs off the event loop: the output folder may be a slow network share.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import IO

from bridge import media
from bridge.backoff import Backoff
from bridge.context import EngineContext
from bridge.errors import NotFoundError, RemoteError
from bridge.files import (
    folder_error,
    has_other_names,
    is_published,
    link_into_place,
    numbered_names,
    open_exclusive,
    part_path,
    safe_filename,
)
from bridge.jobs import Job, State
from bridge.remote import RemoteAPI

log = logging.getLogger(__name__)

# A result that stays unplayable, or whose link stays "not found", after this many fresh
# downloads is a definite failure (retrying later downloads again at no charge).
DOWNLOAD_GIVE_UP = 4


class Downloader:
    """Takes `downloading` jobs to `completed`; two downloads at a time."""

    def __init__(self, ctx: EngineContext) -> None:
        self.ctx = ctx
        self._slots = asyncio.Semaphore(2)

    async def download(self, job: Job) -> None:
        """Fetch the result into a fresh temporary file beside its destination, then publish
        it whole under a name no other file has."""
        folder = Path(job.output_dir) if job.output_dir else self.ctx.config.output_dir
        if (
            job.part_path
            and job.output_path
            and await asyncio.to_thread(is_published, Path(job.part_path), Path(job.output_path))
        ):
            await self._completed(job, Path(job.part_path))
            return
        if job.part_path:  # left by a download that a crash or an error interrupted
            await asyncio.to_thread(Path(job.part_path).unlink, missing_ok=True)
        part = part_path(folder, job.reference_id)
        try:
            await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
            job = await self.ctx.steps.record_part(job.id, str(part))
            if await self._fetch_into(job, part):
                await self._publish(job, part, folder)
            else:
                await asyncio.to_thread(part.unlink, missing_ok=True)
        except OSError as exc:
            await asyncio.to_thread(_discard_unpublished, part)
            raise folder_error(folder, exc) from None
        except BaseException:
            await asyncio.to_thread(_discard_unpublished, part)
            raise

    async def _fetch_into(self, job: Job, part: Path) -> bool:
        """Download into `part`, created exclusively; whether a playable result arrived."""
        fh = await asyncio.to_thread(open_exclusive, part)
        try:
            return await self._fetch_playable(job, fh, part)
        finally:
            await asyncio.to_thread(fh.close)

    async def _fetch_playable(self, job: Job, fh: IO[bytes], part: Path) -> bool:
        """Download until the file plays; False when the API no longer offers a result (the
        poller then decides, which fails the job if the API has forgotten it)."""
        remote = self.ctx.require_remote()
        config = self.ctx.config
        misses = Backoff(base=config.retry_base, cap=config.retry_cap)
        problem = ""
        while misses.attempt < DOWNLOAD_GIVE_UP:
            url = self.ctx.output_urls.get(job.id) or await self._fresh_output_url(remote, job)
            if url is None:
                return False
            try:
                await self.ctx.gateway.call(
                    lambda url=url: self._attempt(remote, job, url, fh),
                    doing="download the result",
                    note=self.ctx.noter(job.id),
                )
                if await asyncio.to_thread(media.is_playable_video, part):
                    return True
                problem = "the file that arrives is not a playable video"
            except NotFoundError as exc:  # an expired link: ask for a fresh one
                problem = str(exc)
            self.ctx.output_urls.pop(job.id, None)
            log.warning("job %s: %s; fetching a fresh link", job.reference_id, problem)
            await asyncio.sleep(misses.next_delay())
        raise RemoteError(
            f"The result could not be downloaded ({problem}, {DOWNLOAD_GIVE_UP} times from "
            "fresh links); retry the job later to download it again (no new charge), or contact "
            f"Chamelaion support with request {job.request_id}."
        )

    async def _attempt(self, remote: RemoteAPI, job: Job, url: str, fh: IO[bytes]) -> None:
        """One try, in a download slot (not held while waiting between tries)."""
        async with self._slots:
            await remote.download(url, fh, self.ctx.progress_reporter(job.id, State.DOWNLOADING))

    async def _fresh_output_url(self, remote: RemoteAPI, job: Job) -> str | None:
        request = await self.ctx.gateway.call(
            lambda: remote.retrieve(job.request_id or job.reference_id),
            doing="ask for the result's download link",
            note=self.ctx.noter(job.id),
        )
        if request is None or not request.output_url:
            await self.ctx.steps.link_lost(job.id)
            self.ctx.poll_wake.set()
            return None
        self.ctx.output_urls[job.id] = request.output_url
        return request.output_url

    async def _publish(self, job: Job, part: Path, folder: Path) -> None:
        """Link the result in under the first free name, each name recorded before it is
        tried: a restarted bridge finds the result by it (see `download`)."""
        name = safe_filename(job.output_name or f"{job.reference_id}.mp4")
        for candidate in numbered_names(folder / name):
            job = await self.ctx.steps.claim_output(job.id, str(candidate))
            if await asyncio.to_thread(link_into_place, part, candidate):
                break
        await self._completed(job, part)

    async def _completed(self, job: Job, part: Path) -> None:
        await self.ctx.steps.complete(job.id, part)
        self.ctx.output_urls.pop(job.id, None)
        await self.ctx.clean_work(job.id)


def _discard_unpublished(part: Path) -> None:
    """Remove the temporary file unless it was published but not yet recorded as such (a
    resume then finds it under both names)."""
    if not has_other_names(part):
        part.unlink(missing_ok=True)
