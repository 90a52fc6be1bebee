"""From Kubernetes objects to the snapshot's Workload, Service and Waypoint: pure functions.

Before: the cluster state (control/state.py) holds Pod, Namespace, Node, Service, EndpointSlice
and Deployment dicts, exactly as the API server (or local mode's `config/` + `runtime/`) gives
them. After: `workload_of(pod, ...)`, `service_of(service, ...)` and `waypoint_of(...)` return the
frozen `control.snapshot` objects the compiler (control/compiler.py) packs for the wire.

Rules (DESIGN §4):
- enrollment: the pod label `lacewing.dev/dataplane-mode` wins (`ambient` enrolls, anything else
  — typically `none` — opts out); else the namespace label (`ambient` enrolls);
- waypoint: `lacewing.dev/use-waypoint=<name>` (or `<namespace>/<name>`; `none` = no waypoint)
  on a Service, else on its namespace; for a pod, on the pod, else on its namespace;
- a pod is a waypoint's instance when it carries `lacewing.dev/waypoint=<name>`;
- readiness: phase Running, a pod IP, the `Ready` condition True, not terminating;
- exclusions: the annotations `lacewing.dev/exclude-{outbound,inbound}-ports` ("15020,9090");
- endpoints: the Service's EndpointSlices when it has any (Kubernetes), else its selector over
  the ready pods of its namespace (local mode); a named target port is resolved from the pod's
  containers, or from its owning Deployment's template when the pod object carries no ports.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

from control.ca.spiffe_id import workload_id
from control.snapshot import (
    DATAPLANE_AMBIENT,
    DATAPLANE_LABEL,
    EXCLUDE_INBOUND,
    EXCLUDE_OUTBOUND,
    WAYPOINT_LABEL,
    Endpoint,
    Service,
    ServicePort,
    Waypoint,
    Workload,
)

WAYPOINT_INSTANCE_LABEL = "lacewing.dev/waypoint"
NO_WAYPOINT = "none"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"

Obj = Mapping[str, Any]


def meta(obj: Obj | None) -> Mapping[str, Any]:
    m = (obj or {}).get("metadata")
    return m if isinstance(m, Mapping) else {}


def labels(obj: Obj | None) -> Mapping[str, str]:
    lab = meta(obj).get("labels")
    return lab if isinstance(lab, Mapping) else {}


def annotations(obj: Obj | None) -> Mapping[str, str]:
    ann = meta(obj).get("annotations")
    return ann if isinstance(ann, Mapping) else {}


def _ports_annotation(value: str | None) -> frozenset[int]:
    out = set()
    for part in (value or "").split(","):
        part = part.strip()
        if part.isdigit() and 0 < int(part) < 65536:
            out.add(int(part))
    return frozenset(out)


def enrolled(pod: Obj, namespace: Obj | None) -> bool:
    own = labels(pod).get(DATAPLANE_LABEL)
    if own is not None:
        return own == DATAPLANE_AMBIENT
    return labels(namespace).get(DATAPLANE_LABEL) == DATAPLANE_AMBIENT


def waypoint_ref(value: str | None, namespace: str) -> str | None:
    if not value or value == NO_WAYPOINT:
        return None
    return value if "/" in value else f"{namespace}/{value}"


def _waypoint_for(obj: Obj, namespace_obj: Obj | None, namespace: str) -> str | None:
    own = labels(obj).get(WAYPOINT_LABEL)
    if own is not None:
        return waypoint_ref(own, namespace)
    return waypoint_ref(labels(namespace_obj).get(WAYPOINT_LABEL), namespace)


def pod_ready(pod: Obj) -> bool:
    status = pod.get("status") or {}
    if meta(pod).get("deletionTimestamp") or status.get("phase") != "Running":
        return False
    if not status.get("podIP"):
        return False
    for cond in status.get("conditions") or ():
        if isinstance(cond, Mapping) and cond.get("type") == "Ready":
            return cond.get("status") == "True"
    return False


def node_address(node: Obj | None) -> str:
    for addr in ((node or {}).get("status") or {}).get("addresses") or ():
        if isinstance(addr, Mapping) and addr.get("type") == "InternalIP":
            return str(addr.get("address") or "")
    return ""


def workload_of(pod: Obj, *, namespace: Obj | None, node: Obj | None,
                trust_domain: str) -> Workload | None:
    """The Workload of a scheduled pod with an address; None before that."""
    m = meta(pod)
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    ns, name = m.get("namespace") or "default", m.get("name")
    ip, node_name = status.get("podIP"), spec.get("nodeName")
    if not (name and ip and node_name):
        return None
    sa = spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"
    ann = annotations(pod)
    return Workload(
        namespace=ns, name=name, node=node_name, ip=ip,
        node_ip=status.get("hostIP") or node_address(node),
        service_account=sa,
        identity=workload_id(ns, sa, trust_domain=trust_domain).uri,
        labels=MappingProxyType(dict(labels(pod))),
        enrolled=enrolled(pod, namespace), ready=pod_ready(pod),
        waypoint=_waypoint_for(pod, namespace, ns),
        exclude_outbound_ports=_ports_annotation(ann.get(EXCLUDE_OUTBOUND)),
        exclude_inbound_ports=_ports_annotation(ann.get(EXCLUDE_INBOUND)),
    )


def selector_matches(selector: Mapping[str, str] | None, pod_labels: Mapping[str, str]) -> bool:
    """A Service selector: every pair must match; an empty or missing selector selects nothing."""
    if not selector:
        return False
    return all(pod_labels.get(k) == v for k, v in selector.items())


def app_protocol(port: Mapping[str, Any]) -> str:
    """`appProtocol`, else Istio's port-name convention (`http-web`, `grpc`, …), else ""."""
    explicit = port.get("appProtocol")
    if explicit:
        return str(explicit).lower()
    name = str(port.get("name") or "").lower()
    for proto in ("http2", "http", "grpc", "tcp"):
        if name == proto or name.startswith(proto + "-"):
            return proto
    return ""


