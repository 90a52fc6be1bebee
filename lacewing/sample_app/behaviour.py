"""What the sample app does with one request: answer, fail, wait, or drop the connection.

Before: a parsed request (method, target, headers) and the server's configured `Behaviour`
(fail rate, latency, close rate, ...), plus a source of uniform random numbers. After: a
`Plan` that the socket layer (`server.py`) carries out, and the JSON document it sends. No
sockets or clocks here, so every rule is tested with a seeded random source.

Rules, in order:
1. Per-request override headers are read first; a bad one gives a 400 that names it.
   `x-sample-status: 503` forces the status, `x-sample-delay: 200ms` replaces the configured
   latency, `x-sample-close: reset|fin|true` forces a dropped connection,
   `x-sample-response-bytes: N` sizes the answer's body (see `encode_body`).
2. `/healthz` (any method, any query) is exempt from the random faults and the configured
   latency, so probes keep working while the app misbehaves, unless the server runs with
   `fail_healthz`, in which case it always answers `fail_status`. Overrides still apply.
3. Otherwise three draws are made, always in this order so a seeded run repeats exactly:
   close (`close_rate`), jitter (uniform in [0, `latency_jitter`] added to `latency`), and
   fail (`fail_rate` answers `fail_status` with `"failed": true`).
4. The delay applies before the connection is dropped, too: the request "was processed" and
   then the server vanished.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace

from lacewing.sample_app.identity import Identity
from lacewing.sample_app.units import parse_duration, parse_status

HEALTH_PATH = "/healthz"
HEADER_STATUS = "x-sample-status"
HEADER_DELAY = "x-sample-delay"
HEADER_CLOSE = "x-sample-close"
HEADER_RESPONSE_BYTES = "x-sample-response-bytes"
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
CLOSE_MODES = ("reset", "fin")
MAX_OVERRIDE_DELAY = 600.0  # seconds; a header may not park a server thread for longer

# Why a response looks the way it does; reported in the JSON body and the log line.
REASON_OK = "ok"
REASON_FAIL_RATE = "fail-rate"
REASON_CLOSE_RATE = "close-rate"
REASON_FORCED = "forced"
REASON_BAD_OVERRIDE = "bad-override"
REASON_HEALTHZ = "healthz"
REASON_HEALTHZ_FAILING = "healthz-failing"


@dataclass(frozen=True)
class Behaviour:
    """The faults a server injects; the defaults make a well-behaved server."""

    fail_rate: float = 0.0
    fail_status: int = 503
    latency: float = 0.0  # seconds
    latency_jitter: float = 0.0  # seconds, uniform in [0, jitter] added to latency
    close_rate: float = 0.0
    close_mode: str = "reset"  # "reset" sends RST, "fin" a plain close
    fail_healthz: bool = False
    response_bytes: int = 0  # pad answers' bodies to this size (0: no padding)

    def __post_init__(self) -> None:
        for name in ("fail_rate", "close_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within 0..1, got {value}")
        if self.latency < 0 or self.latency_jitter < 0:
            raise ValueError("latency and latency_jitter must not be negative")
        if not 200 <= self.fail_status <= 599:
            raise ValueError(f"fail_status must be 200..599, got {self.fail_status}")
        if not 0 <= self.response_bytes <= MAX_RESPONSE_BYTES:
            raise ValueError(f"response_bytes must be 0..{MAX_RESPONSE_BYTES}, got {self.response_bytes}")
        if self.close_mode not in CLOSE_MODES:
            raise ValueError(f"close_mode must be one of {CLOSE_MODES}, got {self.close_mode!r}")


@dataclass(frozen=True)
class Plan:
    """What to do with one request. `status is None` means: drop the connection, no answer."""

    status: int | None
    delay: float
    failed: bool
    reason: str
    close_mode: str = "reset"
    error: str | None = None
    response_bytes: int = 0  # the body is padded to this size (see encode_body)

    @property
    def closes(self) -> bool:
        return self.status is None


def header_map(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Lower-cased header names to values; repeated headers joined with ", " (RFC 9110 §5.3)."""
    out: dict[str, str] = {}
    for name, value in headers:
        key = name.lower()
        out[key] = f"{out[key]}, {value}" if key in out else value
    return out


def request_path(target: str) -> str:
    """The path of a request target, without query or fragment."""
    return target.split("?", 1)[0].split("#", 1)[0]


def plan_request(
    *,
    target: str,
    headers: Mapping[str, str],
    behaviour: Behaviour,
    random: Callable[[], float],
) -> Plan:
    """Decide the fate of one request (see the module docstring for the rules).

    `headers` has lower-cased names (see `header_map`); `random` returns floats in [0, 1).
    """
    plan = _plan(target=target, headers=headers, behaviour=behaviour, random=random)
    if plan.closes or plan.reason == REASON_BAD_OVERRIDE:
        return plan
    try:
        size = _override_response_bytes(headers)
    except ValueError as exc:
        return Plan(status=400, delay=0.0, failed=False, reason=REASON_BAD_OVERRIDE, error=str(exc))
    return replace(plan, response_bytes=behaviour.response_bytes if size is None else size)


