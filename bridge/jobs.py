"""The job: its states, its inputs, and the rules a job request must follow.

Validation lives here (not in the HTTP handler) so the local API, the CLI and the watch
folder all refuse the same bad input with the same sentence.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import stat
import time
import unicodedata
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit

from bridge.errors import InputError, MediaError


class State(StrEnum):
    QUEUED = "queued"
    UPLOADING = "uploading"
    SUBMITTED = "submitted"
    PROCESSING = "processing"
    DOWNLOADING = "downloading"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"


FINAL_STATES = frozenset({State.COMPLETED, State.FAILED, State.CANCELED})
ACTIVE_STATES = frozenset(State) - FINAL_STATES

# Which state may follow which. Self-transitions let a step record progress or a retry.
TRANSITIONS: dict[State, frozenset[State]] = {
    State.QUEUED: frozenset({State.QUEUED, State.UPLOADING}),
    State.UPLOADING: frozenset({State.UPLOADING, State.QUEUED, State.SUBMITTED}),
    State.SUBMITTED: frozenset({State.SUBMITTED, State.PROCESSING, State.DOWNLOADING}),
    State.PROCESSING: frozenset({State.PROCESSING, State.DOWNLOADING}),
    State.DOWNLOADING: frozenset({State.DOWNLOADING, State.PROCESSING, State.COMPLETED}),
    State.COMPLETED: frozenset(),
    # A retry starts over (QUEUED) or, when the remote request is known, polls it again.
    State.FAILED: frozenset({State.QUEUED, State.SUBMITTED}),
    State.CANCELED: frozenset({State.QUEUED, State.SUBMITTED}),
}


def can_transition(old: State, new: State) -> bool:
    if new in (State.FAILED, State.CANCELED):
        return old not in FINAL_STATES
    return new in TRANSITIONS[old]


DEFAULT_MODEL = "lipsync-2"
MAX_REFERENCE_ID = 128
# Used with fullmatch: `$` would also match before a trailing newline.
REFERENCE_ID_PATTERN = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{MAX_REFERENCE_ID - 1}}}")
# No real cut starts or lasts a week: bigger numbers are mistakes (or units mixed up).
MAX_RANGE_SECONDS = 7 * 24 * 3600
URL_SCHEMES = ("http", "https")
# Quoted values are cut to this many characters, so a sentence stays readable.
QUOTE_LIMIT = 40
URL_QUOTE_LIMIT = 80  # enough to show a URL's scheme, host and port
# A client's own record of a job (the add-on's file id, its insert target): kept verbatim.
MAX_CLIENT_BYTES = 16 * 1024
CLIENT_FILE_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_reference_id(prefix: str = "cl") -> str:
    """A unique, readable reference_id: prefix, UTC date and time, random suffix."""
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(3)}"


# Latin letters that Unicode does not decompose into a base letter and a mark, or whose
# readable ASCII form is two letters (German umlauts); the rest lose their marks.
_LATIN_SPELLINGS = str.maketrans(
    {
        "Ä": "Ae", "Ö": "Oe", "Ü": "Ue", "ä": "ae", "ö": "oe", "ü": "ue",
        "ß": "ss", "ẞ": "SS", "Æ": "AE", "æ": "ae", "Œ": "OE", "œ": "oe",
        "Ø": "O", "ø": "o", "Ł": "L", "ł": "l", "Đ": "D", "đ": "d", "Ð": "D", "ð": "d",
        "Þ": "Th", "þ": "th", "Ħ": "H", "ħ": "h", "ı": "i",
    }
)  # fmt: skip


def latin_ascii(text: str) -> str:
    """`text` with Latin letters spelled in ASCII ("Ärger" -> "Aerger", "café" -> "cafe");
    a character with no Latin spelling (CJK, emoji) becomes a space, so words stay apart."""
    spelled = unicodedata.normalize("NFC", text).translate(_LATIN_SPELLINGS)
    return "".join(
        unicodedata.normalize("NFKD", char).encode("ascii", "ignore").decode("ascii")
        or ("" if unicodedata.combining(char) else " ")
        for char in spelled
    )


def safe_reference_id(text: str, max_len: int = 80) -> str:
    """Turn free text (file and strip names) into a valid reference_id stem."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", latin_ascii(text)).strip("-._")
    cleaned = re.sub(r"\.{2,}", ".", cleaned)[:max_len].strip("-._")
    return cleaned or "clip"


def quoted(value: str, limit: int = QUOTE_LIMIT) -> str:
    """`value` as a Python literal (control characters escaped), cut to `limit` characters."""
    return repr(value[:limit]) + ("..." if len(value) > limit else "")


