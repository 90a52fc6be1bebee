"""Cross-object warnings: each analyzer fires on the broken case and stays quiet on the fixed one."""

from __future__ import annotations

from control.config.analyze import analyze, inventory, skipped_checks
from control.config.errors import WARNING
from control.config.loader import load_documents
from control.config.validate import validate_documents

BASE = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: prod}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v1}
      weight: 90
    - destination: {host: reviews.prod.svc.cluster.local, subset: v2}
      weight: 10
    mirror: {host: reviews, subset: v1}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: prod}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: prod}
spec: {selector: {app: reviews}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: reviews-v1, namespace: prod}
spec: {template: {metadata: {labels: {app: reviews, version: v1}}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: reviews, namespace: prod}
spec: {selector: {matchLabels: {app: reviews}}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
"""


def run(text: str, **options):
    docs = load_documents(text.encode(), name="a.yaml")
    resources, problems = validate_documents(docs)
    assert not problems, problems
    return analyze(resources, docs, **options)


def test_consistent_configuration_has_no_warnings():
    assert run(BASE) == []


def test_route_to_undefined_subset():
    warnings = run(BASE.replace("subset: v2}", "subset: v3}"))
    assert [(w.index, w.path, w.kind) for w in warnings] == [
        (0, "spec.http[0].route[1].destination.subset", WARNING)]
    assert "'v3'" in warnings[0].message and "does not define it" in warnings[0].message


def test_route_to_a_host_with_no_destination_rule():
    warnings = run(BASE.replace("host: reviews\n  subsets", "host: ratings\n  subsets"))
    assert {w.path for w in warnings} == {"spec.http[0].route[0].destination.subset",
                                          "spec.http[0].route[1].destination.subset",
                                          "spec.http[0].mirror.subset"}
    assert all("no DestinationRule" in w.message for w in warnings)


def test_two_mesh_wide_peer_authentications():
    second = "\n---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\n" \
             "metadata: {name: other, namespace: istio-system}\nspec: {mtls: {mode: PERMISSIVE}}\n"
    warnings = run(BASE + second)
    assert len(warnings) == 2 and all("mesh-wide" in w.message for w in warnings)
    # the root namespace is an option: with another root they are just namespace-wide duplicates
    warnings = run(BASE + second, root_namespace="mesh-root")
    assert all("namespace-wide in istio-system" in w.message for w in warnings)


def test_selector_matching_no_workload():
    warnings = run(BASE.replace("matchLabels: {app: reviews}", "matchLabels: {app: revews}"))
    assert [(w.path, w.index) for w in warnings] == [("spec.selector.matchLabels", 4)]
    assert "app=revews" in warnings[0].message


def test_virtual_service_host_without_service():
    warnings = run(BASE.replace("hosts: [reviews]", "hosts: [reviews, ratings]"))
    assert [w.path for w in warnings] == ["spec.hosts[1]"]


def test_workload_checks_are_skipped_without_workloads_and_say_so():
    text = BASE.replace("matchLabels: {app: reviews}", "matchLabels: {app: nothing}")
    docs = [d for d in load_documents(text.encode()) if d.obj["kind"] not in ("Deployment", "Service")]
    resources, _ = validate_documents(docs)
    assert analyze(resources, docs) == []
    assert len(skipped_checks(inventory(docs))) == 2


def test_two_virtual_services_for_one_host():
    other = "\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\n" \
            "metadata: {name: other, namespace: prod}\n" \
            "spec: {hosts: [reviews.prod.svc.cluster.local], http: [{route: [{destination: {host: reviews}}]}]}\n"
    warnings = run(BASE + other)
    assert sorted((w.index, w.path) for w in warnings) == [(0, "spec.hosts[0]"), (6, "spec.hosts[0]")]
    assert "prod/reviews, prod/other" in warnings[0].message