def service_ports(service: Obj) -> tuple[ServicePort, ...]:
    out = []
    for p in (service.get("spec") or {}).get("ports") or ():
        if not isinstance(p, Mapping) or not isinstance(p.get("port"), int):
            continue
        if (p.get("protocol") or "TCP") != "TCP":
            continue
        target = p.get("targetPort", p["port"])
        if isinstance(target, str) and target.isdigit():
            target = int(target)
        out.append(ServicePort(port=p["port"], target_port=target, name=str(p.get("name") or ""),
                               app_protocol=app_protocol(p)))
    return tuple(out)


def container_ports(pod: Obj, owner_template: Obj | None = None) -> dict[str, int]:
    """Named container ports of a pod (or of its owner's template when the pod lists none)."""
    def collect(spec: Obj | None) -> dict[str, int]:
        found: dict[str, int] = {}
        for c in (spec or {}).get("containers") or ():
            for p in (c or {}).get("ports") or ():
                if isinstance(p, Mapping) and p.get("name") and isinstance(p.get("containerPort"), int):
                    found[p["name"]] = p["containerPort"]
        return found

    own = collect(pod.get("spec"))
    if own or owner_template is None:
        return own
    return collect(owner_template.get("spec"))


def endpoint_of(ports: tuple[ServicePort, ...], workload: Workload,
                named: Mapping[str, int]) -> Endpoint:
    resolved = {}
    for p in ports:
        if isinstance(p.target_port, int):
            resolved[p.port] = p.target_port
        elif p.target_port in named:
            resolved[p.port] = named[p.target_port]
    return Endpoint(workload=workload.uid, ip=workload.ip, ports=MappingProxyType(resolved))


def endpoints_from_slices(ports: tuple[ServicePort, ...], slices: Iterable[Obj],
                          namespace: str, workload_by_ip: Mapping[str, Workload]) -> tuple[Endpoint, ...]:
    by_name = {p.name: p for p in ports}
    out: dict[str, Endpoint] = {}
    for sl in slices:
        if sl.get("addressType", "IPv4") != "IPv4":
            continue
        slice_ports = {}
        for sp in sl.get("ports") or ():
            svc_port = by_name.get(str((sp or {}).get("name") or ""))
            if svc_port is not None and isinstance(sp.get("port"), int):
                slice_ports[svc_port.port] = sp["port"]
        for ep in sl.get("endpoints") or ():
            if not isinstance(ep, Mapping):
                continue
            if (ep.get("conditions") or {}).get("ready") is False:
                continue
            ref = ep.get("targetRef") or {}
            for ip in ep.get("addresses") or ():
                w = workload_by_ip.get(ip)
                uid = w.uid if w else (f"{ref.get('namespace') or namespace}/{ref['name']}"
                                       if ref.get("name") else "")
                out[ip] = Endpoint(workload=uid, ip=ip, ports=MappingProxyType(dict(slice_ports)))
    return tuple(out[ip] for ip in sorted(out))


def service_of(service: Obj, *, namespace: Obj | None, endpoints: tuple[Endpoint, ...]) -> Service | None:
    m = meta(service)
    spec = service.get("spec") or {}
    if not m.get("name"):
        return None
    ns = m.get("namespace") or "default"
    vip = spec.get("clusterIP") or ""
    if vip == "None":
        vip = ""
    return Service(namespace=ns, name=m["name"], vip=vip, ports=service_ports(service),
                   endpoints=endpoints, waypoint=_waypoint_for(service, namespace, ns),
                   labels=MappingProxyType(dict(labels(service))))


def waypoint_of(namespace: str, name: str, instances: Iterable[Workload], *,
                trust_domain: str) -> Waypoint | None:
    """A waypoint from its instance pods (ready ones give addresses); None without instances."""
    inst = sorted(instances, key=lambda w: w.uid)
    if not inst:
        return None
    sa = inst[0].service_account
    return Waypoint(namespace=namespace, name=name,
                    identity=workload_id(namespace, sa, trust_domain=trust_domain).uri,
                    addresses=tuple(sorted(w.ip for w in inst if w.ready)))