def is_reference_id(value: str) -> bool:
    """Whether `value` may be sent as it is (the pattern bounds its length too)."""
    return bool(REFERENCE_ID_PATTERN.fullmatch(value)) and ".." not in value


def check_reference_id(value: str) -> str:
    if len(value) > MAX_REFERENCE_ID:
        raise InputError(
            f"reference_id {quoted(value)} is {len(value)} characters long; use at most "
            f"{MAX_REFERENCE_ID}."
        )
    if not is_reference_id(value):
        raise InputError(
            f"reference_id {quoted(value)} is not allowed: use 1-{MAX_REFERENCE_ID} letters, "
            "digits, '.', '_' or '-', starting with a letter or digit and without '..'."
        )
    return value


def normalize_reference_id(value: str) -> str:
    """The reference_id a client asked for, made valid: a valid one unchanged, free text
    (a strip name like "Ärger Take 1") spelled as safe_reference_id spells it; an
    InputError for one too long, with control characters or with nothing usable in it, so
    clients need no copy of these rules."""
    if len(value) > MAX_REFERENCE_ID or any(unicodedata.category(c) in ("Cc", "Cf") for c in value):
        return check_reference_id(value)  # refused as it always was: no guessing at intent
    if is_reference_id(value):
        return value
    if not re.search(r"[A-Za-z0-9]", latin_ascii(value)):
        raise InputError(
            f"reference_id {quoted(value)} has no letter or digit to make an id from; use "
            f"1-{MAX_REFERENCE_ID} letters, digits, '.', '_' or '-'."
        )
    return safe_reference_id(value, max_len=MAX_REFERENCE_ID)


def reference_base(reference_id: str) -> str:
    """A reference_id without its retry suffix (`shot-4-r3` -> `shot-4`), short enough for one."""
    return re.sub(r"-r\d+$", "", reference_id)[: MAX_REFERENCE_ID - 8]


def numbered_reference_ids(base: str, first: int = 1) -> Iterator[str]:
    """`base-r<first>`, then the following numbers; number 1 is `base` itself. How a job run
    again (a retry, a pair dropped again) gets a reference_id the API never saw."""
    n = first
    while True:
        yield base if n == 1 else f"{base}-r{n}"
        n += 1


def check_options(
    body: dict[str, Any],
    allowed: frozenset[str],
    text: frozenset[str],
    *,
    unknown: str,
    where: str = "",
) -> None:
    """The options a job request may set, refused by name (the local API and the watch
    folder's sidecars share them): no unknown name, `text` ones strings, the flag a bool.

    `unknown` starts the sentence naming unknown options; `where` ("In the sidecar x.json, ")
    starts the others.
    """
    extra = sorted(set(body) - allowed)
    if extra:
        raise InputError(f"{unknown} {', '.join(extra)}; allowed: {', '.join(sorted(allowed))}.")
    for name in sorted(text):
        if body.get(name) is not None and not isinstance(body[name], str):
            raise InputError(f"{where}{name} must be a string.")
    if not isinstance(body.get("disable_active_speaker_detection", False), bool):
        raise InputError(f"{where}disable_active_speaker_detection must be true or false.")


def _url_parts(url: str) -> SplitResult | None:
    """The URL's parts, or None when it cannot be parsed (control characters, bad port, ...)."""
    if any(ord(c) < 32 or ord(c) == 127 for c in url):
        return None
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (reading the port is what checks it)
    except ValueError:  # e.g. "http://[::1": an unclosed IPv6 bracket
        return None
    return parts


def check_url(kind: str, url: str) -> str:
    """Refuse a `kind` ("video", "audio") URL the API could never fetch, naming what is wrong."""
    parts, shown = _url_parts(url), quoted(url, URL_QUOTE_LIMIT)
    if parts is None:
        raise InputError(
            f"The {kind} URL {shown} is malformed; give a full http:// or https:// URL."
        )
    if parts.scheme.lower() not in URL_SCHEMES:
        problem = (
            f"uses {parts.scheme}://, which the API cannot fetch"
            if parts.scheme
            else "has no scheme"
        )
        raise InputError(
            f"The {kind} URL {shown} {problem}; give an http:// or https:// URL, or a "
            "local file by its path."
        )
    if not parts.hostname:
        raise InputError(
            f"The {kind} URL {shown} names no host; give a full URL such as "
            "https://example.com/clip.mp4."
        )
    return url


def check_path(what: str, path: str) -> str:
    """Refuse a path no file can have (a NUL byte) or that is not text (a lone surrogate)."""
    if "\x00" in path:
        raise InputError(
            f"The {what} {path!r} contains a NUL byte, which no file name can hold; "
            "check how the path was built."
        )
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(
            f"The {what} {path!r} contains characters that are not valid text (a lone "
            "surrogate, e.g. from a name in another encoding); rename it with plain characters."
        ) from None
    return path


