"""Tier 2, differential and adversarial: the fast lane never answers what Python refuses.

Before: the fast lane caches one decision per request *shape* (its plan key: the tunnel's
Service target and the mTLS principal per connection, then method, raw target, Host and the
values of the header names routes read) and makes a plan only when every L7
AuthorizationPolicy that applies (the Service's and each host workload's) reads nothing
outside that key and ALLOWS the request (`waypoint/fastlane/plans.py`). After: this module
checks, against a waypoint with the lane off, that no request the Python path refuses is
answered by the lane-on waypoint, and that both answer every request with the same bytes.

- `test_fuzz_*` (hypothesis, derandomized): generated AuthorizationPolicy sets (ALLOW and
  DENY; targetRefs to a Service, namespace-wide, root-namespace and `selector` policies on
  the backends; principals / namespaces / serviceAccounts and their `not` forms, ipBlocks;
  methods, paths in exact / `prefix*` / `*suffix` / `*` forms, hosts with and without port
  and in any case, ports, and the `not` forms; `when` on source.principal,
  source.namespace, destination.port, source.ip and request.headers[...]) and generated
  requests (targets built to hit path normalization: `//`, `%2F`/`%2f`/`%5C`, `/./`,
  `/../`, escaped letters in either case, `#frag`, `?query`, trailing slashes; Host case
  and port; route-read and policy-read headers) sent over three kept-alive mutual-TLS
  connections (different principals, one without a certificate, or one principal on
  different tunnel targets), one at a time or pipelined, then every shape on every
  connection in a drawn order (so a plan cached for one key is looked up by the others);
  then a second snapshot adds a policy (mostly DENY) and the same requests go again over
  the same connections. Once without and once with the node tunnel's header (the Service
  and port then come from the tunnel target, the source address from the header).
  `test_fuzz_the_per_connection_key_*` narrow the policies to who calls (and the port),
  so that every Service keeps plans and only the key's per-connection part decides.
  Each answer pair must be byte-identical, and a refusal by Python a refusal by the lane
  (`check`). The budget is 80 examples per test (LW_LANE_FUZZ_EXAMPLES=N to change it).
- focused probes of what the key might miss (principals, separators in a principal, a
  header only a policy reads, a route-read header choosing a destination whose workload
  denies, a snapshot turning a kept-alive connection's plan into a denial, the port from
  the Host vs from the tunnel target), and trailing whitespace in the Host / a header value
  not escaping a DENY on it (both paths trim it, RFC 9110 §5.5);
- weighted routes: a destination whose workload policy denies the principal is never sent
  that principal's request by either side (100/0, 0/100 exact; 50/50 within an exact
  binomial bound).

Everything is on loopback; waypoints and upstreams are stopped (and sockets closed) by the
fixtures, also on failure.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import random
import socket
import ssl
import tempfile
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node_agent.ztunnel import wire
from tests.waypoint.conftest import make_snapshot
from tests.waypoint.lane_diff import Upstream, _frame, _services, lane_counts, ok
from tests.waypoint.test_lane_weighted import binomial_bound
from waypoint import fastlane
from waypoint.proxy import Tunnels, WaypointThread
from waypoint.telemetry import Tracing

pytestmark = pytest.mark.skipif(fastlane.native is None, reason="fast lane not built")

TD = "cluster.local"
ALICE = f"{TD}/ns/demo/sa/alice"
BOB = f"{TD}/ns/demo/sa/bob"
CAROL = f"{TD}/ns/other/sa/carol"
WEBSA = f"{TD}/ns/demo/sa/web"
# A principal whose service account holds the plan key's separator ('|') and the start of
# another principal's key: a CA-signed SVID cannot have it (the CA checks segments), so the
# test signs it directly; the waypoint takes any one URI SAN (`proxy.peer_identity`).
ODD = f"{TD}/ns/demo/sa/alice|GET"

# client name -> principal (None: TLS without a client certificate)
CLIENTS = {"alice": ALICE, "bob": BOB, "carol": CAROL, "web": WEBSA, "odd": ODD,
           "anon": None}

WEB_VIP, API_VIP = "10.96.0.10", "10.96.0.11"


def _ep(name: str, port: int, labels: dict, sa: str) -> dict:
    return {"name": name, "ip": "127.0.0.1", "port": port, "serviceAccount": sa,
            "labels": labels}


SERVICES = [
    {"name": "web", "namespace": "demo", "vip": WEB_VIP, "ports": [{"port": 80}, {"port": 8080}],
     "endpoints": [_ep("web-v1-0", -1, {"app": "web", "version": "v1"}, "web"),
                   _ep("web-v2-0", -3, {"app": "web", "version": "v2"}, "web")]},
    {"name": "api", "namespace": "demo", "vip": API_VIP, "ports": [{"port": 80}],
     "endpoints": [_ep("api-0", -1, {"app": "api", "version": "v1"}, "api")]},
]

# Routes: a header-matched canary route (so the key holds x-canary), a default one; each
# subset has exactly one host, so a host's workload policy and the balancer never make the
# two sides' answers differ by which host each happened to pick.
ROUTES = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: demo}
spec:
  host: web
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: demo}
spec:
  hosts: [web]
  http:
  - match: [{headers: {x-canary: {exact: "1"}}}]
    route: [{destination: {host: web, subset: v2}}]
  - route: [{destination: {host: web, subset: v1}}]
"""


# --- the two waypoints and kept-alive clients ---------------------------------------------


@dataclass
class Side:
    lane: bool
    wp: WaypointThread
    up: Upstream
    up2: Upstream