def _plan(*, target: str, headers: Mapping[str, str], behaviour: Behaviour,
          random: Callable[[], float]) -> Plan:
    try:
        forced_status = _override_status(headers)
        forced_delay = _override_delay(headers)
        forced_close = _override_close(headers)
    except ValueError as exc:
        return Plan(status=400, delay=0.0, failed=False, reason=REASON_BAD_OVERRIDE, error=str(exc))

    if request_path(target) == HEALTH_PATH:
        delay = forced_delay if forced_delay is not None else 0.0
        if forced_close:
            return Plan(status=None, delay=delay, failed=True, reason=REASON_FORCED, close_mode=forced_close)
        if forced_status is not None:
            return Plan(status=forced_status, delay=delay, failed=forced_status >= 400, reason=REASON_FORCED)
        if behaviour.fail_healthz:
            return Plan(status=behaviour.fail_status, delay=delay, failed=True, reason=REASON_HEALTHZ_FAILING)
        return Plan(status=200, delay=delay, failed=False, reason=REASON_HEALTHZ)

    close_draw = random()
    jitter_draw = random()
    fail_draw = random()
    delay = forced_delay if forced_delay is not None else behaviour.latency + jitter_draw * behaviour.latency_jitter

    if forced_close:
        return Plan(status=None, delay=delay, failed=True, reason=REASON_FORCED, close_mode=forced_close)
    if close_draw < behaviour.close_rate:
        return Plan(status=None, delay=delay, failed=True, reason=REASON_CLOSE_RATE, close_mode=behaviour.close_mode)
    if forced_status is not None:
        return Plan(status=forced_status, delay=delay, failed=forced_status >= 400, reason=REASON_FORCED)
    if fail_draw < behaviour.fail_rate:
        return Plan(status=behaviour.fail_status, delay=delay, failed=True, reason=REASON_FAIL_RATE)
    return Plan(status=200, delay=delay, failed=False, reason=REASON_OK)


def response_document(
    *,
    identity: Identity,
    plan: Plan,
    method: str,
    target: str,
    protocol: str,
    headers: Iterable[tuple[str, str]],
    client: str,
    local_ip: str,
    body_bytes: int,
) -> dict:
    """The JSON body of an answer: who answered, what it saw, and what it injected.

    The keys are a stable interface (docs/sample-app.md); tests and the load client read them.
    """
    doc = {
        "pod": identity.pod,
        "namespace": identity.namespace,
        "node": identity.node,
        "version": identity.version,
        "pod_ip": identity.pod_ip or local_ip,
        "method": method,
        "path": target,
        "protocol": protocol,
        "headers": header_map(headers),
        "client": client,
        "body_bytes": body_bytes,
        "status": plan.status,
        "failed": plan.failed,
        "reason": plan.reason,
        "delay_ms": round(plan.delay * 1000.0, 3),
    }
    if plan.error:
        doc["error"] = plan.error
    return doc


def encode_body(doc: dict, *, size: int = 0) -> bytes:
    """`doc` as a JSON line; if `size` is larger than that, a `padding` string of "x" is added
    so that the body is exactly `size` bytes (counters of bytes sent can then be checked)."""
    plain = (json.dumps(doc) + "\n").encode()
    if size <= len(plain):
        return plain
    padded = (json.dumps({**doc, "padding": ""}) + "\n").encode()
    fill = max(0, size - len(padded))
    body = (json.dumps({**doc, "padding": "x" * fill}) + "\n").encode()
    return body


def _override_response_bytes(headers: Mapping[str, str]) -> int | None:
    raw = headers.get(HEADER_RESPONSE_BYTES)
    if raw is None:
        return None
    value = raw.strip()
    if not value.isdigit() or int(value) > MAX_RESPONSE_BYTES:
        raise ValueError(f"{HEADER_RESPONSE_BYTES}: {raw!r} is not a size; use 0 to {MAX_RESPONSE_BYTES} bytes")
    return int(value)


def _override_status(headers: Mapping[str, str]) -> int | None:
    raw = headers.get(HEADER_STATUS)
    if raw is None:
        return None
    try:
        return parse_status(raw)
    except ValueError as exc:
        raise ValueError(f"{HEADER_STATUS}: {exc}") from None


def _override_delay(headers: Mapping[str, str]) -> float | None:
    raw = headers.get(HEADER_DELAY)
    if raw is None:
        return None
    try:
        delay = parse_duration(raw)
    except ValueError as exc:
        raise ValueError(f"{HEADER_DELAY}: {exc}") from None
    if delay > MAX_OVERRIDE_DELAY:
        raise ValueError(f"{HEADER_DELAY}: {raw!r} is longer than the {MAX_OVERRIDE_DELAY:g}s allowed")
    return delay


def _override_close(headers: Mapping[str, str]) -> str | None:
    raw = headers.get(HEADER_CLOSE)
    if raw is None:
        return None
    value = raw.strip().lower()
    if value in ("", "0", "false", "no"):
        return None
    if value in ("1", "true", "yes", "reset"):
        return "reset"
    if value == "fin":
        return "fin"
    raise ValueError(f"{HEADER_CLOSE}: {raw!r} is not understood; use reset, fin, true or false")
