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


class StorageFullError(BridgeError):
    """The disk holding the bridge's data folder is full: nothing could be recorded."""


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