class Pair:
    """Two waypoints on one snapshot, lane on and lane off, each in front of its own two
    recording upstreams (`UP` = web-v1 and api, `UP2` = web-v2) that answer 200."""

    def __init__(self, server_ctx: ssl.SSLContext, *, tunnel: bool,
                 services: list[dict] = SERVICES, config: str = ROUTES) -> None:
        self.services = services
        self.tunnel = tunnel
        self.sides: list[Side] = []
        self.version = 1
        try:
            for lane in (True, False):
                up, up2 = Upstream(ok), Upstream(ok)
                side = Side(lane, None, up, up2)  # type: ignore[arg-type]
                self.sides.append(side)
                tunnels = Tunnels(client_context=None, source_ip="127.0.0.1") \
                    if tunnel else None  # type: ignore[arg-type]
                side.wp = WaypointThread(self._snapshot(side, config, "1"),
                                         ssl_context=server_ctx,
                                         tracing=Tracing(sample_ratio=0.0),
                                         rng=random.Random(7), fast_lane=lane,
                                         tunnels=tunnels, tunnel_header=tunnel)
                side.wp.start()
        except BaseException:
            self.close()
            raise

    def _snapshot(self, side: Side, config: str, version: str):
        return make_snapshot(_services(self.services, side.up.port, 0, side.up2.port), config,
                             version=version)

    def update(self, config: str) -> None:
        """The same new snapshot (mesh config) to both waypoints."""
        self.version += 1
        for side in self.sides:
            side.wp.update(self._snapshot(side, config, str(self.version)))

    def close(self) -> None:
        for side in self.sides:
            if side.wp is not None:
                with contextlib.suppress(Exception):
                    side.wp.stop()
            with contextlib.suppress(Exception):
                side.up.stop()
            with contextlib.suppress(Exception):
                side.up2.stop()

    def __enter__(self) -> Pair:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Conn:
    """One kept-alive client connection: TLS (a principal, or none), then the node tunnel's
    header when the waypoint expects one, then HTTP/1.1 requests (one at a time, or
    several in one write)."""

    def __init__(self, port: int, ctx: ssl.SSLContext, header: bytes | None) -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = ctx.wrap_socket(sock)
        self.buf = b""
        self.open = True
        if header is not None:
            self.sock.sendall(header)
            while len(self.buf) < 4:
                data = self.sock.recv(65536)
                assert data, "the waypoint closed the tunnel"
                self.buf += data
            assert self.buf[:4] == wire.encode_reply(wire.OK), self.buf
            self.buf = self.buf[4:]

    def ask(self, requests: list[bytes]) -> list[bytes]:
        """Requests in one write (pipelined when several), their whole answers in order;
        fewer when the connection ended (a partial answer last, as received)."""
        out: list[bytes] = []
        try:
            self.sock.sendall(b"".join(requests))
            for data in requests:
                while (n := _frame(self.buf, data.startswith(b"HEAD "))) is None:
                    chunk = self.sock.recv(65536)
                    if not chunk:
                        self.open = False
                        return out + ([self.buf] if self.buf else [])
                    self.buf += chunk
                answer, self.buf = self.buf[:n], self.buf[n:]
                out.append(answer)
                head = answer[:answer.find(b"\r\n\r\n") + 2].lower()
                if b"\r\nconnection: close\r\n" in head:
                    self.close()
                    break
        except (OSError, ssl.SSLError):
            self.open = False
            out += [self.buf] if self.buf else []
        return out

    def close(self) -> None:
        self.open = False
        with contextlib.suppress(OSError):
            self.sock.close()


def status_of(answer: bytes) -> int:
    return int(answer[9:12]) if answer.startswith(b"HTTP/1.1 ") else 0


@dataclass(frozen=True)
class Who:
    """One client connection's identity: its client (principal), and with the node tunnel
    the Service address it called and its source address."""

    client: str
    target: tuple[str, int] = (WEB_VIP, 80)
    source: str = "10.1.0.5"


class Clients:
    """Open connections per side, keyed by an index, reused until the waypoint closes one."""

    def __init__(self, pair: Pair, contexts: dict[str, ssl.SSLContext]) -> None:
        self.pair = pair
        self.contexts = contexts
        self.conns: dict[tuple[int, int], Conn] = {}

    def _conn(self, side: int, key: int, who: Who) -> Conn:
        c = self.conns.get((side, key))
        if c is None or not c.open:
            header = None
            if self.pair.tunnel:
                header = wire.encode_header(wire.TunnelHeader(
                    wire.Address(*who.target), wire.Address(who.source, 40000)))
            c = self.conns[(side, key)] = Conn(self.pair.sides[side].wp.port,
                                               self.contexts[who.client], header)
        return c

    def ask(self, key: int, who: Who, data: bytes) -> tuple[bytes, bytes]:
        """The same request on connection `key` of each side: (lane's answer, Python's)."""
        lane, python = self.ask_many(key, who, [data])
        return (lane or [b""])[0], (python or [b""])[0]

    def ask_many(self, key: int, who: Who, requests: list[bytes]
                 ) -> tuple[list[bytes], list[bytes]]:
        """The same requests, pipelined in one write, on connection `key` of each side."""
        lane = self._conn(0, key, who).ask(requests)
        python = self._conn(1, key, who).ask(requests)
        return lane, python

    def close(self) -> None:
        for c in self.conns.values():
            c.close()
        self.conns.clear()


def request(method: str, target: str, host: str, headers: tuple[tuple[str, str], ...] = ()
            ) -> bytes:
    return (f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n"
            + "".join(f"{n}: {v}\r\n" for n, v in headers) + "\r\n").encode("latin-1")


