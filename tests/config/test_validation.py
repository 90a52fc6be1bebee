"""Validation rules, one behaviour per test: what is accepted, what is refused and where."""

from __future__ import annotations

import pytest

from control.config.errors import INVALID, UNSUPPORTED, WARNING, ConfigError
from control.config.model import AuthorizationPolicy, RateLimitPolicy, VirtualService
from control.config.validate import parse, validate_document, validate_documents

from .helpers import ap, doc, dr, pa, rlp, vs


def problems_of(document):
    _, problems = validate_document(document)
    return [(p.kind, p.path, p.message) for p in problems]


def only(document, kind):
    found = [(path, message) for k, path, message in problems_of(document) if k == kind]
    assert found, problems_of(document)
    return found


def assert_invalid_at(document, path, text=""):
    found = only(document, INVALID)
    assert any(p == path and text in m for p, m in found), found


def assert_unsupported_at(document, path):
    found = problems_of(document)
    assert not [f for f in found if f[0] == INVALID], found
    assert any(k == UNSUPPORTED and p == path for k, p, _ in found), found


def route(*dests, **extra):
    return {"hosts": ["reviews"], "http": [{"route": list(dests), **extra}]}


def to(host, subset=None, weight=None):
    d = {"destination": {"host": host, **({"subset": subset} if subset else {})}}
    if weight is not None:
        d["weight"] = weight
    return d


# --- envelope --------------------------------------------------------------------------------------


def test_every_api_version_maps_to_one_model():
    spec = route(to("reviews", "v1", 75), to("reviews", "v2", 25))
    models = []
    for version in ("v1", "v1beta1", "v1alpha3"):
        d = doc(f"apiVersion: networking.istio.io/{version}\nkind: VirtualService\n"
                "metadata: {name: r}\nspec: {hosts: [reviews], http: [{route: [{destination: {host: reviews}}]}]}\n")
        models.append(parse(d))
    assert all(type(m) is VirtualService for m in models)
    assert models[0] == models[1] == models[2]
    assert parse(vs(spec)).spec.http[0].route[1].weight == 25


def test_unserved_version_is_invalid_and_names_the_served_ones():
    d = doc("apiVersion: security.istio.io/v1alpha3\nkind: PeerAuthentication\nmetadata: {name: a}\nspec: {}\n")
    assert_invalid_at(d, "apiVersion", "security.istio.io/v1")


def test_other_istio_kinds_are_unsupported_and_unknown_kinds_invalid():
    d = doc("apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g}\nspec: {}\n")
    assert_unsupported_at(d, "kind")
    d = doc("apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\n")
    assert_invalid_at(d, "kind", "unknown kind Widget")
    d = doc("metadata: {name: w}\n")
    assert_invalid_at(d, "apiVersion")


def test_workload_kinds_pass_without_problems_or_resources():
    d = doc("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec: {}\n")
    assert validate_documents([d]) == ([], [])


def test_name_is_required_and_must_be_dns():
    d = doc("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {namespace: a}\nspec: {}\n")
    assert_invalid_at(d, "metadata.name", "required")
    assert_invalid_at(pa({}, name="Bad_Name"), "metadata.name")


def test_capitalised_namespace_is_a_warning_only():
    resource, problems = validate_document(pa({}, namespace="nsA"))
    assert resource is not None and [p.kind for p in problems] == [WARNING]


def test_unknown_fields_are_invalid_and_named():
    assert_invalid_at(vs({**route(to("reviews")), "hostz": ["a"]}), "spec.hostz", "unknown field")
    assert_invalid_at(doc("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
                          "metadata: {name: a}\nspec: {}\nextra: 1\n"), "extra", "unknown field")


def test_problems_carry_file_index_and_path():
    d = vs(route(to("reviews", weight=-5), to("other", weight=105)))
    _, problems = validate_document(d)
    assert [(p.file, p.index, p.path) for p in problems] == [("t.yaml", 0, "spec.http[0].route[0].weight")]
    assert str(problems[0]) == "t.yaml: document 0: spec.http[0].route[0].weight: weight -5 < 0"


