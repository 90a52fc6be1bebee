"""The load client's findings: counting outcomes and presenting them as text or JSON.

Before: the load client (`load.py`) records one `Outcome` per request from its worker
threads. After: a frozen `LoadReport` with counts by status, by error kind, by answering pod
and version, and latency percentiles; `to_json()` is the documented, stable form
(schema `lacewing.dev/sample-app-load/v1`, see docs/sample-app.md) and `format_text()` the
table a person reads. Nothing here touches a socket.

Percentiles use the nearest-rank method over every request that got an HTTP response, of any
status; requests that ended in an error have no latency.
"""

from __future__ import annotations

import math
import threading
from collections import Counter, defaultdict
from dataclasses import dataclass

SCHEMA = "lacewing.dev/sample-app-load/v1"

# Error kinds, in the order reports list them.
CONNECT_REFUSED = "connect_refused"
CONNECT_ERROR = "connect_error"
TIMEOUT = "timeout"
RESET = "reset"
PROTOCOL_ERROR = "protocol_error"
OTHER = "other"
ERROR_KINDS = (CONNECT_REFUSED, CONNECT_ERROR, TIMEOUT, RESET, PROTOCOL_ERROR, OTHER)


@dataclass(frozen=True)
class Outcome:
    """One request: either a `status` (with its latency) or an `error` kind."""

    sent: bool  # the request reached an open connection
    status: int | None = None
    latency: float | None = None  # seconds, send to last body byte
    error: str | None = None
    error_detail: str = ""
    pod: str | None = None
    version: str | None = None