def check(lane: bytes, python: bytes, what: str) -> int:
    """The two answers: a refusal by Python must be a refusal by the lane (else an
    authorization bypass), and the bytes must be the same."""
    ls, ps = status_of(lane), status_of(python)
    assert not (ps >= 400 and ls < 400), \
        f"AUTHORIZATION BYPASS: the lane answered {ls} where Python refused {ps}: {what}"
    assert ls == ps, f"statuses differ (lane {ls}, python {ps}): {what}"
    assert lane == python, f"answers differ: {what}\n lane  ={lane!r}\n python={python!r}"
    return ps


# --- PKI --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Identity:          # what `CertificateAuthority.sign` reads of an identity
    trust_domain: str
    uri: str


@pytest.fixture(scope="module")
def pki():
    from control.ca.authority import CertificateAuthority
    from control.ca.spiffe_id import workload_id
    from waypoint.tls import client_context, server_context

    with tempfile.TemporaryDirectory(prefix="lw-lanefuzz-") as d:
        ca = CertificateAuthority.load_or_generate(pathlib.Path(d))
        bundle = b"".join(ca.trust_bundle)

        def material(identity):
            key, chain = ca.issue_with_new_key(identity)
            return b"".join(chain.cert_chain), key

        contexts = {}
        for name, principal in CLIENTS.items():
            if principal is None:             # TLS, no client certificate: no principal
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                ctx.minimum_version = ssl.TLSVersion.TLSv1_3
                ctx.check_hostname = False
                ctx.load_verify_locations(cadata=bundle.decode())
                ctx.set_alpn_protocols(["http/1.1"])
            elif name == "odd":
                ctx = client_context(*material(_Identity(TD, "spiffe://" + principal)),
                                     bundle)
            else:
                parts = principal.split("/")        # td/ns/NS/sa/SA
                ctx = client_context(*material(workload_id(parts[2], parts[4])), bundle)
            contexts[name] = ctx
        server = server_context(*material(workload_id("demo", "waypoint")), bundle,
                                require_client_cert=False)
        yield server, contexts


@pytest.fixture(scope="module")
def plain_pair(pki):
    with Pair(pki[0], tunnel=False) as p:
        yield p


@pytest.fixture(scope="module")
def tunnel_pair(pki):
    with Pair(pki[0], tunnel=True) as p:
        yield p


# --- generated policies ---------------------------------------------------------------------

PRINCIPAL_VALUES = [ALICE, BOB, CAROL, ODD, f"{TD}/ns/demo/*", "*/sa/bob", "*alice", "*"]
NAMESPACE_VALUES = ["demo", "other", "de*", "*"]
SA_VALUES = ["demo/alice", "other/carol", "demo/web", "bob"]
IP_VALUES = ["10.1.0.0/16", "10.2.0.7", "127.0.0.1"]
SOURCE_FIELDS = {"principals": PRINCIPAL_VALUES, "notPrincipals": PRINCIPAL_VALUES,
                 "namespaces": NAMESPACE_VALUES, "notNamespaces": NAMESPACE_VALUES,
                 "serviceAccounts": SA_VALUES, "notServiceAccounts": SA_VALUES,
                 "ipBlocks": IP_VALUES, "notIpBlocks": IP_VALUES}
HOST_VALUES = ["web.demo", "WEB.Demo", "web.demo:80", "web.demo:8080", "*.demo", "web*",
               "api.demo", "web", "*"]
PORT_VALUES = ["80", "8080"]
METHOD_VALUES = ["GET", "HEAD", "POST", "DELETE"]
PATH_VALUES = ["/public/*", "/admin", "/admin/*", "*/secret", "/a/b", "/", "/Admin",
               "/public/x/", "*"]
OPERATION_FIELDS = {"hosts": HOST_VALUES, "notHosts": HOST_VALUES, "ports": PORT_VALUES,
                    "notPorts": PORT_VALUES, "methods": METHOD_VALUES,
                    "notMethods": METHOD_VALUES, "paths": PATH_VALUES,
                    "notPaths": PATH_VALUES}
CONDITIONS = {"source.principal": PRINCIPAL_VALUES, "source.namespace": NAMESPACE_VALUES,
              "destination.port": PORT_VALUES, "source.ip": IP_VALUES,
              "request.headers[x-token]": ["open", "shut"],
              "request.headers[x-canary]": ["1"]}
SCOPES = {
    "web": ("demo", {"targetRefs": [{"kind": "Service", "group": "", "name": "web"}]}),
    "api": ("demo", {"targetRefs": [{"kind": "Service", "group": "", "name": "api"}]}),
    "gateway": ("demo", {"targetRefs": [{"kind": "Gateway",
                                         "group": "gateway.networking.k8s.io",
                                         "name": "waypoint"}]}),
    "namespace": ("demo", {}),
    "root": ("istio-system", {}),
    "sel-app-web": ("demo", {"selector": {"matchLabels": {"app": "web"}}}),
    "sel-v1": ("demo", {"selector": {"matchLabels": {"version": "v1"}}}),
    "sel-v2": ("demo", {"selector": {"matchLabels": {"version": "v2"}}}),
    "sel-app-api": ("istio-system", {"selector": {"matchLabels": {"app": "api"}}}),
}


def _fields(table: dict[str, list[str]]):
    """One to two of the table's fields, each with one or two of its values."""
    return st.lists(st.sampled_from(sorted(table)), min_size=1, max_size=2, unique=True
                    ).flatmap(lambda names: st.fixed_dictionaries(
                        {n: st.lists(st.sampled_from(table[n]), min_size=1, max_size=2,
                                     unique=True) for n in names}))


_conditions = st.sampled_from(sorted(CONDITIONS)).flatmap(lambda key: st.builds(
    lambda which, values: {"key": key, which: values},
    st.sampled_from(["values", "notValues"]),
    st.lists(st.sampled_from(CONDITIONS[key]), min_size=1, max_size=2, unique=True)))

