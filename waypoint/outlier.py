"""Outlier detection with Envoy's semantics: passive health from the answers hosts give.

Before: the proxy reports the outcome of every try to a host (`record`), and calls `tick`
whenever the clock passes the next interval. After: `usable(hosts)` is the set the load
balancer may pick from — the hosts not ejected, or all of them in panic mode.

- consecutive5xxErrors (Envoy consecutive_5xx, default 5 when outlier detection is set; 0
  turns it off): 5xx answers and failures with no answer (connect failure, reset, timeout)
  in a row; any other answer resets the count.
- consecutiveGatewayErrors (consecutive_gateway_failure, off unless set): 502/503/504 and
  no-answer failures in a row.
- Ejection happens at once when a count reaches its threshold, if no host is ejected yet or
  the ejected share would stay within maxEjectionPercent (default 10%).
- An ejected host returns at the first interval sweep after baseEjectionTime × its ejection
  count (capped at 300 s, Envoy's max_ejection_time); each sweep that finds a host healthy
  lowers its ejection count by one, so repeat offenders stay out longer.
- minHealthPercent (Envoy's panic threshold; Istio default 0): when fewer than that share of
  hosts are healthy, the balancer ignores ejections and uses every host.
All times are monotonic seconds passed in, so the state machine is driven by tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from control.config.model import OutlierDetection

MAX_EJECTION_TIME_S = 300.0


@dataclass(frozen=True, slots=True)
class OutlierSettings:
    consecutive_5xx: int = 5
    consecutive_gateway: int = 0
    interval_s: float = 10.0
    base_ejection_s: float = 30.0
    max_ejection_percent: int = 10
    min_health_percent: int = 0

    @classmethod
    def from_istio(cls, o: OutlierDetection) -> OutlierSettings:
        d = cls()
        return cls(
            consecutive_5xx=d.consecutive_5xx if o.consecutive_5xx_errors is None
            else o.consecutive_5xx_errors,
            consecutive_gateway=o.consecutive_gateway_errors or 0,
            interval_s=o.interval.total_seconds() if o.interval else d.interval_s,
            base_ejection_s=o.base_ejection_time.total_seconds() if o.base_ejection_time
            else d.base_ejection_s,
            max_ejection_percent=d.max_ejection_percent if o.max_ejection_percent is None
            else o.max_ejection_percent,
            min_health_percent=o.min_health_percent or 0,
        )


@dataclass(slots=True)
class HostState:
    consecutive_5xx: int = 0
    consecutive_gateway: int = 0
    ejected_at: float | None = None
    ejections: int = 0               # the multiplier of base_ejection_s
    times_ejected: int = 0           # lifetime total, for metrics


@dataclass
class OutlierDetector:
    settings: OutlierSettings
    now: float = 0.0
    hosts: dict[str, HostState] = field(default_factory=dict)
    next_sweep: float = 0.0
    events: list[tuple[str, str]] = field(default_factory=list)  # ("eject"|"return", host)

    def __post_init__(self) -> None:
        self.next_sweep = self.now + self.settings.interval_s

    def set_hosts(self, hosts: list[str] | tuple[str, ...]) -> None:
        """Keep state for hosts that stay; forget hosts that left."""
        self.hosts = {h: self.hosts.get(h) or HostState() for h in hosts}

    def ejected(self, host: str) -> bool:
        s = self.hosts.get(host)
        return s is not None and s.ejected_at is not None

    def active_ejections(self) -> int:
        return sum(1 for s in self.hosts.values() if s.ejected_at is not None)

    def record(self, host: str, outcome: int | str, now: float) -> None:
        s = self.hosts.get(host)
        if s is None:
            return
        self.maybe_sweep(now)
        failure = isinstance(outcome, str)
        is_5xx = failure or outcome >= 500
        is_gateway = failure or outcome in (502, 503, 504)
        if not is_5xx:
            s.consecutive_5xx = s.consecutive_gateway = 0
            return
        s.consecutive_5xx += 1
        s.consecutive_gateway = s.consecutive_gateway + 1 if is_gateway else 0
        st = self.settings
        if s.ejected_at is not None:
            return
        if (st.consecutive_5xx and s.consecutive_5xx >= st.consecutive_5xx) or (
                st.consecutive_gateway and s.consecutive_gateway >= st.consecutive_gateway):
            self._eject(host, s, now)

    def _eject(self, host: str, s: HostState, now: float) -> None:
        active = self.active_ejections()
        total = len(self.hosts)
        if active > 0 and (active + 1) * 100 > self.settings.max_ejection_percent * total:
            return
        s.ejected_at = now
        s.ejections += 1
        s.times_ejected += 1
        s.consecutive_5xx = s.consecutive_gateway = 0
        self.events.append(("eject", host))

    def ejection_time_s(self, s: HostState) -> float:
        base = self.settings.base_ejection_s
        return min(base * max(s.ejections, 1), max(MAX_EJECTION_TIME_S, base))

    def maybe_sweep(self, now: float) -> None:
        while now >= self.next_sweep:
            self._sweep(self.next_sweep)
            self.next_sweep += self.settings.interval_s

    def _sweep(self, at: float) -> None:
        for host, s in self.hosts.items():
            if s.ejected_at is not None:
                if at >= s.ejected_at + self.ejection_time_s(s):
                    s.ejected_at = None
                    s.consecutive_5xx = s.consecutive_gateway = 0
                    self.events.append(("return", host))
            elif s.ejections > 0:
                s.ejections -= 1

    def panic(self) -> bool:
        total = len(self.hosts)
        if not total:
            return False
        healthy = total - self.active_ejections()
        return healthy * 100 < self.settings.min_health_percent * total

    def usable(self, hosts: list[str], now: float) -> list[str]:
        self.maybe_sweep(now)
        for s in self.hosts.values():
            if s.ejected_at is not None:
                break
        else:
            return hosts                 # nothing ejected (the common case): no filtering
        if self.panic():
            return hosts
        return [h for h in hosts if not self.ejected(h)]