def test_parse_raises_config_error_with_every_problem():
    with pytest.raises(ConfigError) as info:
        parse(vs({"hosts": ["*"], "http": [{"timeout": "5", "route": [to("r")]}]}))
    paths = {p.path for p in info.value.problems}
    assert {"spec.hosts[0]", "spec.http[0].timeout"} <= paths


# --- schema ------------------------------------------------------------------------------------------


def test_schema_types_and_enums_are_checked():
    assert_invalid_at(vs({"hosts": "reviews", "http": []}), "spec.hosts", "must be of type array")
    assert_invalid_at(pa({"mtls": {"mode": "BLAH"}}), "spec.mtls.mode", "must be one of")


def test_one_match_type_per_string_match():
    spec = {"hosts": ["r"], "http": [{"match": [{"uri": {"exact": "/a", "prefix": "/b"}}], "route": [to("r")]}]}
    assert_invalid_at(vs(spec), "spec.http[0].match[0].uri", "only one of exact, prefix, regex")


def test_durations_must_parse_and_be_at_least_1ms():
    assert_invalid_at(vs(route(to("r"), timeout="5 seconds")), "spec.http[0].timeout", "valid duration")
    assert_invalid_at(vs(route(to("r"), timeout="0.5ms")), "spec.http[0].timeout", "greater than 1ms")
    assert parse(vs(route(to("r"), timeout="1h30m"))).spec.http[0].timeout.total_seconds() == 5400


def test_service_accounts_never_with_principals_or_namespaces():
    spec = {"rules": [{"from": [{"source": {"serviceAccounts": ["a/b"], "principals": ["x"]}}]}]}
    assert_invalid_at(ap(spec), "spec.rules[0].from[0].source", "Cannot set serviceAccounts")


def test_selector_and_target_ref_are_exclusive():
    spec = {"selector": {"matchLabels": {"app": "a"}}, "targetRef": {"kind": "Service", "name": "a"}}
    assert_invalid_at(ap(spec), "spec", "only one of targetRefs or selector")


def test_selector_labels_forbid_wildcards():
    assert_invalid_at(pa({"selector": {"matchLabels": {"app": "a*"}}}),
                      "spec.selector.matchLabels.app", "wildcard")


def test_port_level_mtls_needs_a_selector_and_ports_in_range():
    assert_invalid_at(pa({"portLevelMtls": {"80": {"mode": "STRICT"}}}), "spec", "requires selector")
    sel = {"selector": {"matchLabels": {"a": "b"}}}
    assert_invalid_at(pa({**sel, "portLevelMtls": {"70000": {"mode": "STRICT"}}}), "spec.portLevelMtls", "1-65535")
    ok = parse(pa({**sel, "portLevelMtls": {"8080": {"mode": "DISABLE"}}}))
    assert ok.spec.port_level_mtls[8080].mode == "DISABLE"


# --- VirtualService semantics -----------------------------------------------------------------------


def test_weights_must_sum_to_100():
    # Istio reads weights as relative proportions; Lacewing takes percentages, so other sums
    # are refused as unsupported (never silently renormalised), and a zero total is invalid.
    assert parse(vs(route(to("r", "v1", 60), to("r", "v2", 40))))
    assert_unsupported_at(vs(route(to("r", "v1", 60), to("r", "v2", 30))), "spec.http[0].route")
    assert_invalid_at(vs(route(to("r", "v1"), to("r", "v2"))), "spec.http[0].route", "total destination weight = 0")


def test_single_destination_takes_all_traffic_whatever_its_weight():
    assert parse(vs(route(to("r", weight=100))))
    assert parse(vs(route(to("r", weight=50)))).spec.http[0].route[0].weight == 50


def test_negative_weight_is_invalid():
    assert_invalid_at(vs(route(to("r", weight=150), to("s", weight=-50))), "spec.http[0].route[1].weight", "< 0")


