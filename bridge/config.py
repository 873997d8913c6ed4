"""The bridge's settings, from the environment (pinned names) with flags on top."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from bridge import discovery
from bridge.keys import is_usable_key

DEFAULT_API_BASE = "https://api.chamelaion.com/api"
MIN_POLL_INTERVAL = 0.05  # below that, polling is a flood of API calls
MAX_POLL_INTERVAL = 3600.0
Number = TypeVar("Number", int, float)


class ConfigError(ValueError):
    """A setting cannot be used; the message is one sentence that names it."""


def _env_number(
    name: str, parse: Callable[[str], Number], usable: Callable[[Number], bool], what: str
) -> Number | None:
    """The number an environment variable holds, None when unset; ConfigError if unusable."""
    raw = os.environ.get(name)
    if not raw:
        return None
    try:
        value = parse(raw)
    except ValueError:
        value = None
    if value is None or not usable(value):
        raise ConfigError(f"{name}={raw!r} is not usable: give {what}, or unset it.")
    return value


# Tuning variables that set one field each: (variable, field, parse, usable, what to give).
TUNING: tuple[tuple[str, str, Callable[[str], Any], Callable[[Any], bool], str], ...] = (
    (
        "CHAMELAION_GENERATE_PER_MINUTE",
        "generate_per_minute",
        int,
        lambda v: v >= 0,
        "a whole number of generate calls per minute, 0 for no limit",
    ),
    (
        "CHAMELAION_RETRY_CAP",
        "retry_cap",
        float,
        lambda v: 1 <= v <= MAX_POLL_INTERVAL,
        f"the longest wait between tries in seconds, from 1 to {MAX_POLL_INTERVAL:g}",
    ),
    (
        "CHAMELAION_ACCEPT_GRACE",
        "accept_grace",
        float,
        lambda v: 0 <= v <= MAX_POLL_INTERVAL,
        f"a number of seconds from 0 to {MAX_POLL_INTERVAL:g}",
    ),
)


@dataclass(frozen=True)
class Secret:
    """Holds the API key so that printing, logging or repr-ing a config never shows it."""

    value: str | None = field(repr=False)

    def __bool__(self) -> bool:
        return bool(self.value)

    def __repr__(self) -> str:
        return "Secret(set)" if self.value else "Secret(unset)"

    __str__ = __repr__


def api_key_from_env() -> tuple[Secret, str]:
    """The user's key and how to send it: CHAMELAION_API_KEY (as x-api-key) wins over
    CHAMELAION_BEARER_TOKEN (as Authorization: Bearer), the SDK's two variables."""
    api_key = os.environ.get("CHAMELAION_API_KEY")
    bearer = os.environ.get("CHAMELAION_BEARER_TOKEN")
    variable = "CHAMELAION_API_KEY" if api_key or not bearer else "CHAMELAION_BEARER_TOKEN"
    value = api_key or bearer or None
    if value is not None and not is_usable_key(value):  # never quoted: it is a secret
        raise ConfigError(
            f"{variable} is not usable: a key is 1 to 1024 printable ASCII characters without "
            "spaces (look for a stray space or line break); fix it or unset it."
        )
    return Secret(value), "x-api-key" if variable == "CHAMELAION_API_KEY" else "bearer"


def redact_url(url: str) -> str:
    """The URL as it may be shown or logged: user, password, query and path parameter values
    replaced by '***', since CHAMELAION_BASE_URL may carry credentials in any of them."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "(an unreadable URL)"
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{'***@' if '@' in parts.netloc else ''}{host}{f':{port}' if port else ''}"
    pieces = (piece.partition("=") for piece in parts.query.split("&") if piece)
    query = "&".join(f"{name}=***" if sep else "***" for name, sep, _ in pieces)
    path = re.sub(r";([^/;=]*)=[^/;]*", r";\1=***", parts.path)  # ;token=... path parameters
    return urlunsplit((parts.scheme, netloc, path, query, ""))


@dataclass(frozen=True)
class BridgeConfig:
    data_dir: Path
    api_base: str = DEFAULT_API_BASE
    api_key: Secret = Secret(None)
    api_auth: str = "x-api-key"  # or "bearer", when the key came from CHAMELAION_BEARER_TOKEN
    host: str = "127.0.0.1"
    port: int = discovery.DEFAULT_PORT
    upload_concurrency: int = 2
    generate_per_minute: int = 60  # the API's documented limit; 0 lifts it (emulator runs)
    poll_interval: float = 2.0
    max_poll_interval: float = 30.0
    # A request the API answers "not found" for this long is taken as forgotten by the API.
    forget_after: float = 60.0
    # Waits between tries after a transient failure: jittered, doubling from base up to cap.
    retry_base: float = 1.0
    retry_cap: float = 60.0
    # After a generate call with no clear answer, how long the API may take to show the request
    # it may have accepted before the job is sent again (the SDK's own timeout is 60 s).
    accept_grace: float = 90.0
    watch_poll: bool = False  # watch folders by polling (network shares that send no events)
    watch_follow_symlinks: bool = False  # accept watch inputs linking outside their folder

    @property
    def store_path(self) -> Path:
        return self.data_dir / discovery.STORE_FILE

    @property
    def output_dir(self) -> Path:
        """Where results go when a job names no output folder."""
        return self.data_dir / discovery.OUTPUT_DIR

    @property
    def work_dir(self) -> Path:
        """Scratch space for converted or cut inputs; cleaned as jobs finish."""
        return self.data_dir / discovery.WORK_DIR

    @classmethod
    def from_env(
        cls, data_dir: str | os.PathLike[str] | None = None, **overrides: object
    ) -> BridgeConfig:
        """Read the pinned environment variables; explicit overrides (flags) win."""
        api_key, api_auth = api_key_from_env()
        values: dict[str, object] = {
            "data_dir": discovery.data_dir(data_dir),
            "api_base": (os.environ.get("CHAMELAION_BASE_URL") or DEFAULT_API_BASE).rstrip("/"),
            "api_key": api_key,
            "api_auth": api_auth,
        }
        poll = _env_number(
            "CHAMELAION_POLL_INTERVAL",
            float,
            lambda v: MIN_POLL_INTERVAL <= v <= MAX_POLL_INTERVAL,  # NaN fails both
            f"a poll interval in seconds from {MIN_POLL_INTERVAL:g} to {MAX_POLL_INTERVAL:g}",
        )
        if poll is not None:
            # Tuning knob (tests, impatient demos): the first poll interval and 15x as the cap.
            values["poll_interval"] = poll
            values["max_poll_interval"] = poll * 15
        for variable, name, parse, usable, what in TUNING:
            value = _env_number(variable, parse, usable, what)
            if value is not None:
                values[name] = value
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]