_SA_ALONE = {"serviceAccounts", "notServiceAccounts"}   # (not with principals or namespaces)
_sources = _fields(SOURCE_FIELDS).filter(
    lambda s: not (set(s) & _SA_ALONE) or not (set(s) & {"principals", "notPrincipals",
                                                         "namespaces", "notNamespaces"}))
_rules = st.fixed_dictionaries({}, optional={
    "from": st.lists(_sources.map(lambda s: {"source": s}), min_size=1, max_size=2),
    "to": st.lists(_fields(OPERATION_FIELDS).map(lambda o: {"operation": o}), min_size=1,
                   max_size=2),
    "when": st.lists(_conditions, min_size=1, max_size=2),
})


_IDENTITY_FIELDS = {k: SOURCE_FIELDS[k] for k in ("principals", "notPrincipals",
                                                   "namespaces", "notNamespaces")}
# A rule on who calls (and maybe which port) only: such a policy splits the same request
# shape into allowed and denied by principal or by Service/port — the decisions a plan key
# that lost its principal or tunnel target would share.
_identity_rules = st.builds(
    lambda source, ports: {"from": [{"source": source}],
                           **({"to": [{"operation": {"ports": ports}}]} if ports else {})},
    st.lists(st.sampled_from(sorted(_IDENTITY_FIELDS)), min_size=1, max_size=1).flatmap(
        lambda names: st.fixed_dictionaries({n: st.lists(st.sampled_from(SOURCE_FIELDS[n]),
                                                         min_size=1, max_size=2, unique=True)
                                             for n in names})),
    st.sampled_from([None, None, ["80"], ["8080"]]))


def _policies(actions=("ALLOW", "DENY")):
    return st.tuples(st.sampled_from(actions), st.sampled_from(sorted(SCOPES)),
                     st.one_of(st.lists(_identity_rules, min_size=1, max_size=1),
                               st.lists(_rules, min_size=1, max_size=2)))


def config_of(policies) -> str:
    """ROUTES plus the generated policies as YAML (JSON) documents."""
    docs = []
    for i, (action, scope, rules) in enumerate(policies):
        ns, spec = SCOPES[scope]
        docs.append(json.dumps({
            "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": f"p{i}", "namespace": ns},
            "spec": {**spec, "action": action, "rules": rules}}))
    return "\n---\n".join([ROUTES.strip(), *docs]) + "\n"


# --- generated requests ---------------------------------------------------------------------

BASE_PATHS = ["/public/x", "/admin", "/admin/x", "/a/b", "/x/secret", "/", "/public/",
              "/Admin"]
TRICKS = ["//", "%2F", "%2f", "%5C", "%5c", "/./", "/../", "%xx", "%XX", "trail", "up",
          "bad"]


@st.composite
def targets(draw) -> str:
    """A request target built from a base path by normalization tricks: a doubled slash,
    an escaped slash or backslash (either case), a `.` or `x/..` segment, an escaped letter
    (lower- or upper-case hex), a trailing slash, `/public/..` in front, a malformed escape;
    then maybe a query or fragment (which may itself look like a path)."""
    path = draw(st.sampled_from(BASE_PATHS))
    for trick in draw(st.lists(st.sampled_from(TRICKS), max_size=3)):
        slashes = [i for i, c in enumerate(path) if c == "/"]
        i = draw(st.sampled_from(slashes))
        letters = [j for j, c in enumerate(path) if c.isalpha()]
        if trick == "//":
            path = path[:i] + "/" + path[i:]
        elif trick.startswith("%") and trick[1:] in ("2F", "2f", "5C", "5c"):
            if i > 0:
                path = path[:i] + trick + path[i + 1:]
        elif trick == "/./":
            path = path[:i] + "/." + path[i:]
        elif trick == "/../":
            path = path[:i] + "/zz/.." + path[i:]
        elif trick in ("%xx", "%XX") and letters:
            j = draw(st.sampled_from(letters))
            code = f"{ord(path[j]):02x}"
            path = path[:j] + "%" + (code if trick == "%xx" else code.upper()) + path[j + 1:]
        elif trick == "trail":
            path += "/"
        elif trick == "up":
            path = "/public/.." + path
        elif trick == "bad":
            path += "%z"
    return path + draw(st.sampled_from(["", "", "?q=1", "?/admin", "#frag", "#/../admin",
                                        "?a=b#c"]))


HOSTS = ["web.demo", "WEB.Demo", "web.demo:80", "web.demo:8080", "Web.Demo:8080",
         "web.demo:9999", "web", "web:8080", "web.demo.svc.cluster.local", "api.demo",
         "API.demo:80", "nope.demo", "web.demo:", "web.demo.", "web.demo:80:80",
         "[web.demo]:80"]

_shapes = st.tuples(
    st.sampled_from(["GET", "GET", "HEAD", "POST", "DELETE"]), targets(),
    st.sampled_from(HOSTS),
    st.tuples(st.sampled_from([None, "open", "shut"]), st.sampled_from([None, "1"])))

TARGETS = [(WEB_VIP, 80), (WEB_VIP, 8080), (API_VIP, 80)]
# three connections of three different clients (alice first more often than not), each
# with its tunnel target and source address
_conns = st.tuples(
    st.one_of(st.permutations(sorted(CLIENTS)),
              st.permutations(sorted(set(CLIENTS) - {"alice"})).map(lambda p: ["alice", *p])),
    st.one_of(st.permutations(TARGETS),
              st.lists(st.sampled_from(TARGETS), min_size=3, max_size=3)),
    st.lists(st.sampled_from(["10.1.0.5", "10.2.0.7"]), min_size=3, max_size=3),
).map(lambda t: [Who(*who) for who in zip(t[0], t[1], t[2], strict=False)])