def check_input_file(path: Path) -> int:
    """The size of an input file, after making sure it is a regular file; MediaError if not.

    Only stat is used: opening a FIFO to probe it would block until some writer came along.
    """
    try:
        info = path.stat()
    except FileNotFoundError:
        raise MediaError(
            f"The file {path} does not exist; check the path or choose the file again."
        ) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise MediaError(
                f"The path {path} runs into a loop of symbolic links and leads to no file; fix "
                "the links or choose the real file."
            ) from None
        raise MediaError(
            f"The file {path} cannot be read ({exc.strerror}); check that it is accessible."
        ) from None
    if stat.S_ISDIR(info.st_mode):
        raise MediaError(f"{path} is a folder, not a media file; choose a video or audio file.")
    if stat.S_ISFIFO(info.st_mode):
        raise MediaError(
            f"The file {path} is a named pipe (FIFO), not a media file; save the media to a "
            "regular file and choose that."
        )
    if not stat.S_ISREG(info.st_mode):
        raise MediaError(
            f"The file {path} is a device or socket, not a media file; choose a regular video "
            "or audio file."
        )
    if info.st_size == 0:
        raise MediaError(
            f"The file {path} is empty (0 bytes); export or copy it again and choose the new file."
        )
    return info.st_size


def check_client(value: Any) -> dict[str, Any]:
    """A client's record of a job: any JSON object up to MAX_CLIENT_BYTES, kept verbatim;
    only its `file` (the listing filter) must be a short plain id."""
    if not isinstance(value, dict):
        raise InputError("client must be a JSON object (or left out).")
    try:
        size = len(json.dumps(value, separators=(",", ":"), allow_nan=False).encode())
    except ValueError:
        raise InputError(
            "client may hold only plain JSON values, not NaN or Infinity; send finite numbers."
        ) from None
    if size > MAX_CLIENT_BYTES:
        raise InputError(
            f"client is {size} bytes as JSON; keep it to {MAX_CLIENT_BYTES} bytes (16 KiB)."
        )
    if "file" in value:
        check_file_id(value["file"], "client.file")
    return value


def check_file_id(value: Any, what: str) -> str:
    """A client's id of a file (its jobs are listed by it): 1-64 of [A-Za-z0-9_-]."""
    if not (isinstance(value, str) and CLIENT_FILE_PATTERN.fullmatch(value)):
        raise InputError(f"{what} must be a string of 1-64 letters, digits, '_' or '-'.")
    return value


@dataclass(frozen=True)
class MediaRange:
    """A cut of a source file (the video's `video_range`, the audio's `audio_range`), in
    seconds from its start."""

    start_seconds: float
    duration_seconds: float

    @classmethod
    def from_json(cls, value: Any, name: str = "video_range") -> MediaRange:
        """Parse the request field `name`, refusing it with a sentence that names it."""
        if not isinstance(value, dict) or set(value) != {"start_seconds", "duration_seconds"}:
            raise InputError(
                f"{name} must be an object with exactly start_seconds and duration_seconds."
            )
        start, duration = value["start_seconds"], value["duration_seconds"]
        numbers = all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in (start, duration)
        )
        # Comparisons, not float(): NaN fails every one, and a huge int does not overflow.
        if not (numbers and 0 <= start <= MAX_RANGE_SECONDS and 0 < duration <= MAX_RANGE_SECONDS):
            raise InputError(
                f"{name} needs start_seconds from 0 and duration_seconds above 0, both "
                f"finite numbers of seconds up to {MAX_RANGE_SECONDS} (7 days)."
            )
        return cls(float(start), float(duration))

    def as_tuple(self) -> tuple[float, float]:
        return (self.start_seconds, self.duration_seconds)


RANGE_FIELDS = ("video_range", "audio_range")


