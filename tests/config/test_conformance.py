"""Istio's own examples and test data, held against the validator (../shared/conformance/istio).

Every valid document is accepted or refused only as unsupported (naming the field); every
invalid document is refused as invalid with a field path. The share of valid documents fully
accepted is the compatibility figure; it is printed.
"""

from __future__ import annotations

import pytest

from control.config.errors import INVALID, UNSUPPORTED
from control.config.validate import validate_document

from .helpers import conformance_docs, invalid_files, valid_files


def test_every_valid_document_is_accepted_or_refused_only_as_unsupported(capsys):
    docs = conformance_docs(valid_files())
    assert len(docs) >= 60, "the conformance data is incomplete"
    accepted = 0
    wrong = []
    for doc, _ in docs:
        resource, problems = validate_document(doc)
        invalid = [p for p in problems if p.kind == INVALID]
        if invalid:
            wrong.extend(invalid)
        elif resource is None:
            unsupported = [p for p in problems if p.kind == UNSUPPORTED]
            assert unsupported, f"{doc.file} #{doc.index} refused without an unsupported problem"
            assert all(p.path and p.message for p in unsupported)
        else:
            accepted += 1
    assert not wrong, "valid Istio documents reported invalid:\n" + "\n".join(map(str, wrong))
    share = accepted / len(docs)
    with capsys.disabled():
        print(f"\nIstio conformance: {accepted}/{len(docs)} valid documents fully accepted "
              f"({share:.0%}); the rest refused only as unsupported")
    assert accepted > 0


@pytest.mark.parametrize("item", conformance_docs(invalid_files()),
                         ids=lambda item: f"{item[0].file.rsplit('/', 1)[-1]}#{item[0].index}")
def test_every_invalid_document_is_refused_as_invalid_with_a_path(item):
    doc, expected = item
    resource, problems = validate_document(doc)
    invalid = [p for p in problems if p.kind == INVALID]
    assert resource is None
    assert invalid, f"accepted an invalid document (Istio says: {expected})"
    assert all(p.path.startswith("spec") for p in invalid), invalid
    assert all(p.file == doc.file and p.index == doc.index for p in invalid)


def test_invalid_documents_name_the_field_istio_names():
    # Where Istio's message names a field path, ours names the same one.
    for doc, expected in conformance_docs(invalid_files()):
        _, problems = validate_document(doc)
        if expected and expected.startswith("spec."):
            field = expected.split(":")[0].split(" ")[0]
            assert any(p.path == field for p in problems), (field, problems)
        elif expected:
            assert problems
