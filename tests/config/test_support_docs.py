"""The documentation's list of unsupported fields is the code's list, and every CEL rule in
the shipped schemas has a Python equivalent (a schema update cannot slip a rule past us)."""

from __future__ import annotations

import filecmp

from control.config import schema, support
from control.config.model import RESOURCE_KINDS

from .helpers import REPO, conformance_dir


def test_docs_list_equals_the_code_list():
    text = (REPO / "docs" / "configuration.md").read_text("utf-8")
    section = support.section_of(text)
    assert section is not None, "docs/configuration.md lost its generated section markers"
    assert section == support.markdown(), (
        "docs/configuration.md is out of date: run `python -m control.config.support --write docs/configuration.md`")


def test_the_list_names_known_gaps_and_not_implemented_fields():
    fields = support.unsupported_field_list()
    assert "spec.http[].corsPolicy" in fields["VirtualService"]
    assert "spec.tcp" in fields["VirtualService"]
    assert "spec.trafficPolicy.tls" in fields["DestinationRule"]
    assert "spec.http[].route" not in fields["VirtualService"]
    assert "spec.http[].retries.retryOn" not in fields["VirtualService"]


def test_every_cel_rule_of_the_mesh_kinds_is_implemented():
    known = schema.known_cel_rules()
    for cls in RESOURCE_KINDS:
        for version in cls.VERSIONS:
            rules = set(schema.iter_cel_rules(schema.crd_schemas()[(cls.GROUP, cls.KIND)][version]))
            assert rules <= known, f"{cls.KIND}/{version}: CEL rules without a Python check: {rules - known}"


def test_the_packaged_schema_is_istios_published_file():
    packaged = REPO / "control" / "config" / "schemas" / "crd-all.gen.yaml"
    assert filecmp.cmp(packaged, conformance_dir() / "schema" / "crd-all.gen.yaml", shallow=False)
    assert (packaged.parent / "LICENSE").is_file()


def _schema_at(node, path: str):
    for part in path.replace("[]", ".[]").replace("{}", ".{}").split("."):
        if part == "[]":
            node = node["items"]
        elif part == "{}":
            node = node["additionalProperties"]
        else:
            node = node["properties"][part]
    return node


def test_every_implemented_field_exists_in_every_served_schema():
    # A model attribute whose JSON name is misspelt would make the real field "unsupported".
    for cls in RESOURCE_KINDS:
        for version in cls.VERSIONS:
            doc_schema = schema.document_schema(cls.GROUP, version, cls.KIND)
            for path in support.supported_field_list()[cls.KIND]:
                assert _schema_at(doc_schema, path) is not None, (cls.KIND, version, path)


def test_resources_are_hashable_values():
    from control.config.loader import load_documents
    from control.config.validate import validate_documents

    text = (conformance_dir() / "api-examples" / "peer_authentication.yaml").read_bytes()
    resources, _ = validate_documents(load_documents(text))
    assert len({*resources, *resources}) == len(set(resources)) > 1