def test_hosts_are_required_dns_names_and_not_star():
    assert_invalid_at(vs({"http": [{"route": [to("r")]}], "gateways": ["mesh"]}), "spec.hosts", "at least one host")
    assert_invalid_at(vs(route(to("r")) | {"hosts": ["bad host!"]}), "spec.hosts[0]", "label 'bad host!' invalid")
    assert_invalid_at(dr({"host": "10.0.0.1"}), "spec.host", "all-numeric")
    assert_invalid_at(vs(route(to("r")) | {"hosts": ["*"]}), "spec.hosts[0]", "wildcard")
    assert parse(vs(route(to("r")) | {"hosts": ["*.example.com", "10.0.0.1"]}))
    assert_invalid_at(vs(route(to("r")) | {"hosts": ["a.com", "*.com"]}), "spec.hosts", "duplicate hosts")
    assert_invalid_at(vs(route(to("r")) | {"hosts": ["*foo.com", "barfoo.com"]}), "spec.hosts", "duplicate hosts")
    assert parse(vs(route(to("r")) | {"hosts": ["*foo.example.com", "Reviews.Prod."]}))
    assert_invalid_at(vs(route(to("*"))), "spec.http[0].route[0].destination.host", "invalid destination host")
    assert_unsupported_at(vs(route(to("*.r.com"))), "spec.http[0].route[0].destination.host")


def test_a_virtual_service_without_hosts_is_an_unsupported_delegate():
    assert_unsupported_at(vs({"http": [{"route": [to("r")]}]}), "spec.hosts")


def test_route_action_is_required():
    assert_invalid_at(vs({"hosts": ["r"], "http": [{"timeout": "1s"}]}), "spec.http[0]", "route or redirect is required")
    assert_invalid_at(vs({"hosts": ["r"]}), "spec", "http, tcp or tls must be provided")
    d = vs({"hosts": ["r"], "http": [{"redirect": {"uri": "/a"}, "route": [to("r")]}]})
    assert_invalid_at(d, "spec.http[0]", "both route and redirect")


def test_retry_on_values():
    ok = parse(vs(route(to("r"), retries={"attempts": 3, "retryOn": "5xx,gateway-error,503"})))
    assert ok.spec.http[0].retries.retry_on == ("5xx", "gateway-error", "503")
    path = "spec.http[0].retries.retryOn"
    assert_invalid_at(vs(route(to("r"), retries={"attempts": 1, "retryOn": "5xx,sometimes"})), path,
                      "'sometimes' is not a valid retryOn policy")
    # like Istio: items are not trimmed, and numbers must be HTTP status codes
    assert_invalid_at(vs(route(to("r"), retries={"attempts": 1, "retryOn": "5xx, reset"})), path, "' reset'")
    assert_invalid_at(vs(route(to("r"), retries={"attempts": 1, "retryOn": "599"})), path)
    assert_unsupported_at(vs(route(to("r"), retries={"attempts": 1, "retryOn": "retriable-headers"})), path)


def test_retry_policy_with_zero_attempts_is_invalid():
    assert_invalid_at(vs(route(to("r"), retries={"retryOn": "5xx"})), "spec.http[0].retries", "attempts are set to 0")
    assert parse(vs(route(to("r"), retries={"attempts": 0})))


def test_regexes_must_compile():
    m = {"match": [{"uri": {"regex": "/(a"}, "headers": {"x-a": {"regex": "[z"}},
                    "queryParams": {"q": {"regex": ""}}, "method": {"regex": "a" * 1025}}]}
    d = vs(route(to("r"), **m))
    assert_invalid_at(d, "spec.http[0].match[0].uri.regex", "does not compile")
    assert_invalid_at(d, "spec.http[0].match[0].headers[x-a].regex", "does not compile")
    assert_invalid_at(d, "spec.http[0].match[0].queryParams.q.regex", "must not be empty")
    assert_invalid_at(d, "spec.http[0].match[0].method.regex", "too large")


def test_fault_mirror_and_percentages():
    fault = {"abort": {"httpStatus": 700, "percentage": {"value": 150}},
             "delay": {"fixedDelay": "1s", "percentage": {"value": 0.00001}}}
    d = vs(route(to("r"), fault=fault))
    assert_invalid_at(d, "spec.http[0].fault.abort.httpStatus", "range 200-599")
    assert_invalid_at(d, "spec.http[0].fault.abort.percentage.value", "between 0.0001 and 100")
    assert_invalid_at(d, "spec.http[0].fault.delay.percentage.value")
    assert_invalid_at(vs(route(to("r"), fault={})), "spec.http[0].fault", "abort and/or a delay")
    resource, problems = validate_document(vs(route(to("r"), fault={"delay": {"percentage": {"value": 5}}})))
    assert resource is not None and [(p.kind, p.path) for p in problems] == [(WARNING, "spec.http[0].fault.delay")]
    d = vs(route(to("r"), mirror={"host": "m", "port": {"number": 0}}, mirrorPercentage={"value": 101}))
    assert_invalid_at(d, "spec.http[0].mirror.port.number", "between 1 and 65535")
    assert_invalid_at(d, "spec.http[0].mirrorPercentage.value")


