"""The typed mesh configuration model: one frozen dataclass tree per kind, whatever the version.

Before: `control.config.validate` has checked a document and decodes it into these classes
(`control.config.codec`). After: the control-plane compiler, the waypoint, the node tunnel and
local mode read them; nothing downstream looks at raw YAML again.

The fields of these classes ARE the set of Istio fields Lacewing implements: a field the Istio
schema allows but that has no attribute here is refused as *unsupported* by the codec, naming
it (`docs/configuration.md` lists them, generated from this module). Adding a feature means
adding its field here, implementing it, and regenerating the list.

Attribute names are snake_case; the Istio JSON name is the camelCase of it unless a field says
otherwise (`metadata={"key": ...}`). `None` means "not set" (Istio's default applies); empty
tuples and mappings mean "none given". Durations are `timedelta`. Mappings are `FrozenMap`
(read-only, hashable), so every resource is hashable and comparable.
`to_dict()` on a resource gives the canonical Istio-shaped dict (preferred API version).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, ClassVar


class FrozenMap(Mapping):
    """A read-only, hashable mapping, so that resources can be set members and dict keys."""

    __slots__ = ("_data",)

    def __init__(self, data: Any = ()) -> None:
        object.__setattr__(self, "_data", dict(data))

    def __getitem__(self, key: Any) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        return hash(frozenset(self._data.items()))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and self._data == dict(other.items())

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("FrozenMap is read-only")

    def __repr__(self) -> str:
        return f"FrozenMap({self._data!r})"


EMPTY_MAP = FrozenMap()


def _map() -> Any:
    return field(default=EMPTY_MAP)


def _key(name: str, default: Any = None) -> Any:
    return field(default=default, metadata={"key": name})


# --- shared -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectMeta:
    name: str
    namespace: str | None = None
    labels: Mapping[str, str] = _map()
    annotations: Mapping[str, str] = _map()

    # Carried by the API server; accepted on input, never acted on, not kept.
    IGNORED_KEYS: ClassVar[frozenset[str]] = frozenset(
        {"uid", "resourceVersion", "generation", "creationTimestamp", "managedFields",
         "finalizers", "ownerReferences", "deletionTimestamp", "deletionGracePeriodSeconds",
         "selfLink"}
    )


@dataclass(frozen=True)
class WorkloadSelector:
    match_labels: Mapping[str, str] = _map()


@dataclass(frozen=True)
class PolicyTargetReference:
    kind: str
    name: str
    group: str = ""
    namespace: str | None = None  # the schema allows only "" (same namespace)


@dataclass(frozen=True)
class Source:
    """Where a resource came from, for messages; not part of a resource's value."""

    file: str
    index: int


class Resource:
    """Base of the resource kinds: `meta`, `spec`, and where it was read from."""

    GROUP: ClassVar[str]
    KIND: ClassVar[str]
    VERSIONS: ClassVar[tuple[str, ...]]
    PREFERRED_VERSION: ClassVar[str]

    meta: ObjectMeta
    spec: Any
    source: Source | None

    @property
    def api_version(self) -> str:
        return f"{self.GROUP}/{self.PREFERRED_VERSION}"

    @property
    def namespace(self) -> str:
        return self.meta.namespace or "default"

    @property
    def name(self) -> str:
        return self.meta.name

    def to_dict(self) -> dict[str, Any]:
        from control.config.codec import encode_resource

        return encode_resource(self)


# --- networking.istio.io VirtualService ---------------------------------------------------------


@dataclass(frozen=True)
class StringMatch:
    """At most one is set; none set matches any value (for headers: the header is present)."""

    exact: str | None = None
    prefix: str | None = None
    regex: str | None = None


@dataclass(frozen=True)
class HTTPMatchRequest:
    name: str | None = None
    uri: StringMatch | None = None
    method: StringMatch | None = None
    headers: Mapping[str, StringMatch] = _map()
    query_params: Mapping[str, StringMatch] = _map()


@dataclass(frozen=True)
class PortSelector:
    number: int


@dataclass(frozen=True)
class Destination:
    host: str
    subset: str | None = None
    port: PortSelector | None = None