def shape_bytes(shape) -> bytes:
    method, target, host, (token, canary) = shape
    headers = tuple((n, v) for n, v in (("x-token", token), ("x-canary", canary))
                    if v is not None)
    return request(method, target, host, headers)


def run_scenario(pair: Pair, contexts, *, policies, extra, conns, shapes, order,
                 pipelined: bool, seen: dict[int, int]) -> None:
    """Snapshot 1 (`policies`), the requests of `order` (connection, shape) over kept-alive
    connections — with `pipelined`, each run of requests on one connection in one write;
    snapshot 2 (`policies` + `extra`), the same requests over the same connections; every
    answer checked lane vs Python."""
    runs: list[tuple[int, list[bytes]]] = []
    for c, s in order:
        key, data = c % len(conns), shape_bytes(shapes[s % len(shapes)])
        if pipelined and runs and runs[-1][0] == key:
            runs[-1][1].append(data)
        else:
            runs.append((key, [data]))
    clients = Clients(pair, contexts)
    try:
        for round_, config in enumerate((config_of(policies), config_of([*policies, extra]))):
            pair.update(config)
            for key, requests in runs:
                lane, python = clients.ask_many(key, conns[key], requests)
                what = (f"snapshot {round_ + 1}, connection {key} {conns[key]}, requests "
                        f"{requests!r}\nconfig:\n{config}")
                assert len(lane) == len(python), f"answers differ in number: {what}"
                for a, b in zip(lane, python, strict=True):
                    status = check(a, b, what)
                    seen[status] = seen.get(status, 0) + 1
    finally:
        clients.close()


# A modest budget (the suite stays well under a minute) and the same examples every run;
# by hand, LW_LANE_FUZZ_EXAMPLES=N for more, LW_LANE_FUZZ_RANDOM=1 for other ones.
_FUZZ = settings(max_examples=int(os.environ.get("LW_LANE_FUZZ_EXAMPLES", "80")),
                 deadline=None, database=None,
                 derandomize=os.environ.get("LW_LANE_FUZZ_RANDOM", "") != "1",
                 suppress_health_check=list(HealthCheck))


def _fuzz(pair: Pair, contexts, *, policies=None, shapes=None, examples: int | None = None
          ) -> dict[int, int]:
    seen: dict[int, int] = {}
    distinct: set[str] = set()
    fuzz = _FUZZ if examples is None else settings(_FUZZ, max_examples=examples)

    @fuzz
    @given(policies=st.lists(_policies(), min_size=1, max_size=3) if policies is None
           else policies,
           extra=_policies(("DENY", "DENY", "ALLOW")),
           conns=_conns,
           shapes=st.lists(_shapes, min_size=1, max_size=4) if shapes is None else shapes,
           order=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 3)), min_size=3,
                          max_size=12),
           pipelined=st.booleans(), same_client=st.sampled_from([False, False, True]),
           sweep=st.permutations(range(3)))
    def one(policies, extra, conns, shapes, order, pipelined, same_client, sweep):
        if same_client:     # one principal on every connection (targets and ports differ)
            conns = [dataclasses.replace(c, client=conns[0].client) for c in conns]
        # then every shape on every connection, in a drawn order of connections: a plan
        # cached for one connection's key is looked up by all the others
        order = order + [(c, s) for s in range(len(shapes)) for c in sweep if c < len(conns)]
        distinct.add(repr((policies, extra, conns, shapes, order, pipelined)))
        run_scenario(pair, contexts, policies=policies, extra=extra, conns=conns,
                     shapes=shapes, order=order, pipelined=pipelined, seen=seen)

    one()
    print("distinct examples", len(distinct), "statuses", seen)
    return seen


# The plan key's per-connection part: policies on who calls (and the port) only, so every
# Service keeps its plans, and plain shapes sent on three connections (three clients, or
# one client on three tunnel targets) — a key that lost the principal or the tunnel
# target would hand one connection's plan to another.
_KEY_FUZZ = dict(
    policies=st.lists(st.tuples(st.sampled_from(["ALLOW", "DENY"]),
                                st.sampled_from(sorted(SCOPES)),
                                st.lists(_identity_rules, min_size=1, max_size=2)),
                      min_size=1, max_size=2),
    shapes=st.lists(st.tuples(st.sampled_from(["GET", "POST"]), st.sampled_from(BASE_PATHS),
                              st.sampled_from(HOSTS), st.just((None, None))),
                    min_size=1, max_size=2),
    examples=int(os.environ.get("LW_LANE_FUZZ_EXAMPLES", "80")))


def test_fuzz_policies_and_requests_by_host(pki, plain_pair):
    """Service and port from the Host; the source address is loopback."""
    before = lane_counts(plain_pair.sides[0].wp)
    seen = _fuzz(plain_pair, pki[1])
    after = lane_counts(plain_pair.sides[0].wp)
    # not vacuous: the lane answered allowed requests, Python the refused ones
    assert after.get("answered", 0) - before.get("answered", 0) >= 30, (before, after)
    assert after.get("no_plan", 0) - before.get("no_plan", 0) >= 30, (before, after)
    assert seen.get(200, 0) >= 30 and seen.get(403, 0) >= 30, seen


