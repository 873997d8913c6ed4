"""Fault injection for the emulator: error answers, dropped connections, delays and forced
request outcomes, installed through the emulator's hooks (`EmulatorState.hooks`), and
outages (its listening socket closed, then opened again).

    faults_of(emulator).add("generate-with-media", "429", count=-1, retry_after=0.05)
    faults_of(emulator).fail_next(1, "no face found")

Rules and outcomes may be added from any thread (e.g. next to `emulator_in_background`).
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

from aiohttp import web

from bridge.emulator import ENDPOINT, ENDPOINTS, NOT_FOUND, STATE, LipsyncRecord, RunningEmulator
from bridge.emulator.app import error_response
from bridge.emulator.state import EmulatorState, Handler

ENDPOINT_GROUPS = {"any": frozenset(ENDPOINTS), "requests": frozenset({"retrieve", "list"})}
GENERATE = frozenset({"generate", "generate-with-media"})
AFTER_ACCEPT = frozenset({"drop-after-accept", "delay-after-accept", "accept-late"})
FAULT_KINDS = frozenset(
    {
        "429",
        "500",
        "502-html",
        "401",
        "404",
        "412",
        "delay",
        "drop",
        "drop-after-accept",
        "delay-after-accept",
        "accept-late",
        "drop-midway",
    }
)
# Kinds that only make sense for some endpoints.
KIND_ENDPOINTS = {
    "drop-after-accept": GENERATE,
    "delay-after-accept": GENERATE,
    # A gateway answers 504 while the API behind it takes the request `delay` s later.
    "accept-late": GENERATE,
    "drop-midway": frozenset({"output"}),
}
ERROR_ANSWERS = {
    "500": (500, "internal error"),
    "401": (401, "unauthorized"),
    "404": (404, NOT_FOUND),
    "412": (412, "token limit reached"),
}
JOB_OUTCOMES = frozenset({"fail", "no-output"})
NGINX_502 = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
)
NGINX_504 = NGINX_502.replace("502 Bad Gateway", "504 Gateway Time-out")


@dataclass
class FaultRule:
    """One injected misbehaviour of an endpoint, used up after `count` calls (-1: forever)."""

    endpoint: str
    kind: str
    count: int = 1
    retry_after: float | None = None
    delay: float = 0.0
    # The chance that a matching call misbehaves (a soak's "30 % of answers are errors").
    probability: float = 1.0

    def __post_init__(self) -> None:
        targets = ENDPOINT_GROUPS.get(self.endpoint, {self.endpoint})
        if not targets <= set(ENDPOINTS):
            raise ValueError(f"unknown endpoint {self.endpoint!r}")
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}")
        if not targets <= KIND_ENDPOINTS.get(self.kind, targets):
            raise ValueError(f"fault kind {self.kind!r} does not apply to {self.endpoint!r}")
        if self.count == 0 or self.count < -1:
            raise ValueError("count must be a positive number or -1 (forever)")
        if not 0 < self.probability <= 1:
            raise ValueError("probability must be above 0 and at most 1")

    def matches(self, endpoint: str) -> bool:
        return self.count != 0 and endpoint in ENDPOINT_GROUPS.get(self.endpoint, {self.endpoint})


@dataclass
class JobOutcome:
    """Forces how the next `count` created requests end: `fail` or `no-output` (completed)."""

    outcome: str
    count: int = 1
    error_message: str = "lip sync failed"

    def __post_init__(self) -> None:
        if self.outcome not in JOB_OUTCOMES:
            raise ValueError(f"unknown job outcome {self.outcome!r}")
        if self.count == 0 or self.count < -1:
            raise ValueError("count must be a positive number or -1 (forever)")


class Faults:
    """An emulator's injected faults and forced outcomes, with a count of faults that fired."""

    def __init__(self, state: EmulatorState) -> None:
        self.state = state
        self.rules: list[FaultRule] = []
        self.outcomes: list[JobOutcome] = []
        self.fired: Counter[str] = Counter()
        self._forced: dict[str, JobOutcome] = {}  # request id -> how it is to end

    def add(
        self,
        endpoint: str,
        kind: str,
        *,
        count: int = 1,
        retry_after: float | None = None,
        delay: float = 0.0,
        probability: float = 1.0,
    ) -> FaultRule:
        """Make the next `count` calls to `endpoint` misbehave as `kind` (each with
        `probability`)."""
        rule = FaultRule(endpoint, kind, count, retry_after, delay, probability)
        self.rules.append(rule)
        return rule

    def fail_next(self, count: int = 1, error_message: str = "lip sync failed") -> None:
        """The next `count` created requests end `failed` with `error_message`."""
        self.outcomes.append(JobOutcome("fail", count, error_message))

    def complete_without_output_next(self, count: int = 1) -> None:
        """The next `count` created requests end `completed` but carry no output_url."""
        self.outcomes.append(JobOutcome("no-output", count))

    def _take_rule(self, endpoint: str) -> FaultRule | None:
        """The first matching rule that fires for this call, if any (used up by one)."""
        for rule in self.rules:
            if rule.matches(endpoint) and random.random() < rule.probability:
                if rule.count > 0:
                    rule.count -= 1
                self.fired[rule.kind] += 1
                return rule
        return None

    def _take_outcome(self) -> JobOutcome | None:
        outcome = next((o for o in self.outcomes if o.count != 0), None)
        if outcome is not None and outcome.count > 0:
            outcome.count -= 1
        return outcome

    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """The emulator hook: misbehave as the first matching rule says, else answer."""
        endpoint = request[ENDPOINT]
        rule = self._take_rule(endpoint)
        if rule is None or rule.kind in AFTER_ACCEPT:
            return await self._after_accept(request, handler, rule)
        if rule.kind == "drop-midway":
            return await self._send_half(request, await handler(request))
        if rule.kind == "delay":
            await asyncio.sleep(rule.delay)
            return await handler(request)
        await _drain(request)
        if rule.kind == "drop":
            return _drop(request)
        if rule.kind == "502-html":
            return web.Response(status=502, text=NGINX_502, content_type="text/html")
        if rule.kind == "429":
            headers = {} if rule.retry_after is None else {"Retry-After": f"{rule.retry_after:g}"}
            return error_response(429, "rate limit exceeded", headers)
        return error_response(*ERROR_ANSWERS[rule.kind])

    async def _after_accept(
        self, request: web.Request, handler: Handler, rule: FaultRule | None
    ) -> web.StreamResponse:
        """The emulator's answer, unless a request it created is to be answered lost (dropped),
        late (delayed) or with a gateway's timeout while the API shows it later: the moments
        a client may pay without knowing it. A created request takes the next forced outcome."""
        response = await handler(request)
        created = _created_id(request[ENDPOINT], response)
        if created is None:
            return response
        outcome = self._take_outcome()
        if outcome is not None:
            self._forced[created] = outcome
        if rule is None:
            return response
        if rule.kind == "drop-after-accept":
            return _drop(request)
        if rule.kind == "accept-late":
            record = self.state.requests.pop(created)
            asyncio.get_running_loop().call_later(rule.delay, self._show, record)
            return web.Response(status=504, text=NGINX_504, content_type="text/html")
        await asyncio.sleep(rule.delay)
        return response

    async def _send_half(
        self, request: web.Request, answer: web.StreamResponse
    ) -> web.StreamResponse:
        """Start sending the result file, then hang up halfway through it."""
        record = self.state.requests.get(request.match_info["id"])
        if answer.status != 200 or record is None or record.output_path is None:
            return answer
        data = record.output_path.read_bytes()
        response = web.StreamResponse(headers={"Content-Type": "video/mp4"})
        response.content_length = len(data)
        await response.prepare(request)
        await response.write(data[: len(data) // 2])
        return _drop(request)

    def _show(self, record: LipsyncRecord) -> None:
        record.created_at = datetime.now(UTC)
        self.state.requests[record.id] = record

    def finish(self, record: LipsyncRecord) -> None:
        """The emulator hook: end a request as its forced outcome says."""
        outcome = self._forced.pop(record.id, None)
        if outcome is None:
            return
        record.output_url = None
        if outcome.outcome == "fail":
            record.status, record.error_message = "failed", outcome.error_message


def faults_of(emulator: RunningEmulator) -> Faults:
    """The emulator's fault injector, installed on its hooks the first time it is asked for
    (again after the emulator's `reset`, which removes it)."""
    state = emulator.app[STATE]
    for middleware in state.hooks.middlewares:
        owner = getattr(middleware, "__self__", None)
        if isinstance(owner, Faults):
            return owner
    faults = Faults(state)
    state.hooks.middlewares.append(faults.middleware)
    state.hooks.finishers.append(faults.finish)
    return faults


async def go_offline(emulator: RunningEmulator) -> None:
    """An outage: refuse new connections and cut the open ones; requests are kept."""
    await emulator.site.stop()
    assert emulator.runner.server is not None
    for connection in list(emulator.runner.server.connections):
        connection.force_close()


async def go_online(emulator: RunningEmulator) -> None:
    """Back after an outage, on the same address."""
    address = urlsplit(emulator.url)
    emulator.site = web.TCPSite(emulator.runner, address.hostname, address.port)
    await emulator.site.start()


def _created_id(endpoint: str, response: web.StreamResponse) -> str | None:
    """The id of the request a generate call just created, if it created one."""
    if endpoint not in GENERATE or response.status != 200:
        return None
    assert isinstance(response, web.Response) and response.text is not None
    return json.loads(response.text)["request_id"]


async def _drain(request: web.Request) -> None:
    """Read and discard the body, as a buffering proxy does before it answers."""
    while await request.content.readany():
        pass


def _drop(request: web.Request) -> web.StreamResponse:
    """Cut the connection without answering; aiohttp then writes nothing."""
    assert request.transport is not None
    request.transport.abort()
    return web.Response()