@dataclass(frozen=True)
class HeaderOperations:
    """Header values are literal here: Istio's `%%` escape is decoded to `%` (and re-encoded by
    `to_dict`); values with Envoy command operators (`%HOSTNAME%`) are refused as unsupported."""

    set: Mapping[str, str] = field(default=EMPTY_MAP, metadata={"codec": "envoy-literal-map"})
    add: Mapping[str, str] = field(default=EMPTY_MAP, metadata={"codec": "envoy-literal-map"})
    remove: tuple[str, ...] = ()


@dataclass(frozen=True)
class Headers:
    request: HeaderOperations | None = None
    response: HeaderOperations | None = None


@dataclass(frozen=True)
class HTTPRouteDestination:
    destination: Destination
    weight: int | None = None
    headers: Headers | None = None


@dataclass(frozen=True)
class HTTPRewrite:
    uri: str | None = None
    authority: str | None = None


@dataclass(frozen=True)
class HTTPRetry:
    attempts: int | None = None
    per_try_timeout: timedelta | None = None
    # Istio writes a comma-separated string; kept here as its items.
    retry_on: tuple[str, ...] = field(default=(), metadata={"codec": "comma-list"})


@dataclass(frozen=True)
class Percent:
    value: float = 0.0


@dataclass(frozen=True)
class Delay:
    fixed_delay: timedelta | None = None
    percentage: Percent | None = None


@dataclass(frozen=True)
class Abort:
    http_status: int | None = None
    percentage: Percent | None = None


@dataclass(frozen=True)
class HTTPFaultInjection:
    delay: Delay | None = None
    abort: Abort | None = None


@dataclass(frozen=True)
class HTTPRoute:
    name: str | None = None
    match: tuple[HTTPMatchRequest, ...] = ()
    route: tuple[HTTPRouteDestination, ...] = ()
    rewrite: HTTPRewrite | None = None
    headers: Headers | None = None
    timeout: timedelta | None = None
    retries: HTTPRetry | None = None
    fault: HTTPFaultInjection | None = None
    mirror: Destination | None = None
    mirror_percentage: Percent | None = None


@dataclass(frozen=True)
class VirtualServiceSpec:
    hosts: tuple[str, ...] = ()
    # Only the implicit "mesh" gateway is implemented.
    gateways: tuple[str, ...] = ()
    http: tuple[HTTPRoute, ...] = ()


@dataclass(frozen=True)
class VirtualService(Resource):
    GROUP: ClassVar[str] = "networking.istio.io"
    KIND: ClassVar[str] = "VirtualService"
    VERSIONS: ClassVar[tuple[str, ...]] = ("v1", "v1beta1", "v1alpha3")
    PREFERRED_VERSION: ClassVar[str] = "v1"

    meta: ObjectMeta = _key("metadata")
    spec: VirtualServiceSpec = field(default_factory=VirtualServiceSpec)
    source: Source | None = field(default=None, compare=False, metadata={"skip": True})


# --- networking.istio.io DestinationRule --------------------------------------------------------


@dataclass(frozen=True)
class LoadBalancerSettings:
    simple: str | None = None  # ROUND_ROBIN, LEAST_REQUEST (LEAST_CONN: its old name), RANDOM, UNSPECIFIED


@dataclass(frozen=True)
class TCPSettings:
    max_connections: int | None = None


@dataclass(frozen=True)
class HTTPSettings:
    http1_max_pending_requests: int | None = None
    http2_max_requests: int | None = None
    max_requests_per_connection: int | None = None
    max_retries: int | None = None


@dataclass(frozen=True)
class ConnectionPoolSettings:
    tcp: TCPSettings | None = None
    http: HTTPSettings | None = None


@dataclass(frozen=True)
class OutlierDetection:
    consecutive_5xx_errors: int | None = None
    consecutive_gateway_errors: int | None = None
    interval: timedelta | None = None
    base_ejection_time: timedelta | None = None
    max_ejection_percent: int | None = None
    min_health_percent: int | None = None


@dataclass(frozen=True)
class TrafficPolicy:
    load_balancer: LoadBalancerSettings | None = None
    connection_pool: ConnectionPoolSettings | None = None
    outlier_detection: OutlierDetection | None = None


@dataclass(frozen=True)
class Subset:
    name: str
    labels: Mapping[str, str] = _map()
    traffic_policy: TrafficPolicy | None = None


