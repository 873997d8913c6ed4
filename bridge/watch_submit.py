"""Turning a settled pair of a watch folder into a job, once: a stem whose earlier job is
still this watcher's (a restart, a duplicate event) is adopted, never submitted again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from bridge.errors import InputError, LocalProblem, MediaError
from bridge.jobs import JobSpec, new_reference_id, numbered_reference_ids, safe_reference_id
from bridge.watch_filing import OutcomeFiler
from bridge.watch_pairing import RESULT_SUFFIX, Pair, read_sidecar
from bridge.watch_state import Stage, Tracked, WatchState, stem_of

SUBMIT_CONCURRENCY = 4

log = logging.getLogger("bridge.watch")


class PairSubmitter:
    """Submits the pairs of one watch folder, a few at a time."""

    def __init__(
        self, state: WatchState, filer: OutcomeFiler, *, settle: float, give_up: float
    ) -> None:
        self.state = state
        self.filer = filer
        self.settle, self.give_up = settle, give_up
        self._slots = asyncio.Semaphore(SUBMIT_CONCURRENCY)

    async def submit(self, stem: str, pair: Pair, tracked: Tracked) -> None:
        state = self.state
        async with self._slots:
            previous = state.latest.get(stem)
            if previous is not None and previous.id not in state.handled:
                # Ours from before a restart (or a duplicate event): adopt it, never resubmit.
                tracked.stage, tracked.job_id = Stage.RUNNING, previous.id
                if previous.is_final:
                    await self.filer.finish(previous)
                return
            try:
                options = await asyncio.to_thread(_options, pair)
                spec = await self._spec(stem, pair, options)
                job = await state.engine.submit(spec)
            except MediaError as exc:
                now = time.monotonic()
                if now - tracked.since < self.give_up:
                    # Maybe still being written: look again after another settle period.
                    tracked.stage, tracked.not_before = Stage.SETTLING, now + self.settle
                    state.say(stem, f"not ready yet ({exc})")
                    return
                await self.filer.refuse(stem, pair, str(exc))
                return
            except InputError as exc:
                await self.filer.refuse(stem, pair, str(exc))
                return
            except Exception as exc:  # a full data disk, a bug: never a pair stuck for good
                self._later(stem, tracked, exc)
                return
        state.problems.clear(f"{state.origin}:submit")
        tracked.stage, tracked.job_id = Stage.RUNNING, job.id
        state.remember(job)
        state.say(stem, f"submitted as job {job.reference_id}")

    def _later(self, stem: str, tracked: Tracked, exc: Exception) -> None:
        """Say why a pair could not be submitted now and look at it again after a settle
        period: what stopped it (a full disk, the store) is fixed without anyone's help."""
        state = self.state
        if isinstance(exc, LocalProblem):
            sentence = str(exc)  # logged once by problems.report, and by say
        else:
            log.error("watch %s: submitting %s failed", state.in_dir, stem, exc_info=exc)
            sentence = (
                f"Submitting {stem} from {state.in_dir} failed ({type(exc).__name__}); it is "
                "tried again, details are in bridge.log."
            )
        state.problems.report(f"{state.origin}:submit", sentence)
        tracked.stage, tracked.not_before = Stage.SETTLING, time.monotonic() + self.settle
        state.say(stem, f"waiting: {sentence}")

    async def _spec(self, stem: str, pair: Pair, options: dict[str, Any]) -> JobSpec:
        urls = options.get("video_url") or options.get("audio_url")
        if urls and (pair.videos or pair.audios):
            raise InputError(
                f"The sidecar {stem}.json names URLs but media files for {stem} are in the "
                "folder too; give either the files or video_url and audio_url, not both."
            )
        spec = JobSpec(
            video_path=str(pair.video) if pair.video else None,
            audio_path=str(pair.audio) if pair.audio else None,
            video_url=options.get("video_url"),
            audio_url=options.get("audio_url"),
            reference_id=await self._reference_id(stem, options.get("reference_id")),
            disable_active_speaker_detection=bool(
                options.get("disable_active_speaker_detection", False)
            ),
            model=options.get("model"),
            output_dir=str(self.state.out_dir),
            output_name=f"{stem}{RESULT_SUFFIX}",
            origin=self.state.origin,
        )
        return spec.validated()

    async def _reference_id(self, stem: str, wanted: str | None) -> str:
        """The sidecar's reference_id, suffixed -r2, -r3… when an earlier run of it used it."""
        if not wanted:
            return new_reference_id(prefix=safe_reference_id(stem, 60))
        for candidate in numbered_reference_ids(wanted):
            used = await self.state.steps.get(candidate)
            if used is None:
                return candidate
            if used.origin != self.state.origin or stem_of(used) != stem:
                return wanted  # someone else's: the store refuses it with its own sentence
        raise AssertionError("numbered_reference_ids never ends")


def names_urls(pair: Pair) -> bool:
    """A lone sidecar naming URLs is a whole pair (URL mode); a broken one is refused.
    Blocking (it reads the sidecar): run it in a thread."""
    if pair.sidecar is None or pair.videos or pair.audios:
        return False
    try:
        options = read_sidecar(pair.sidecar)
    except InputError:
        return True  # let the submission refuse it with the sidecar's own sentence
    return bool(options.get("video_url") or options.get("audio_url"))


def _options(pair: Pair) -> dict[str, Any]:
    return read_sidecar(pair.sidecar) if pair.sidecar else {}