def test_header_names_and_values():
    d = vs(route(to("r"), match=[{"headers": {"bad header": {"exact": "x"}}}],
                 headers={"request": {"set": {":path": "x"}, "remove": ["host"]},
                          "response": {"add": {"x-a": "50%"}}}))
    assert_invalid_at(d, "spec.http[0].match[0].headers[bad header]", "invalid header name")
    assert_invalid_at(d, "spec.http[0].headers.request.set[:path]", "cannot have ':' prefix")
    assert_invalid_at(d, "spec.http[0].headers.request.remove[0]", "Host")
    assert_invalid_at(d, "spec.http[0].headers.response.add[x-a]", "unmatched '%'")
    assert_unsupported_at(vs(route(to("r"), headers={"request": {"set": {"x-host": "%HOSTNAME%"}}})),
                          "spec.http[0].headers.request.set[x-host]")


def test_escaped_percent_in_header_values_is_decoded_and_round_trips():
    resource = parse(vs(route(to("r"), headers={"response": {"set": {"x-rate": "100%%"}}})))
    assert resource.spec.http[0].headers.response.set["x-rate"] == "100%"
    assert resource.to_dict()["spec"]["http"][0]["headers"]["response"]["set"] == {"x-rate": "100%%"}


def test_unreachable_rules_are_warnings():
    spec = {"hosts": ["r"], "http": [{"route": [to("r")]}, {"route": [to("s")]},
                                     {"match": [{"uri": {"exact": "/a"}}], "route": [to("r")]},
                                     {"match": [{"uri": {"exact": "/a"}, "name": "again"}], "route": [to("s")]}]}
    resource, problems = validate_document(vs(spec))
    assert resource is not None
    assert {(p.kind, p.path) for p in problems} == {(WARNING, "spec.http[1]"), (WARNING, "spec.http[3]"),
                                                    (WARNING, "spec.http[3].match[0]")}


def test_implemented_fields_decode_into_the_model():
    spec = {"hosts": ["reviews"], "http": [{
        "name": "r", "match": [{"uri": {"prefix": "/a"}, "method": {"exact": "GET"},
                                "headers": {"x-user": {"exact": "j"}}, "queryParams": {"q": {"regex": "a+"}}}],
        "route": [to("reviews", "v1", 100) | {"headers": {"response": {"add": {"x-b": "1"}}}}],
        "rewrite": {"uri": "/b", "authority": "svc"},
        "headers": {"request": {"set": {"x-a": "1"}, "remove": ["x-c"]}},
        "timeout": "2s", "retries": {"attempts": 2, "perTryTimeout": "500ms", "retryOn": "5xx"},
        "fault": {"delay": {"fixedDelay": "1s", "percentage": {"value": 5}},
                  "abort": {"httpStatus": 503, "percentage": {"value": 1.5}}},
        "mirror": {"host": "shadow", "subset": "v2", "port": {"number": 8080}},
        "mirrorPercentage": {"value": 10}}]}
    http = parse(vs(spec)).spec.http[0]
    assert http.match[0].headers["x-user"].exact == "j"
    assert http.match[0].query_params["q"].regex == "a+"
    assert http.retries.per_try_timeout.total_seconds() == 0.5
    assert http.fault.abort.percentage.value == 1.5 and http.fault.abort.http_status == 503
    assert http.mirror.port.number == 8080 and http.mirror_percentage.value == 10.0
    assert http.route[0].headers.response.add == {"x-b": "1"}
    assert http.headers.request.remove == ("x-c",)


