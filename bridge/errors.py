"""Errors that end up in front of a user: each carries one readable sentence."""

from __future__ import annotations


class BridgeError(Exception):
    """Base for errors whose `str()` is a sentence fit to show a user as it is."""


class InputError(BridgeError):
    """The job's inputs or options are wrong; nothing was sent or charged."""


class MediaError(InputError):
    """A media file is missing, unreadable, or not the kind of media expected."""


class DuplicateReferenceError(InputError):
    """Another job already uses this reference_id."""


class RemoteError(BridgeError):
    """The Chamelaion API refused or failed a call.

    `retryable` says whether waiting and trying again can help; `retry_after` is the
    server's hint in seconds, when it gave one.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after


class AuthError(RemoteError):
    """The API key is missing or refused: retrying cannot help until the user fixes it."""


class QuotaError(RemoteError):
    """The account is out of credits (`token limit reached`)."""


class NotFoundError(RemoteError):
    """The API has no such request."""


class LocalProblem(BridgeError):
    """Something on this machine stops a job for now (a full disk, a folder that went away).

    Not a verdict on any job: whoever hits it waits and tries again, and jobs go on once
    the cause is gone.
    """


class StoreError(LocalProblem):
    """The job store cannot be read or written right now (e.g. its disk is full)."""

    def __init__(self, message: str, *, disk_full: bool = False) -> None:
        super().__init__(message)
        self.disk_full = disk_full


class DamagedJobError(BridgeError):
    """One job's record in the store cannot be read; the other jobs are unaffected."""