def test_fuzz_policies_and_requests_through_the_node_tunnel(pki, tunnel_pair):
    """Service and port from the tunnel header's target (whatever the Host says), the
    source address from the header."""
    before = lane_counts(tunnel_pair.sides[0].wp)
    seen = _fuzz(tunnel_pair, pki[1])
    after = lane_counts(tunnel_pair.sides[0].wp)
    assert after.get("answered", 0) - before.get("answered", 0) >= 30, (before, after)
    assert after.get("no_plan", 0) - before.get("no_plan", 0) >= 30, (before, after)
    assert seen.get(200, 0) >= 30 and seen.get(403, 0) >= 30, seen


# --- focused probes of what the plan key might miss -------------------------------------------


def _policy(name: str, action: str, rules: list, *, target: str = "web",
            namespace: str = "demo", selector: dict | None = None) -> str:
    spec: dict = {"action": action, "rules": rules}
    if selector is not None:
        spec["selector"] = {"matchLabels": selector}
    else:
        spec["targetRefs"] = [{"kind": "Service", "group": "", "name": target}]
    return json.dumps({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                       "metadata": {"name": name, "namespace": namespace}, "spec": spec})


def _config(*policies: str) -> str:
    return "\n---\n".join([ROUTES.strip(), *policies]) + "\n"


def statuses(pair: Pair, contexts, steps, *, counts: dict | None = None) -> list[int]:
    """`steps`: (connection key, Who, request bytes) in order, each checked lane vs Python;
    the statuses. `counts`: what the lane must have answered / handed over meanwhile."""
    before = lane_counts(pair.sides[0].wp)
    clients = Clients(pair, contexts)
    out = []
    try:
        for key, who, data in steps:
            lane, python = clients.ask(key, who, data)
            out.append(check(lane, python, f"connection {key} {who}: {data!r}"))
    finally:
        clients.close()
    if counts is not None:
        after = lane_counts(pair.sides[0].wp)
        got = {k: after.get(k, 0) - before.get(k, 0) for k in set(after) | set(before)}
        assert {k: v for k, v in got.items() if v} == counts, got
    return out


def test_a_plan_is_per_principal_on_interleaved_kept_alive_connections(pki, plain_pair):
    """alice's allowed plan is cached first; bob, the look-alike principal whose service
    account ends in the key's separator and a method (`alice|GET`), and a client without a
    certificate then send the very same bytes on their own kept-alive connections,
    interleaved with alice's: only alice is answered (by the lane), the others get
    Python's 403."""
    server, contexts = pki
    plain_pair.update(_config(_policy("only-alice", "ALLOW", [
        {"from": [{"source": {"principals": [ALICE]}}]}])))
    alice, bob, odd, anon = Who("alice"), Who("bob"), Who("odd"), Who("anon")
    shape = request("GET", "/public/x", "web.demo")
    got = statuses(plain_pair, contexts, [
        (0, alice, shape), (1, bob, shape), (0, alice, shape), (2, odd, shape),
        (3, anon, shape), (1, bob, shape), (2, odd, shape), (0, alice, shape)],
        counts={"answered": 3, "no_plan": 5})
    assert got == [200, 403, 200, 403, 403, 403, 403, 200]
    # a prefix pattern that the look-alike matches too: the decision is its own
    plain_pair.update(_config(_policy("alice-prefix", "ALLOW", [
        {"from": [{"source": {"principals": [f"{ALICE}*"]}}]}])))
    got = statuses(plain_pair, contexts, [
        (0, odd, shape), (1, bob, shape), (0, odd, shape), (2, alice, shape)],
        counts={"answered": 3, "no_plan": 1})
    assert got == [200, 403, 200, 200]


def test_a_principal_with_separators_through_the_tunnel(pki, tunnel_pair):
    """The tunnel's target is the key's first part (`svc:port|principal|`): the look-alike
    principal on the same target, and alice on another port, get their own decisions."""
    server, contexts = pki
    tunnel_pair.update(_config(_policy("only-alice-80", "ALLOW", [
        {"from": [{"source": {"principals": [ALICE]}}],
         "to": [{"operation": {"ports": ["80"]}}]}])))
    shape = request("GET", "/x", "web.demo")
    got = statuses(tunnel_pair, contexts, [
        (0, Who("alice"), shape), (1, Who("odd"), shape), (2, Who("alice", (WEB_VIP, 8080)),
                                                            shape),
        (0, Who("alice"), shape), (1, Who("odd"), shape)],
        counts={"answered": 2, "no_plan": 3})
    assert got == [200, 403, 403, 200, 403]


def test_a_header_only_a_policy_reads(pki, plain_pair):
    """Routes read x-canary only; a DENY policy reads x-token. The Service then has no plan
    at all: the same shape with and without the header, on one kept-alive connection,
    each decided by Python (a plan for the header-less request would have let the
    header's denial through)."""
    server, contexts = pki
    plain_pair.update(_config(_policy("no-shut", "DENY", [
        {"when": [{"key": "request.headers[x-token]", "values": ["shut"]}]}])))
    alice = Who("alice")
    plain, shut = request("GET", "/public/x", "web.demo"), \
        request("GET", "/public/x", "web.demo", (("x-token", "shut"),))
    upper = request("GET", "/public/x", "web.demo", (("X-Token", "shut"),))
    canary = request("GET", "/public/x", "web.demo", (("x-canary", "1"), ("x-token", "shut")))
    got = statuses(plain_pair, contexts, [
        (0, alice, plain), (0, alice, shut), (0, alice, plain), (0, alice, upper),
        (0, alice, canary), (0, alice, plain)], counts={"no_plan": 6})
    assert got == [200, 403, 200, 403, 403, 200]