@pytest.mark.parametrize("extra,path", [
    ({"corsPolicy": {"allowOrigins": [{"exact": "x"}]}}, "spec.http[0].corsPolicy"),
    ({"retries": {"attempts": 1, "retryRemoteLocalities": True}}, "spec.http[0].retries.retryRemoteLocalities"),
    ({"rewrite": {"uriRegexRewrite": {"match": "a", "rewrite": "b"}}}, "spec.http[0].rewrite.uriRegexRewrite"),
    ({"match": [{"sourceLabels": {"a": "b"}}]}, "spec.http[0].match[0].sourceLabels"),
    ({"mirrors": [{"destination": {"host": "m"}}]}, "spec.http[0].mirrors"),
])
def test_unimplemented_istio_fields_are_unsupported_by_name(extra, path):
    assert_unsupported_at(vs(route(to("r"), **extra)), path)


def test_unsupported_field_hides_unknown_fields_under_it_but_not_schema_errors():
    d = vs({"hosts": ["r"], "http": [{"redirect": {"authority": "a", "prefix_rewrite": "/"}}]})
    assert_unsupported_at(d, "spec.http[0].redirect")
    d = dr({"host": "r", "trafficPolicy": {"loadBalancer": {"warmup": {"minimumPercent": 5}}}})
    kinds = {(k, p) for k, p, _ in problems_of(d)}
    assert (UNSUPPORTED, "spec.trafficPolicy.loadBalancer.warmup") in kinds
    assert (INVALID, "spec.trafficPolicy.loadBalancer.warmup.duration") in kinds


def test_tcp_tls_and_gateways_are_unsupported():
    assert_unsupported_at(vs({"hosts": ["m"], "tcp": [{"route": [to("m")]}]}), "spec.tcp")
    assert_unsupported_at(vs(route(to("r")) | {"gateways": ["ingress"]}), "spec.gateways[0]")
    assert parse(vs(route(to("r")) | {"gateways": ["mesh"]}))


# --- DestinationRule --------------------------------------------------------------------------------


def test_destination_rule_fields_and_rules():
    spec = {"host": "reviews", "trafficPolicy": {
        "loadBalancer": {"simple": "LEAST_REQUEST"},
        "connectionPool": {"tcp": {"maxConnections": 10},
                           "http": {"http1MaxPendingRequests": 1, "http2MaxRequests": 2,
                                    "maxRequestsPerConnection": 3, "maxRetries": 4}},
        "outlierDetection": {"consecutive5xxErrors": 5, "consecutiveGatewayErrors": 2, "interval": "10s",
                             "baseEjectionTime": "30s", "maxEjectionPercent": 50, "minHealthPercent": 10}},
        "subsets": [{"name": "v1", "labels": {"version": "v1"},
                     "trafficPolicy": {"loadBalancer": {"simple": "RANDOM"}}}]}
    rule = parse(dr(spec))
    assert rule.spec.traffic_policy.outlier_detection.consecutive_5xx_errors == 5
    assert rule.spec.traffic_policy.connection_pool.http.max_retries == 4
    assert rule.spec.subsets[0].traffic_policy.load_balancer.simple == "RANDOM"


def test_destination_rule_needs_non_empty_policies():
    assert_invalid_at(dr({"host": "r", "trafficPolicy": {}}), "spec.trafficPolicy", "at least one field")
    assert_invalid_at(dr({"host": "r", "trafficPolicy": {"connectionPool": {}}}),
                      "spec.trafficPolicy.connectionPool", "at least one field")
    assert_invalid_at(dr({"host": "r", "subsets": [{"name": "a", "labels": {"bad key!": "x"}}]}),
                      "spec.subsets[0].labels[bad key!]", "invalid label key")


def test_destination_rule_invalid_values():
    d = dr({"host": "r", "subsets": [{"name": "v1"}, {"name": "v1"}, {"name": "Bad_Name"}],
            "trafficPolicy": {"outlierDetection": {"maxEjectionPercent": 150},
                              "connectionPool": {"tcp": {"maxConnections": -1}}}})
    assert_invalid_at(d, "spec.subsets[1].name", "duplicate")
    assert_invalid_at(d, "spec.subsets[2].name", "DNS label")
    assert_invalid_at(d, "spec.trafficPolicy.outlierDetection.maxEjectionPercent")
    assert_invalid_at(d, "spec.trafficPolicy.connectionPool.tcp.maxConnections", "negative")
    assert_invalid_at(dr({"subsets": []}), "spec.host")