@dataclass(frozen=True)
class Latency:
    """Milliseconds."""

    min: float
    mean: float
    p50: float
    p90: float
    p99: float
    max: float


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending, non-empty list."""
    if not sorted_values:
        raise ValueError("no values")
    rank = max(1, math.ceil(pct / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def summarize_latency(seconds: list[float]) -> Latency | None:
    if not seconds:
        return None
    ms = sorted(s * 1000.0 for s in seconds)
    return Latency(
        min=ms[0], mean=sum(ms) / len(ms), p50=percentile(ms, 50), p90=percentile(ms, 90),
        p99=percentile(ms, 99), max=ms[-1],
    )


@dataclass(frozen=True)
class LoadReport:
    url: str
    method: str
    concurrency: int
    keepalive: bool
    target_rate: float | None  # requests/s asked for; None = as fast as possible
    attempted: int  # requests the client tried
    sent: int  # of those, how many went out on an open connection
    answered: int  # of those, how many got an HTTP response
    duration: float  # seconds
    statuses: dict[int, int]
    errors: dict[str, int]  # every kind in ERROR_KINDS, zero or not
    error_samples: dict[str, str]  # one message per kind that occurred
    latency: Latency | None
    pods: dict[str, int]  # answering "pod" field of the JSON body
    versions: dict[str, int]
    pod_statuses: dict[str, dict[int, int]]
    unidentified: int  # responses whose body named no pod (not the sample app, or HEAD)
    interrupted: bool = False

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def rate(self) -> float:
        """Requests attempted per second of the run."""
        return self.attempted / self.duration if self.duration > 0 else 0.0

    def count(self, status: int) -> int:
        return self.statuses.get(status, 0)

    def to_json(self) -> dict:
        lat = self.latency
        return {
            "schema": SCHEMA,
            "url": self.url,
            "method": self.method,
            "concurrency": self.concurrency,
            "keepalive": self.keepalive,
            "target_rate": self.target_rate,
            "attempted": self.attempted,
            "sent": self.sent,
            "answered": self.answered,
            "failed": self.error_count,
            "interrupted": self.interrupted,
            "duration_s": round(self.duration, 6),
            "rate_rps": round(self.rate, 3),
            "status": {str(k): v for k, v in sorted(self.statuses.items())},
            "errors": dict(self.errors),
            "error_samples": dict(self.error_samples),
            "latency_ms": None if lat is None else {
                "min": round(lat.min, 3), "mean": round(lat.mean, 3), "p50": round(lat.p50, 3),
                "p90": round(lat.p90, 3), "p99": round(lat.p99, 3), "max": round(lat.max, 3),
            },
            "pods": dict(sorted(self.pods.items())),
            "versions": dict(sorted(self.versions.items())),
            "pod_status": {
                pod: {str(k): v for k, v in sorted(codes.items())}
                for pod, codes in sorted(self.pod_statuses.items())
            },
            "unidentified": self.unidentified,
        }

    @classmethod
    def from_json(cls, doc: dict) -> LoadReport:
        """The report that `to_json()` wrote — e.g. the output of `load -o json` run in a pod's
        network namespace. ValueError if `doc` is not of this schema."""
        if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
            got = doc.get("schema") if isinstance(doc, dict) else type(doc).__name__
            raise ValueError(f"not a load report of schema {SCHEMA} (got {got!r})")
        lat = doc["latency_ms"]
        return cls(
            url=doc["url"], method=doc["method"], concurrency=doc["concurrency"],
            keepalive=doc["keepalive"], target_rate=doc["target_rate"],
            attempted=doc["attempted"], sent=doc["sent"], answered=doc["answered"],
            duration=doc["duration_s"],
            statuses={int(k): v for k, v in doc["status"].items()},
            errors=dict(doc["errors"]),
            error_samples=dict(doc["error_samples"]),
            latency=None if lat is None else Latency(
                min=lat["min"], mean=lat["mean"], p50=lat["p50"], p90=lat["p90"], p99=lat["p99"], max=lat["max"]),
            pods=dict(doc["pods"]),
            versions=dict(doc["versions"]),
            pod_statuses={p: {int(k): v for k, v in c.items()} for p, c in doc["pod_status"].items()},
            unidentified=doc["unidentified"],
            interrupted=doc["interrupted"],
        )

    def format_text(self) -> str:
        mode = "keep-alive" if self.keepalive else "new connection per request"
        rate = "as fast as possible" if self.target_rate is None else f"target {self.target_rate:g}/s"
        lines = [
            f"target     {self.method} {self.url}",
            f"requests   {self.attempted} attempted, {self.sent} sent, {self.answered} answered, "
            f"{self.error_count} errors in {self.duration:.2f}s ({self.rate:.1f}/s; {rate}; "
            f"concurrency {self.concurrency}; {mode})"
            + ("; interrupted" if self.interrupted else ""),
            "status     " + (_counts({str(k): v for k, v in sorted(self.statuses.items())}) or "none"),
            "errors     " + (_counts({k: v for k, v in self.errors.items() if v}) or "none"),
        ]
        for kind, message in self.error_samples.items():
            lines.append(f"  {kind}: {message}")
        if self.latency is not None:
            lat = self.latency
            lines.append(
                f"latency    p50 {lat.p50:.2f}ms  p90 {lat.p90:.2f}ms  p99 {lat.p99:.2f}ms  "
                f"max {lat.max:.2f}ms"
            )
        else:
            lines.append("latency    no responses")
        pods = _counts(dict(sorted(self.pods.items())))
        if self.unidentified:
            pods = (pods + "  " if pods else "") + f"(unidentified): {self.unidentified}"
        lines.append("pods       " + (pods or "none"))
        lines.append("versions   " + (_counts(dict(sorted(self.versions.items()))) or "none"))
        return "\n".join(lines)


def _counts(counts: dict[str, int]) -> str:
    return "  ".join(f"{k}: {v}" for k, v in counts.items())


class Recorder:
    """Thread-safe tally of outcomes, kept as counters (not one object per request) so that
    long runs stay small; `report()` freezes it into a `LoadReport`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._attempted = 0
        self._sent = 0
        self._statuses: Counter[int] = Counter()
        self._errors: dict[str, int] = {kind: 0 for kind in ERROR_KINDS}
        self._samples: dict[str, str] = {}
        self._pods: Counter[str] = Counter()
        self._versions: Counter[str] = Counter()
        self._pod_statuses: defaultdict[str, Counter[int]] = defaultdict(Counter)
        self._latencies: list[float] = []
        self._unidentified = 0

    def add(self, o: Outcome) -> None:
        with self._lock:
            self._attempted += 1
            self._sent += o.sent
            if o.status is not None:
                self._statuses[o.status] += 1
                if o.latency is not None:
                    self._latencies.append(o.latency)
                if o.pod is not None:
                    self._pods[o.pod] += 1
                    self._pod_statuses[o.pod][o.status] += 1
                else:
                    self._unidentified += 1
                if o.version is not None:
                    self._versions[o.version] += 1
            elif o.error is not None:
                self._errors[o.error] = self._errors.get(o.error, 0) + 1
                self._samples.setdefault(o.error, o.error_detail)

    def report(
        self, *, url: str, method: str, concurrency: int, keepalive: bool,
        target_rate: float | None, duration: float, interrupted: bool = False,
    ) -> LoadReport:
        with self._lock:
            return LoadReport(
                url=url, method=method, concurrency=concurrency, keepalive=keepalive,
                target_rate=target_rate,
                attempted=self._attempted,
                sent=self._sent,
                answered=sum(self._statuses.values()),
                duration=round(duration, 6),  # as to_json() writes it, so a report reads back equal
                statuses=dict(self._statuses),
                errors=dict(self._errors),
                error_samples={k: self._samples[k] for k in ERROR_KINDS if k in self._samples},
                latency=summarize_latency(self._latencies),
                pods=dict(self._pods),
                versions=dict(self._versions),
                pod_statuses={p: dict(c) for p, c in self._pod_statuses.items()},
                unidentified=self._unidentified,
                interrupted=interrupted,
            )