@dataclass(frozen=True)
class DestinationRuleSpec:
    host: str = ""
    traffic_policy: TrafficPolicy | None = None
    subsets: tuple[Subset, ...] = ()


@dataclass(frozen=True)
class DestinationRule(Resource):
    GROUP: ClassVar[str] = "networking.istio.io"
    KIND: ClassVar[str] = "DestinationRule"
    VERSIONS: ClassVar[tuple[str, ...]] = ("v1", "v1beta1", "v1alpha3")
    PREFERRED_VERSION: ClassVar[str] = "v1"

    meta: ObjectMeta = _key("metadata")
    spec: DestinationRuleSpec = field(default_factory=DestinationRuleSpec)
    source: Source | None = field(default=None, compare=False, metadata={"skip": True})


# --- security.istio.io PeerAuthentication -------------------------------------------------------


@dataclass(frozen=True)
class PeerAuthenticationMTLS:
    mode: str | None = None  # UNSET (inherit), DISABLE, PERMISSIVE, STRICT


@dataclass(frozen=True)
class PeerAuthenticationSpec:
    selector: WorkloadSelector | None = None
    mtls: PeerAuthenticationMTLS | None = None
    port_level_mtls: Mapping[int, PeerAuthenticationMTLS] = _map()


@dataclass(frozen=True)
class PeerAuthentication(Resource):
    GROUP: ClassVar[str] = "security.istio.io"
    KIND: ClassVar[str] = "PeerAuthentication"
    VERSIONS: ClassVar[tuple[str, ...]] = ("v1", "v1beta1")
    PREFERRED_VERSION: ClassVar[str] = "v1"

    meta: ObjectMeta = _key("metadata")
    spec: PeerAuthenticationSpec = field(default_factory=PeerAuthenticationSpec)
    source: Source | None = field(default=None, compare=False, metadata={"skip": True})


# --- security.istio.io AuthorizationPolicy ------------------------------------------------------


def qualified_service_account(value: str, namespace: str | None) -> str:
    """A `serviceAccounts` / `source.serviceAccount` value as `namespace/name`: one given
    without a namespace names a service account of the policy's own namespace."""
    return value if "/" in value or namespace is None else f"{namespace}/{value}"


@dataclass(frozen=True)
class AuthzSource:
    principals: tuple[str, ...] = ()
    not_principals: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()
    not_namespaces: tuple[str, ...] = ()
    service_accounts: tuple[str, ...] = ()
    not_service_accounts: tuple[str, ...] = ()
    ip_blocks: tuple[str, ...] = ()
    not_ip_blocks: tuple[str, ...] = ()


@dataclass(frozen=True)
class Operation:
    hosts: tuple[str, ...] = ()
    not_hosts: tuple[str, ...] = ()
    ports: tuple[str, ...] = ()
    not_ports: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    not_methods: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    not_paths: tuple[str, ...] = ()


@dataclass(frozen=True)
class RuleFrom:
    source: AuthzSource | None = None


@dataclass(frozen=True)
class RuleTo:
    operation: Operation | None = None


@dataclass(frozen=True)
class Condition:
    key: str
    values: tuple[str, ...] = ()
    not_values: tuple[str, ...] = ()


@dataclass(frozen=True)
class Rule:
    from_: tuple[RuleFrom, ...] = _key("from", ())
    to: tuple[RuleTo, ...] = ()
    when: tuple[Condition, ...] = ()


@dataclass(frozen=True)
class AuthorizationPolicySpec:
    selector: WorkloadSelector | None = None
    target_ref: PolicyTargetReference | None = None
    target_refs: tuple[PolicyTargetReference, ...] = ()
    action: str | None = None  # ALLOW (the default) or DENY
    rules: tuple[Rule, ...] = ()

    @property
    def targets(self) -> tuple[PolicyTargetReference, ...]:
        return ((self.target_ref,) if self.target_ref else ()) + self.target_refs