def test_a_route_header_choosing_a_destination_whose_workload_denies(pki, plain_pair):
    """x-canary: 1 routes to v2, whose workload (selector) policy denies alice: the plan
    key holds the route-read header's value, so alice's v1 plan is never used for her
    canary requests (the name in any case). The header twice is handed to Python, whose
    match sees the values joined (`1, 1`, `proxy.Waypoint.handle`) and takes the default
    route."""
    server, contexts = pki
    plain_pair.update(_config(_policy("v2-not-alice", "DENY", [
        {"from": [{"source": {"principals": [ALICE]}}]}], selector={"version": "v2"})))
    alice, bob = Who("alice"), Who("bob")
    v1 = request("GET", "/x", "web.demo")
    v2 = request("GET", "/x", "web.demo", (("x-canary", "1"),))
    v2_upper = request("GET", "/x", "web.demo", (("X-Canary", "1"),))
    v2_twice = request("GET", "/x", "web.demo", (("x-canary", "1"), ("x-canary", "1")))
    got = statuses(plain_pair, contexts, [
        (0, alice, v1), (0, alice, v2), (0, alice, v1), (0, alice, v2_upper),
        (0, alice, v2_twice), (1, bob, v2), (0, alice, v2)],
        counts={"answered": 3, "no_plan": 3, "repeated_header": 1})
    assert got == [200, 403, 200, 403, 200, 200, 403]


def test_a_policy_turning_deny_while_a_connection_is_kept_alive(pki, plain_pair):
    """alice's connection is answered by the lane; a snapshot adds a DENY for her: the
    next request on that same connection is Python's 403 (the cached plan went with the
    snapshot); bob's connection, opened before, keeps its plan; a snapshot without the
    DENY gives alice the lane again — all without reconnecting."""
    server, contexts = pki
    allow = _policy("allow-all", "ALLOW", [{}])
    deny = _policy("no-alice", "DENY", [{"from": [{"source": {"principals": [ALICE]}}]}])
    plain_pair.update(_config(allow))
    before = lane_counts(plain_pair.sides[0].wp)
    clients = Clients(plain_pair, contexts)
    alice, bob = Who("alice"), Who("bob")
    shape = request("GET", "/public/x", "web.demo")
    got = []
    try:
        for config in (None, _config(allow, deny), _config(allow)):
            if config is not None:
                plain_pair.update(config)
            for key, who in ((0, alice), (1, bob), (0, alice)):
                lane, python = clients.ask(key, who, shape)
                got.append(check(lane, python, f"{who}"))
        assert all(c.open for c in clients.conns.values())   # the same connections
    finally:
        clients.close()
    after = lane_counts(plain_pair.sides[0].wp)
    assert got == [200, 200, 200, 403, 200, 403, 200, 200, 200]
    assert after["answered"] - before.get("answered", 0) == 7
    assert after["no_plan"] - before.get("no_plan", 0) == 2


def test_the_port_from_the_tunnel_target_not_the_host(pki, tunnel_pair):
    """Through the node tunnel the port a policy sees is the tunnel target's, whatever the
    Host says: 8080 is denied (by `ports` and by a `destination.port` condition), and the
    same Host on a port-80 connection is the lane's."""
    server, contexts = pki
    for deny in (_policy("no-8080", "DENY", [{"to": [{"operation": {"ports": ["8080"]}}]}]),
                 _policy("no-8080", "DENY", [{"when": [{"key": "destination.port",
                                                        "values": ["8080"]}]}])):
        tunnel_pair.update(_config(deny))
        on80, on8080 = Who("alice", (WEB_VIP, 80)), Who("alice", (WEB_VIP, 8080))
        h80, h8080 = request("GET", "/x", "web.demo:80"), request("GET", "/x", "web.demo:8080")
        got = statuses(tunnel_pair, contexts, [
            (0, on80, h8080), (1, on8080, h80), (1, on8080, h8080), (0, on80, h80),
            (0, on80, h8080)], counts={"answered": 3, "no_plan": 2})
        assert got == [200, 403, 403, 200, 200]


def test_the_port_from_the_host(pki, plain_pair):
    """Without the tunnel the port is the Host's (a Service port), else the Service's
    first: the key holds the Host as sent."""
    server, contexts = pki
    plain_pair.update(_config(_policy("no-8080", "DENY", [
        {"to": [{"operation": {"ports": ["8080"]}}]}])))
    alice = Who("alice")
    got = statuses(plain_pair, contexts, [
        (0, alice, request("GET", "/x", host)) for host in (
            "web.demo:80", "web.demo:8080", "web.demo", "WEB.demo:8080", "web.demo:9999",
            "web.demo:8080")], counts={"answered": 3, "no_plan": 3})
    assert got == [200, 403, 200, 403, 200, 403]


def test_trailing_whitespace_in_the_host_does_not_escape_a_host_deny(pki, tunnel_pair):
    server, contexts = pki
    tunnel_pair.update(_config(_policy("no-web-host", "DENY", [
        {"to": [{"operation": {"hosts": ["web.demo"]}}]}])))
    got = statuses(tunnel_pair, contexts, [
        (0, Who("alice"), request("GET", "/x", "web.demo")),
        (0, Who("alice"), request("GET", "/x", "web.demo "))])
    assert got == [403, 403]


@pytest.mark.parametrize("host, status", [
    ("web.demo:80:80", 400),        # not a Host (RFC 9112 §3.2: 400), not a host to match
    ("[web.demo]:80", 400),         # an IP-literal holds an IPv6 address
    ("web.demo/x", 400),
    ("web.demo.", 403),             # the same name, fully qualified
    ("WEB.Demo.:80", 403),
])
def test_odd_host_forms_do_not_escape_a_host_deny(pki, tunnel_pair, host, status):
    """Through the tunnel (the Service comes from the tunnel target, not the Host), a Host
    that is malformed is refused with 400 and a trailing dot is matched as the same name;
    before, each of these reached the Service past a `hosts` DENY on both paths."""
    server, contexts = pki
    tunnel_pair.update(_config(_policy("no-web-host", "DENY", [
        {"to": [{"operation": {"hosts": ["web.demo"]}}]}])))
    got = statuses(tunnel_pair, contexts, [
        (0, Who("alice"), request("GET", "/x", "web.demo")),
        (1, Who("alice"), request("GET", "/x", host))])
    assert got == [403, status]