@dataclass
class JobSpec:
    """What a client asks for. Exactly one of path/url for each of video and audio."""

    video_path: str | None = None
    video_url: str | None = None
    audio_path: str | None = None
    audio_url: str | None = None
    reference_id: str | None = None
    disable_active_speaker_detection: bool = False
    model: str | None = None
    output_dir: str | None = None
    output_name: str | None = None
    video_range: MediaRange | None = None
    # The part of the audio file to send, cut sample-exactly (padded with silence past its end).
    audio_range: MediaRange | None = None
    # The client's own record of the job, returned as given; `client["file"]` is a filter.
    client: dict[str, Any] | None = None
    origin: str = "api"

    @classmethod
    def from_json(cls, body: Any, *, origin: str = "api") -> JobSpec:
        """Parse and validate a local-API request body; unknown fields are refused."""
        if not isinstance(body, dict):
            raise InputError("The request body must be a JSON object.")
        allowed = frozenset(f.name for f in fields(cls)) - {"origin", "output_name"}
        text_fields = allowed - {*RANGE_FIELDS, "disable_active_speaker_detection", "client"}
        check_options(body, allowed, text_fields, unknown="Unknown field(s)")
        ranges = {
            name: MediaRange.from_json(body[name], name)
            for name in RANGE_FIELDS
            if body.get(name) is not None
        }
        client = body.get("client")
        spec = cls(
            **{k: body.get(k) for k in text_fields},
            **ranges,
            disable_active_speaker_detection=body.get("disable_active_speaker_detection", False),
            client=check_client(client) if client is not None else None,
            origin=origin,
        )
        return spec.validated()

    def validated(self) -> JobSpec:
        """Check the spec's shape (not the media itself: that is `media.py`'s job)."""
        for kind in ("video", "audio"):
            path, url = getattr(self, f"{kind}_path"), getattr(self, f"{kind}_url")
            if bool(path) == bool(url):
                raise InputError(f"Give exactly one of {kind}_path or {kind}_url.")
            if path and not os.path.isabs(check_path(f"{kind} path", path)):
                raise InputError(f"{kind}_path must be an absolute path, got {path!r}.")
            if url:
                check_url(kind, url)
        if bool(self.video_path) != bool(self.audio_path):
            raise InputError(
                "Give both inputs as local files or both as URLs: the API takes uploads or "
                "links, not a mix."
            )
        for kind in ("video", "audio"):
            if getattr(self, f"{kind}_range") and getattr(self, f"{kind}_url"):
                raise InputError(f"{kind}_range works with {kind}_path only, not with {kind}_url.")
        if self.reference_id is not None:
            check_reference_id(self.reference_id)
        if self.model not in (None, DEFAULT_MODEL):
            raise InputError(f'model must be "{DEFAULT_MODEL}".')
        if self.output_dir is not None and (
            not os.path.isabs(check_path("output folder", self.output_dir))
            or ".." in Path(self.output_dir).parts
        ):
            raise InputError(
                f"output_dir must be an absolute folder path without '..', got {self.output_dir!r}."
            )
        if self.output_name is not None and (
            os.path.basename(self.output_name) != self.output_name
            or self.output_name in ("", ".", "..")
        ):
            raise InputError(f"output_name must be a plain file name, got {self.output_name!r}.")
        return self


# How a job's error reads when it failed for want of a working API key (the API's 401/403
# in remote.py, no key at all in Engine._require_remote), and how it reads once a new key
# is set. Matched on the sentence: the engine records no error kind yet.
KEY_FAILURES = {
    "refused the API key": "The Chamelaion API refused the previous API key; a new key has "
    "been set since: retry the job.",
    "No Chamelaion API key is set": "The bridge had no API key when this job ran; a key has "
    "been set since: retry the job.",
}


@dataclass(kw_only=True)
class Job(JobSpec):
    """A job as stored and as shown in the local API's JSON: the request plus its progress."""

    id: str
    reference_id: str
    state: State
    progress: float = 0.0
    request_id: str | None = None
    output_path: str | None = None
    error: str | None = None
    # Why an unfinished job is waiting, e.g. on a 429; cleared once it moves on.
    note: str | None = None
    created_at: str = field(default_factory=now_iso)
    updated_at: str = field(default_factory=now_iso)
    remote_status: str | None = None
    attempts: int = 0
    submit_started: bool = False
    # The temporary file a download writes, recorded before it is created (crash recovery).
    part_path: str | None = None
    # When the last generate call whose outcome is unknown started (a 5xx, a timeout, a drop,
    # a crash): the API may still take it, so it is not sent again before a grace period.
    unsettled_since: str | None = None
    previous_reference_ids: list[str] = field(default_factory=list)
    # A final job the user put away: left out of listings, its files and reference_id kept.
    cleared: bool = False

    @property
    def is_final(self) -> bool:
        return self.state in FINAL_STATES

    def error_with_new_key(self) -> str | None:
        """What this job's error says once a new API key is set, if it failed on the key."""
        if self.state != State.FAILED:
            return None
        return next((new for old, new in KEY_FAILURES.items() if old in (self.error or "")), None)

    def to_json(self) -> dict[str, Any]:
        """The pinned fields first (id, reference_id, state, ...), then the inputs."""
        data = asdict(self)
        data["state"] = str(self.state)
        data.pop("submit_started")
        data.pop("part_path")
        data.pop("unsettled_since")
        return {name: data.pop(name) for name in PINNED_JSON_FIELDS} | data


PINNED_JSON_FIELDS = (
    "id",
    "reference_id",
    "state",
    "progress",
    "request_id",
    "output_path",
    "error",
    "created_at",
    "updated_at",
)
