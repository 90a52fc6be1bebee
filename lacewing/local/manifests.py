"""Kubernetes-shaped workload documents → typed objects, with errors that name the field.

Before: `Document`s from `control.config.loader`. After: `Workload` objects (Namespace,
ServiceAccount, Deployment, Pod, Service) or `Problem`s with file, document and JSON path.
Local mode runs commands, not images: a container without `command` is an error, and fields that
matter only to a real kubelet (image, resources, probes, …) are accepted with a warning that
says they are ignored. Any other unknown field is an error. Mesh kinds are not handled here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from control.config.errors import INVALID, WARNING, Problem
from control.config.loader import Document
from lacewing.local.topology import is_cluster_ip

WORKLOAD_KINDS = {
    ("v1", "Namespace"),
    ("v1", "ServiceAccount"),
    ("apps/v1", "Deployment"),
    ("v1", "Pod"),
    ("v1", "Service"),
}
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
# Fields a real kubelet uses that mean nothing here: accepted, with a warning.
IGNORED_CONTAINER = {"image", "imagePullPolicy", "resources", "livenessProbe", "readinessProbe",
                     "startupProbe", "securityContext", "volumeMounts", "workingDir", "lifecycle",
                     "terminationMessagePath", "terminationMessagePolicy", "stdin", "tty"}
IGNORED_POD_SPEC = {"volumes", "securityContext", "terminationGracePeriodSeconds", "nodeSelector",
                    "affinity", "tolerations", "imagePullSecrets", "restartPolicy",
                    "dnsPolicy", "schedulerName", "priorityClassName"}
IGNORED_META = {"annotations", "uid", "resourceVersion", "generation", "creationTimestamp",
                "managedFields", "ownerReferences", "finalizers", "generateName"}


@dataclass(frozen=True)
class ContainerPort:
    port: int
    name: str = ""
    protocol: str = "TCP"


@dataclass(frozen=True)
class Container:
    name: str
    command: tuple[str, ...]
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    ports: tuple[ContainerPort, ...] = ()

    @property
    def argv(self) -> list[str]:
        return [*self.command, *self.args]


@dataclass(frozen=True)
class PodSpec:
    containers: tuple[Container, ...]
    service_account: str = "default"
    node_name: str = ""


@dataclass(frozen=True)
class Namespace:
    name: str
    labels: dict[str, str] = field(default_factory=dict)
    kind = "Namespace"
    namespace = ""


@dataclass(frozen=True)
class ServiceAccount:
    namespace: str
    name: str
    kind = "ServiceAccount"


@dataclass(frozen=True)
class Deployment:
    namespace: str
    name: str
    replicas: int
    selector: dict[str, str]
    labels: dict[str, str]
    annotations: dict[str, str]
    spec: PodSpec
    kind = "Deployment"


@dataclass(frozen=True)
class Pod:
    namespace: str
    name: str
    labels: dict[str, str]
    annotations: dict[str, str]
    spec: PodSpec
    kind = "Pod"


@dataclass(frozen=True)
class ServicePort:
    port: int
    target_port: int | str
    name: str = ""
    protocol: str = "TCP"


@dataclass(frozen=True)
class Service:
    namespace: str
    name: str
    selector: dict[str, str]
    ports: tuple[ServicePort, ...]
    cluster_ip: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    kind = "Service"


Workload = Namespace | ServiceAccount | Deployment | Pod | Service


def is_workload(obj: dict[str, Any]) -> bool:
    return (obj.get("apiVersion"), obj.get("kind")) in WORKLOAD_KINDS


class _Reader:
    """Walks one document, collecting problems with their JSON paths."""

    def __init__(self, doc: Document, problems: list[Problem]):
        self.doc = doc
        self.problems = problems

    def error(self, path: str, message: str, kind: str = INVALID) -> None:
        self.problems.append(Problem(self.doc.file, self.doc.index, path, message, kind))

    def mapping(self, value: Any, path: str, *, allowed: set[str], ignored: set[str] = frozenset(),
                required: set[str] = frozenset()) -> dict[str, Any]:
        if value is None:
            value = {}
        if not isinstance(value, dict):
            self.error(path, f"must be a mapping, not {type(value).__name__}")
            return {}
        for key in value:
            sub = f"{path}.{key}" if path else str(key)
            if key in ignored:
                self.error(sub, "ignored in local mode (no images or kubelet here)", WARNING)
            elif key not in allowed:
                self.error(sub, "unknown field")
        for key in sorted(required - value.keys()):
            self.error(f"{path}.{key}" if path else key, "required")
        return value

    def string(self, value: Any, path: str, *, pattern: re.Pattern | None = None,
               what: str = "") -> str:
        if not isinstance(value, str):
            self.error(path, f"must be a string, not {type(value).__name__}")
            return ""
        if pattern and not pattern.match(value):
            self.error(path, f"{value!r} is not a valid {what or 'value'}")
        return value

    def integer(self, value: Any, path: str, *, lo: int, hi: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            self.error(path, f"must be an integer, not {type(value).__name__}")
            return lo
        if not lo <= value <= hi:
            self.error(path, f"{value} is out of range [{lo}, {hi}]")
        return value

    def strings(self, value: Any, path: str) -> tuple[str, ...]:
        if not isinstance(value, list):
            self.error(path, "must be a list of strings")
            return ()
        return tuple(self.string(v, f"{path}[{i}]") for i, v in enumerate(value))

    def labels(self, value: Any, path: str) -> dict[str, str]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.error(path, "must be a mapping of strings")
            return {}
        out = {}
        for k, v in value.items():
            if not isinstance(k, str) or not k:
                self.error(path, f"label key {k!r} must be a non-empty string")
                continue
            if not isinstance(v, str):
                self.error(f"{path}.{k}", "label values must be strings (quote numbers)")
                continue
            if len(v) > 63 or not LABEL_VALUE.match(v):
                self.error(f"{path}.{k}", f"{v!r} is not a valid label value")
            out[k] = v
        return out

    def annotations(self, value: Any, path: str) -> dict[str, str]:
        if value is None:
            return {}
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            self.error(path, "must be a mapping of strings to strings")
            return {}
        return dict(value)

    def metadata(self, obj: dict, *, namespaced: bool) -> tuple[str, str, dict, dict]:
        allowed = {"name", "labels", "namespace"} if namespaced else {"name", "labels"}
        meta = self.mapping(obj.get("metadata"), "metadata", allowed=allowed | {"annotations"},
                            ignored=IGNORED_META - {"annotations"}, required={"name"})
        name = self.string(meta.get("name", ""), "metadata.name", pattern=DNS_SUBDOMAIN, what="name")
        if len(name) > 63:
            self.error("metadata.name", "longer than 63 characters")
        ns = ""
        if namespaced:
            ns = self.string(meta.get("namespace", "default"), "metadata.namespace",
                             pattern=DNS_LABEL, what="namespace name")
        return (ns, name, self.labels(meta.get("labels"), "metadata.labels"),
                self.annotations(meta.get("annotations"), "metadata.annotations"))

    def pod_spec(self, value: Any, path: str) -> PodSpec:
        spec = self.mapping(value, path, allowed={"containers", "serviceAccountName",
                                                   "serviceAccount", "nodeName"},
                            ignored=IGNORED_POD_SPEC, required={"containers"})
        sa = spec.get("serviceAccountName", spec.get("serviceAccount", "default"))
        sa = self.string(sa, f"{path}.serviceAccountName", pattern=DNS_SUBDOMAIN,
                         what="service account name")
        node = self.string(spec.get("nodeName", ""), f"{path}.nodeName")
        raw = spec.get("containers", [])
        if not isinstance(raw, list) or not raw:
            if "containers" in spec:
                self.error(f"{path}.containers", "must be a non-empty list")
            return PodSpec((), sa, node)
        containers, seen_names, seen_ports = [], set(), {}
        for i, c in enumerate(raw):
            cpath = f"{path}.containers[{i}]"
            container = self.container(c, cpath)
            if container.name in seen_names:
                self.error(f"{cpath}.name", f"duplicate container name {container.name!r}")
            seen_names.add(container.name)
            for j, port in enumerate(container.ports):
                key = (port.port, port.protocol)
                if key in seen_ports:
                    self.error(f"{cpath}.ports[{j}].containerPort",
                               f"port {port.port}/{port.protocol} clashes with {seen_ports[key]}: "
                               "containers of a pod share one network namespace")
                else:
                    seen_ports[key] = f"{cpath}.ports[{j}]"
            containers.append(container)
        return PodSpec(tuple(containers), sa, node)

    def container(self, value: Any, path: str) -> Container:
        c = self.mapping(value, path, allowed={"name", "command", "args", "env", "ports"},
                         ignored=IGNORED_CONTAINER, required={"name"})
        name = self.string(c.get("name", ""), f"{path}.name", pattern=DNS_LABEL, what="container name")
        if "command" not in c:
            self.error(f"{path}.command", "required in local mode: a container runs its command "
                       "inside the pod's namespace (images are not run); for example "
                       "[lacewing, sample-app, serve]")
            command: tuple[str, ...] = ()
        else:
            command = self.strings(c["command"], f"{path}.command")
            if "command" in c and not command:
                self.error(f"{path}.command", "must not be empty")
        args = self.strings(c["args"], f"{path}.args") if "args" in c else ()
        env = []
        for i, e in enumerate(c.get("env") or []):
            epath = f"{path}.env[{i}]"
            e = self.mapping(e, epath, allowed={"name", "value"}, required={"name"})
            ename = self.string(e.get("name", ""), f"{epath}.name", pattern=ENV_NAME,
                                what="environment variable name")
            value = e.get("value", "")
            if not isinstance(value, str):
                self.error(f"{epath}.value", "must be a string (quote numbers)")
                value = str(value)
            env.append((ename, value))
        ports, names = [], set()
        for i, p in enumerate(c.get("ports") or []):
            ppath = f"{path}.ports[{i}]"
            p = self.mapping(p, ppath, allowed={"containerPort", "name", "protocol"},
                             ignored={"hostPort", "hostIP"}, required={"containerPort"})
            number = self.integer(p.get("containerPort", 1), f"{ppath}.containerPort", lo=1, hi=65535)
            pname = self.string(p.get("name", ""), f"{ppath}.name") if "name" in p else ""
            if pname and (pname in names or len(pname) > 15 or not DNS_LABEL.match(pname)):
                self.error(f"{ppath}.name", f"{pname!r} must be a unique name of at most 15 "
                           "lowercase letters, digits and dashes")
            names.add(pname)
            protocol = self.protocol(p, ppath)
            ports.append(ContainerPort(number, pname, protocol))
        return Container(name, command, args, tuple(env), tuple(ports))

    def protocol(self, p: dict, path: str) -> str:
        protocol = p.get("protocol", "TCP")
        if protocol not in ("TCP", "UDP", "SCTP"):
            self.error(f"{path}.protocol", f"{protocol!r} must be TCP, UDP or SCTP")
        elif protocol != "TCP":
            self.error(f"{path}.protocol", f"{protocol} is not supported in local mode (TCP only)")
        return protocol

    def selector(self, value: Any, path: str) -> dict[str, str]:
        sel = self.mapping(value, path, allowed={"matchLabels"}, required={"matchLabels"})
        return self.labels(sel.get("matchLabels"), f"{path}.matchLabels")


def parse_workload(doc: Document, problems: list[Problem]) -> Workload | None:
    """Parse one workload document; problems are appended. None when it has errors."""
    start = len(problems)
    r = _Reader(doc, problems)
    obj = doc.obj
    kind = obj.get("kind")
    top = {"apiVersion", "kind", "metadata", "spec"}
    if kind in ("Namespace", "ServiceAccount"):
        top = {"apiVersion", "kind", "metadata"}
    r.mapping(obj, "", allowed=top, ignored={"status"}, required={"metadata"})
    result: Workload | None = None
    if kind == "Namespace":
        _, name, labels, _ = r.metadata(obj, namespaced=False)
        if name and not DNS_LABEL.match(name):
            r.error("metadata.name", f"{name!r} is not a valid namespace name")
        result = Namespace(name, labels)
    elif kind == "ServiceAccount":
        ns, name, _, _ = r.metadata(obj, namespaced=True)
        result = ServiceAccount(ns, name)
    elif kind == "Deployment":
        ns, name, labels, annotations = r.metadata(obj, namespaced=True)
        spec = r.mapping(obj.get("spec"), "spec", allowed={"replicas", "selector", "template"},
                         ignored={"strategy", "revisionHistoryLimit", "progressDeadlineSeconds",
                                  "minReadySeconds"}, required={"selector", "template"})
        replicas = r.integer(spec.get("replicas", 1), "spec.replicas", lo=0, hi=250)
        selector = r.selector(spec.get("selector"), "spec.selector") if "selector" in spec else {}
        tmpl = r.mapping(spec.get("template"), "spec.template", allowed={"metadata", "spec"},
                         required={"spec"})
        tmeta = r.mapping(tmpl.get("metadata"), "spec.template.metadata",
                          allowed={"labels", "annotations"}, ignored=IGNORED_META - {"annotations"})
        tlabels = r.labels(tmeta.get("labels"), "spec.template.metadata.labels")
        tann = r.annotations(tmeta.get("annotations"), "spec.template.metadata.annotations")
        pod_spec = r.pod_spec(tmpl.get("spec"), "spec.template.spec")
        if selector and any(tlabels.get(k) != v for k, v in selector.items()):
            r.error("spec.selector.matchLabels", "does not match spec.template.metadata.labels")
        if "selector" in spec and not selector:
            r.error("spec.selector.matchLabels", "must select at least one label")
        result = Deployment(ns, name, replicas, selector, tlabels, tann, pod_spec)
    elif kind == "Pod":
        ns, name, labels, annotations = r.metadata(obj, namespaced=True)
        result = Pod(ns, name, labels, annotations, r.pod_spec(obj.get("spec"), "spec"))
    elif kind == "Service":
        ns, name, labels, _ = r.metadata(obj, namespaced=True)
        spec = r.mapping(obj.get("spec"), "spec",
                         allowed={"selector", "ports", "clusterIP", "type"},
                         ignored={"sessionAffinity", "ipFamilies", "ipFamilyPolicy",
                                  "internalTrafficPolicy"}, required={"ports"})
        stype = spec.get("type", "ClusterIP")
        if stype != "ClusterIP":
            r.error("spec.type", f"{stype!r} is not supported in local mode (ClusterIP only)")
        selector = r.labels(spec.get("selector"), "spec.selector")
        cluster_ip = spec.get("clusterIP")
        if cluster_ip is not None:
            if not isinstance(cluster_ip, str) or not is_cluster_ip(cluster_ip):
                r.error("spec.clusterIP", f"{cluster_ip!r} is not an address in the service "
                        "range 10.96.0.0/16")
        ports, seen = [], {}
        raw_ports = spec.get("ports") or []
        if not isinstance(raw_ports, list) or not raw_ports:
            if "ports" in spec:
                r.error("spec.ports", "must be a non-empty list")
            raw_ports = []
        for i, p in enumerate(raw_ports):
            ppath = f"spec.ports[{i}]"
            p = r.mapping(p, ppath, allowed={"port", "targetPort", "name", "protocol"},
                          ignored={"appProtocol", "nodePort"}, required={"port"})
            number = r.integer(p.get("port", 1), f"{ppath}.port", lo=1, hi=65535)
            target = p.get("targetPort", number)
            if isinstance(target, str) and not target.isdigit():
                r.string(target, f"{ppath}.targetPort", pattern=DNS_LABEL, what="port name")
            else:
                target = r.integer(int(target) if isinstance(target, str) else target,
                                   f"{ppath}.targetPort", lo=1, hi=65535)
            pname = r.string(p.get("name", ""), f"{ppath}.name") if "name" in p else ""
            if len(raw_ports) > 1 and not pname:
                r.error(f"{ppath}.name", "required when a Service has more than one port")
            if number in seen:
                r.error(f"{ppath}.port", f"port {number} clashes with {seen[number]}")
            seen[number] = ppath
            ports.append(ServicePort(number, target, pname, r.protocol(p, ppath)))
        result = Service(ns, name, selector, tuple(ports), cluster_ip, labels)
    errors = [p for p in problems[start:] if p.kind != WARNING]
    return None if errors else result