@dataclass(frozen=True)
class AuthorizationPolicy(Resource):
    GROUP: ClassVar[str] = "security.istio.io"
    KIND: ClassVar[str] = "AuthorizationPolicy"
    VERSIONS: ClassVar[tuple[str, ...]] = ("v1", "v1beta1")
    PREFERRED_VERSION: ClassVar[str] = "v1"

    meta: ObjectMeta = _key("metadata")
    spec: AuthorizationPolicySpec = field(default_factory=AuthorizationPolicySpec)
    source: Source | None = field(default=None, compare=False, metadata={"skip": True})


# --- lacewing.dev RateLimitPolicy ---------------------------------------------------------------


@dataclass(frozen=True)
class TokenBucket:
    max_tokens: int
    fill_interval: timedelta
    tokens_per_fill: int | None = None  # default 1

    @property
    def tokens_added(self) -> int:
        return self.tokens_per_fill or 1


@dataclass(frozen=True)
class RateLimitPolicySpec:
    token_bucket: TokenBucket
    target_ref: PolicyTargetReference | None = None  # None: every Service of the namespace
    remaining_tokens_header: str | None = None
    status_code: int | None = None  # default 429

    @property
    def status(self) -> int:
        return self.status_code or 429


@dataclass(frozen=True)
class RateLimitPolicy(Resource):
    GROUP: ClassVar[str] = "lacewing.dev"
    KIND: ClassVar[str] = "RateLimitPolicy"
    VERSIONS: ClassVar[tuple[str, ...]] = ("v1alpha1",)
    PREFERRED_VERSION: ClassVar[str] = "v1alpha1"

    meta: ObjectMeta = _key("metadata")
    spec: RateLimitPolicySpec = field(default=None)  # type: ignore[assignment]
    source: Source | None = field(default=None, compare=False, metadata={"skip": True})


# --- gateway.networking.k8s.io Gateway (a waypoint's declaration) -------------------------------


@dataclass(frozen=True)
class Listener:
    """A waypoint listens for HBONE (mTLS tunnel) connections on 15008 and nothing else."""

    name: str
    port: int
    protocol: str


@dataclass(frozen=True)
class GatewaySpec:
    gateway_class_name: str = ""  # only `lacewing-waypoint` (rules: anything else is unsupported)
    listeners: tuple[Listener, ...] = ()


WAYPOINT_GATEWAY_CLASS = "lacewing-waypoint"
WAYPOINT_FOR_LABELS = ("istio.io/waypoint-for", "lacewing.dev/waypoint-for")
WAYPOINT_FOR_VALUES = ("service", "workload", "all", "none")


@dataclass(frozen=True)
class Gateway(Resource):
    """A waypoint, declared as Istio declares one: Gateway API `Gateway` with the waypoint class.

    Validated and stored like the other kinds, but not pushed to data planes: the control plane
    finds a waypoint by its pods (`lacewing.dev/waypoint=<name>`), and an AuthorizationPolicy
    attaches to it by `targetRef: {group: gateway.networking.k8s.io, kind: Gateway, name}`."""

    GROUP: ClassVar[str] = "gateway.networking.k8s.io"
    KIND: ClassVar[str] = "Gateway"
    VERSIONS: ClassVar[tuple[str, ...]] = ("v1", "v1beta1")
    PREFERRED_VERSION: ClassVar[str] = "v1"

    meta: ObjectMeta = _key("metadata")
    spec: GatewaySpec = field(default_factory=GatewaySpec)
    source: Source | None = field(default=None, compare=False, metadata={"skip": True})

    @property
    def waypoint_for(self) -> str:
        """Which traffic the waypoint takes (`istio.io/waypoint-for`, Lacewing's label wins)."""
        for key in reversed(WAYPOINT_FOR_LABELS):
            if key in self.meta.labels:
                return self.meta.labels[key]
        return "service"


# The kinds compiled and pushed to node tunnels and waypoints (control/objects.py reads these).
RESOURCE_KINDS: tuple[type[Resource], ...] = (
    VirtualService, DestinationRule, PeerAuthentication, AuthorizationPolicy, RateLimitPolicy,
)
# Declarations validated and stored but not compiled: the waypoint's Gateway.
DECLARATION_KINDS: tuple[type[Resource], ...] = (Gateway,)
# Every kind `validate` accepts and `support` documents.
CONFIG_KINDS: tuple[type[Resource], ...] = RESOURCE_KINDS + DECLARATION_KINDS
