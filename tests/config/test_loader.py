"""Reading YAML safely: every hostile or broken input is a located error, never a hang,
a traceback or a memory blow-up; well-formed input is read the way Kubernetes reads it."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from control.config import loader
from control.config.errors import ConfigError
from control.config.loader import MAX_FILE_BYTES, load_documents


def refused(data: bytes) -> str:
    with pytest.raises(ConfigError) as info:
        load_documents(data, name="bad.yaml")
    problems = info.value.problems
    assert len(problems) == 1 and problems[0].file == "bad.yaml"
    return str(problems[0])


def test_documents_keep_their_index_in_the_file_across_empty_documents():
    docs = load_documents(b"a: 1\n---\n---\nb: 2\n", name="f.yaml")
    assert [(d.file, d.index, d.obj) for d in docs] == [("f.yaml", 0, {"a": 1}), ("f.yaml", 2, {"b": 2})]


def test_reads_files_from_disk_and_names_unreadable_ones(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("kind: X\n")
    assert load_documents(path)[0].obj == {"kind": "X"}
    with pytest.raises(ConfigError) as info:
        load_documents(tmp_path / "missing.yaml")
    assert "cannot read" in str(info.value) and "missing.yaml" in str(info.value)


def test_input_over_the_size_limit_is_refused_before_parsing():
    assert "larger than" in refused(b"a: b\n" * (MAX_FILE_BYTES // 5 + 1))


def test_oversized_file_on_disk_is_refused(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_bytes(b"#" * (MAX_FILE_BYTES + 10))
    with pytest.raises(ConfigError, match="larger than"):
        load_documents(path)


def test_billion_laughs_is_refused_without_expanding():
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, 10):
        refs = ", ".join([f"*a{i - 1}"] * 10)
        lines.append(f"a{i}: &a{i} [{refs}]")
    message = refused("\n".join(lines).encode())
    assert "document 0" in message and "aliases" in message


def test_too_many_aliases_are_refused():
    data = b"a: &a 1\nb: [" + b"*a, " * (loader.MAX_ALIASES + 1) + b"]\n"
    assert "aliases" in refused(data)


def test_recursive_alias_is_refused():
    assert "recursive" in refused(b"---\n---\na: &x [1, *x]\n")
    assert "document 1" in refused(b"---\n---\na: &x [1, *x]\n")


def test_deep_flow_nesting_is_refused():
    message = refused(b"a: " + b"[" * 100_000 + b"]" * 100_000 + b"\n")
    assert "nest" in message


def test_deep_block_nesting_is_refused():
    text = "a:\n" + "".join(" " * (i + 1) + f"k{i}:\n" for i in range(loader.MAX_DEPTH + 5))
    assert "nested deeper" in refused(text.encode())


def test_nesting_within_the_limit_is_read():
    depth = loader.MAX_DEPTH - 2
    value = load_documents(b"a: " + b"[" * depth + b"1" + b"]" * depth)[0].obj["a"]
    for _ in range(depth):
        value = value[0]
    assert value == 1


def test_non_utf8_input_is_refused_with_the_offset():
    assert "not UTF-8" in refused(b"kind: \xff\xfe\n")
    assert "not UTF-8" in refused("kind: X\n".encode("utf-16"))


def test_utf8_bom_is_accepted():
    assert load_documents(b"\xef\xbb\xbfkind: X\n")[0].obj == {"kind": "X"}


def test_control_characters_and_malformed_yaml_are_located_errors():
    assert "malformed YAML" in refused(b"a: \x00\n")
    message = refused(b"a: [1, 2\nb: 3\n")
    assert "malformed YAML at line" in message


def test_huge_integers_are_an_error_not_a_traceback():
    assert "cannot read a value" in refused(b"a: " + b"9" * 10_000 + b"\n")


def test_python_tags_are_refused():
    assert "malformed YAML" in refused(b"a: !!python/object/apply:os.system [echo hi]\n")


def test_a_document_must_be_a_mapping():
    assert "must be a mapping" in refused(b"- a\n- b\n")


def test_duplicate_keys_are_an_error():
    assert "duplicate key 'a'" in refused(b"a: 1\nb: 2\na: 3\n")


def test_merge_keys_may_be_overridden_without_a_duplicate_error():
    obj = load_documents(b"base: &b {x: 1, y: 2}\nd:\n  <<: *b\n  y: 3\n")[0].obj
    assert obj["d"] == {"x": 1, "y": 3}


def test_keys_become_strings_and_timestamps_stay_strings():
    obj = load_documents(b"ports:\n  8080: {mode: STRICT}\n  true: x\nwhen: 2001-12-14\n")[0].obj
    assert obj == {"ports": {"8080": {"mode": "STRICT"}, "true": "x"}, "when": "2001-12-14"}


def test_non_scalar_keys_are_refused():
    assert "mapping key must be a scalar" in refused(b"? [a, b]\n: 1\n")


def test_the_pure_python_loader_applies_the_same_limits(monkeypatch):
    monkeypatch.setattr(loader, "_CLoader", None)
    assert "nested deeper" in refused(b"a: " + b"[" * 200 + b"]" * 200)
    assert "aliases" in refused(b"a: &a 1\nb: [" + b"*a, " * (loader.MAX_ALIASES + 1) + b"]\n")
    assert "duplicate key" in refused(b"a: 1\na: 2\n")
    assert load_documents(b"p:\n  80: x\n")[0].obj == {"p": {"80": "x"}}


def test_a_document_over_the_object_size_limit_is_refused(monkeypatch):
    assert loader.MAX_DOCUMENT_CHARS < MAX_FILE_BYTES
    monkeypatch.setattr(loader, "MAX_DOCUMENT_CHARS", 10_000)
    body = "data:\n" + "".join(f"  k{i}: {'x' * 60}\n" for i in range(10_000 // 60 + 1))
    data = ("a: 1\n---\n" + body).encode()
    message = refused(data)
    assert "document 1" in message and "document longer than" in message
    monkeypatch.setattr(loader, "_CLoader", None)
    assert "document longer than" in refused(data)


@pytest.mark.parametrize("python_loader", [False, True])
def test_node_and_document_counts_are_bounded(monkeypatch, python_loader):
    if python_loader:
        monkeypatch.setattr(loader, "_CLoader", None)
    monkeypatch.setattr(loader, "MAX_NODES_PER_DOCUMENT", 1000)
    monkeypatch.setattr(loader, "MAX_NODES_PER_FILE", 3000)
    monkeypatch.setattr(loader, "MAX_DOCUMENTS_PER_FILE", 100)
    dense = "a: [" + ", ".join(["1"] * 2000) + "]\n"
    assert "nodes in one document" in refused(dense.encode())
    many = "---\n".join(["a: [" + ", ".join(["1"] * 500) + "]\n"] * 8)
    assert "nodes in one file" in refused(many.encode())
    assert "documents in one file" in refused(b"---\na: 1\n" * 101)
    assert len(load_documents(b"---\na: 1\n" * 99)) == 99


_YAML_PIECES = ["a", ": ", "\n", "- ", "[", "]", "{", "}", ",", "&x ", "*x", "<<: ", "!!str ", "!!binary ",
                "? ", "|\n  ", ">-\n ", "'", '"', "\\", "#", "---\n", "...\n", "  ", "\t", "%YAML 1.1\n",
                "0x1F", "1e400", ".nan", "~", "\u00e9", "\ufeff", "\x85"]


@settings(max_examples=int(os.environ.get("LACEWING_FUZZ_EXAMPLES", "0")) or 300, deadline=None)
@given(st.one_of(st.binary(max_size=200),
                 st.lists(st.sampled_from(_YAML_PIECES), max_size=40).map(lambda p: "".join(p).encode())))
def test_arbitrary_input_is_read_or_refused_never_crashes(data):
    try:
        docs = load_documents(data, name="fuzz.yaml")
    except ConfigError as exc:
        assert exc.problems and all(p.file == "fuzz.yaml" and p.message for p in exc.problems)
    else:
        assert all(isinstance(d.obj, dict) and all(isinstance(k, str) for k in d.obj) for d in docs)