def test_trailing_whitespace_in_a_header_does_not_escape_a_header_deny(pki, plain_pair):
    server, contexts = pki
    plain_pair.update(_config(_policy("no-shut", "DENY", [
        {"when": [{"key": "request.headers[x-token]", "values": ["shut"]}]}])))
    got = statuses(plain_pair, contexts, [
        (0, Who("alice"), request("GET", "/x", "web.demo", (("x-token", "shut"),))),
        (0, Who("alice"), request("GET", "/x", "web.demo", (("x-token", "shut "),)))])
    assert got == [403, 403]


# --- weighted routes: a destination whose workload policy denies ------------------------------

WEIGHTED = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: demo}
spec:
  host: web
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: demo}
spec:
  hosts: [web]
  http:
  - match: [{uri: {prefix: /half}}]
    route:
    - {destination: {host: web, subset: v1}, weight: 50}
    - {destination: {host: web, subset: v2}, weight: 50}
  - match: [{uri: {prefix: /deny-weight-0}}]
    route:
    - {destination: {host: web, subset: v1}, weight: 100}
    - {destination: {host: web, subset: v2}, weight: 0}
  - match: [{uri: {prefix: /deny-weight-100}}]
    route:
    - {destination: {host: web, subset: v1}, weight: 0}
    - {destination: {host: web, subset: v2}, weight: 100}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: v2-not-alice, namespace: demo}
spec:
  selector: {matchLabels: {version: v2}}
  action: DENY
  rules:
  - from: [{source: {principals: ["cluster.local/ns/demo/sa/alice"]}}]
"""


def test_weighted_draws_never_reach_a_destination_whose_workload_policy_denies(pki):
    """v2's workload (selector) policy denies alice. Lane on and off: with v2 at weight 0
    alice is always served by v1 (the lane's plans: v2 is never drawn); at weight 100
    always refused; at 50/50 each side refuses about half (exact binomial bound, false
    failure < 1e-6) and serves the rest from v1, and the lane has no plan for her (the
    route has a drawable destination that denies) — nothing of alice's ever reaches v2.
    bob, whom no policy denies, gets the lane's 50/50 draws on both subsets."""
    server, contexts = pki
    n = 300
    alice, bob = Who("alice"), Who("bob")
    with Pair(server, tunnel=False, config=WEIGHTED) as pair:
        lane_side, py_side = pair.sides
        clients = Clients(pair, contexts)
        try:
            def send(who: Who, key: int, path: str, count: int) -> list[tuple[int, int]]:
                got = []
                for i in range(0, count, 25):
                    lane, python = clients.ask_many(
                        key, who, [request("GET", path, "web.demo")] * min(25, count - i))
                    assert len(lane) == len(python) == min(25, count - i)
                    got += [(status_of(a), status_of(b)) for a, b in zip(lane, python,
                                                                       strict=True)]
                return got

            def counts():
                return ([s.up.count for s in pair.sides], [s.up2.count for s in pair.sides],
                        lane_counts(lane_side.wp))

            # 50/50 first (both sides' seeded draws start together)
            ups, ups2, before = counts()
            half = send(alice, 0, "/half/x", n)
            ups_after, ups2_after, after = counts()
            assert ups2_after == ups2, "a request of alice's reached v2"
            for side in (0, 1):
                refused = sum(1 for pair_ in half if pair_[side] == 403)
                served = sum(1 for pair_ in half if pair_[side] == 200)
                assert refused + served == n, half
                assert ups_after[side] - ups[side] == served       # all of them by v1
                assert abs(refused - n / 2) <= binomial_bound(n, 0.5, 1e-6), (side, refused)
            # all Python's (a batch handed over at its first request is answered by Python)
            assert after.get("answered", 0) == before.get("answered", 0)
            assert after["no_plan"] > before.get("no_plan", 0)

            got = send(alice, 0, "/deny-weight-0", 40)
            assert got == [(200, 200)] * 40
            got = send(alice, 0, "/deny-weight-100", 40)
            assert got == [(403, 403)] * 40
            ups_end, ups2_end, end = counts()
            assert ups2_end == ups2, "a request of alice's reached v2"
            assert end["answered"] - after.get("answered", 0) == 40     # weight 0: lane's
            assert end["no_plan"] > after["no_plan"]                     # weight 100: Python

            got = send(bob, 1, "/half/x", n)
            assert got == [(200, 200)] * n
            ups_bob, ups2_bob, bob_end = counts()
            assert bob_end["answered"] - end["answered"] == n            # the lane drew
            for side in (0, 1):
                to_v2 = ups2_bob[side] - ups2_end[side]
                assert abs(to_v2 - n / 2) <= binomial_bound(n, 0.5, 1e-6), (side, to_v2)
        finally:
            clients.close()


def test_fuzz_the_per_connection_key_by_host(pki, plain_pair):
    seen = _fuzz(plain_pair, pki[1], **_KEY_FUZZ)
    assert seen.get(200, 0) >= 30 and seen.get(403, 0) >= 30, seen


def test_fuzz_the_per_connection_key_through_the_node_tunnel(pki, tunnel_pair):
    seen = _fuzz(tunnel_pair, pki[1], **_KEY_FUZZ)
    assert seen.get(200, 0) >= 30 and seen.get(403, 0) >= 30, seen