def test_destination_rule_unsupported():
    assert_unsupported_at(dr({"host": "r", "trafficPolicy": {"loadBalancer": {"simple": "PASSTHROUGH"}}}),
                          "spec.trafficPolicy.loadBalancer.simple")
    assert_unsupported_at(dr({"host": "r", "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}}}),
                          "spec.trafficPolicy.tls")


# --- AuthorizationPolicy ---------------------------------------------------------------------------


def test_authorization_policy_fields_decode():
    spec = {"action": "DENY", "targetRefs": [{"kind": "Service", "group": "", "name": "api"}], "rules": [{
        "from": [{"source": {"principals": ["cluster.local/ns/a/sa/b"], "notNamespaces": ["x"],
                             "ipBlocks": ["10.0.0.0/8"]}},
                 {"source": {"serviceAccounts": ["a/b", "c"]}}],
        "to": [{"operation": {"methods": ["GET"], "paths": ["/api/*"], "ports": ["8080"], "notHosts": ["h"]}}],
        "when": [{"key": "request.headers[x-token]", "values": ["a"]}, {"key": "source.ip", "notValues": ["1.2.3.4"]}]}]}
    policy = parse(ap(spec))
    assert isinstance(policy, AuthorizationPolicy) and policy.spec.action == "DENY"
    assert policy.spec.targets[0].name == "api"
    assert policy.spec.rules[0].from_[1].source.service_accounts == ("a/b", "c")
    assert policy.spec.rules[0].when[1].not_values == ("1.2.3.4",)


def test_allow_nothing_and_allow_all_are_distinct():
    nothing = parse(ap({}))
    everything = parse(ap({"rules": [{}]}))
    assert nothing.spec.rules == () and len(everything.spec.rules) == 1


def test_authorization_policy_invalid_values():
    spec = {"rules": [{"from": [{"source": {"ipBlocks": ["10.0.0.300"]}}, {}, {"source": {"principals": []}}],
                       "to": [{"operation": {"ports": ["http"], "paths": ["/a/{*}/{x}"]}}],
                       "when": [{"key": "source.colour", "values": ["x"]}, {"key": "source.ip"},
                                {"key": "request.headers", "values": ["a"]},
                                {"key": "destination.namespace", "values": ["a"]}]}]}
    d = ap(spec)
    assert_invalid_at(d, "spec.rules[0].from[0].source.ipBlocks[0]", "CIDR")
    assert_invalid_at(d, "spec.rules[0].from[1].source", "must not be nil")
    assert_invalid_at(d, "spec.rules[0].from[2].source", "must not be empty")
    assert_invalid_at(d, "spec.rules[0].to[0].operation.ports[0]", "between 0 and 65535")
    assert_invalid_at(d, "spec.rules[0].to[0].operation.paths[0]", "beyond a supported path template")
    assert_invalid_at(d, "spec.rules[0].when[0].key", "unknown attribute")
    assert_invalid_at(d, "spec.rules[0].when[1]", "values or notValues")
    assert_invalid_at(d, "spec.rules[0].when[2].key", "format a[b]")
    assert_invalid_at(d, "spec.rules[0].when[3].key", "replaced by the metadata.namespace")
    assert_invalid_at(ap({"action": "DENY", "provider": {"name": "x"}, "rules": [{}]}), "spec.provider",
                      "non CUSTOM action")
    assert_invalid_at(ap({"action": "DENY"}), "spec.rules", "DENY action without rules")
    assert_invalid_at(ap({"targetRef": {"kind": "Deployment", "group": "apps", "name": "w"}}), "spec.targetRef.kind")
    assert_invalid_at(ap({"rules": [{"from": [{"source": {"serviceAccounts": ["a/b/c", "*"]}}]}]}),
                      "spec.rules[0].from[0].source.serviceAccounts[0]", "expected format")


def test_selector_without_labels_is_a_warning():
    resource, problems = validate_document(pa({"selector": {}}))
    assert resource is not None and [(p.kind, p.path) for p in problems] == [(WARNING, "spec.selector")]


def test_deny_with_only_http_attributes_warns_about_tcp_ports():
    _, problems = validate_document(ap({"action": "DENY", "rules": [{"to": [{"operation": {"methods": ["POST"]}}]}]}))
    assert [(p.kind, p.path) for p in problems] == [(WARNING, "spec.rules[0]")]


def test_authorization_policy_unsupported():
    assert_unsupported_at(ap({"action": "AUDIT"}), "spec.action")
    assert_unsupported_at(ap({"rules": [{"from": [{"source": {"requestPrincipals": ["*"]}}]}]}),
                          "spec.rules[0].from[0].source.requestPrincipals")
    assert_unsupported_at(ap({"rules": [{"when": [{"key": "request.auth.claims[iss]", "values": ["a"]}]}]}),
                          "spec.rules[0].when[0].key")
    assert_unsupported_at(ap({"targetRef": {"kind": "ServiceEntry", "group": "networking.istio.io", "name": "w"}}),
                          "spec.targetRef.kind")
    assert_unsupported_at(ap({"rules": [{"to": [{"operation": {"paths": ["/api/{*}/x"]}}]}]}),
                          "spec.rules[0].to[0].operation.paths[0]")
    assert_unsupported_at(ap({}, annotations={"istio.io/dry-run": "true"}), "metadata.annotations[istio.io/dry-run]")


# --- RateLimitPolicy --------------------------------------------------------------------------------


def test_rate_limit_policy():
    spec = {"targetRef": {"kind": "Service", "name": "reviews"},
            "tokenBucket": {"maxTokens": 100, "tokensPerFill": 10, "fillInterval": "1s"},
            "remainingTokensHeader": "x-ratelimit-remaining"}
    policy = parse(rlp(spec, namespace="prod"))
    assert isinstance(policy, RateLimitPolicy)
    assert policy.spec.status == 429 and policy.spec.token_bucket.fill_interval.total_seconds() == 1
    whole_namespace = parse(rlp({"tokenBucket": {"maxTokens": 5, "fillInterval": "100ms"}, "statusCode": 503}))
    assert whole_namespace.spec.target_ref is None and whole_namespace.spec.status == 503
    assert whole_namespace.spec.token_bucket.tokens_added == 1


def test_rate_limit_policy_invalid():
    assert_invalid_at(rlp({"tokenBucket": {"maxTokens": 0, "fillInterval": "0s"}}), "spec.tokenBucket.maxTokens")
    assert_invalid_at(rlp({"tokenBucket": {"maxTokens": 1, "fillInterval": "0s"}}), "spec.tokenBucket.fillInterval")
    assert_invalid_at(rlp({"tokenBucket": {"maxTokens": 1, "tokensPerFill": 2, "fillInterval": "1s"}}),
                      "spec.tokenBucket.tokensPerFill", "cannot exceed")
    assert_invalid_at(rlp({"tokenBucket": {"maxTokens": 1, "fillInterval": "1s"}, "statusCode": 200}), "spec.statusCode")
    assert_invalid_at(rlp({"tokenBucket": {"maxTokens": 1, "fillInterval": "1s"},
                           "remainingTokensHeader": "bad header"}), "spec.remainingTokensHeader")
    assert_invalid_at(rlp({"tokenBucket": {"maxTokens": 1, "fillInterval": "1s"}, "burst": 3}), "spec.burst", "unknown field")
    assert_invalid_at(rlp({}), "spec.tokenBucket", "required")


def test_validate_documents_returns_accepted_resources_and_all_problems():
    good, bad = vs(route(to("r"))), vs(route(to("r", weight=-50), to("s", weight=10)))
    resources, problems = validate_documents([good, bad])
    assert len(resources) == 1 and resources[0].source.index == 0
    assert len(problems) == 1 and problems[0].kind == INVALID


def test_misspelt_kinds_and_wrong_groups_are_invalid_with_a_hint():
    d = doc("apiVersion: networking.istio.io/v1\nkind: VirtualSevice\nmetadata: {name: a}\nspec: {}\n")
    assert_invalid_at(d, "kind", "did you mean VirtualService?")
    d = doc("apiVersion: v1\nkind: AuthorizationPolicy\nmetadata: {name: a}\nspec: {}\n")
    assert_invalid_at(d, "apiVersion", "use apiVersion security.istio.io/v1")
    d = doc("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: a}\nspec: {}\n")
    assert_unsupported_at(d, "kind")
