"""`lacewing validate` and `lacewing analyze` as an operator runs them: exit codes, one line
per problem, JSON output, and errors without tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys

from lacewing.cli import main

from .helpers import REPO, conformance_dir

GOOD = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: r, namespace: prod}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v1}
"""
BAD = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: r}
spec:
  hosts: [reviews, reviews]
  http:
  - route:
    - {destination: {host: reviews}}
"""
DUPLICATE = "spec.hosts: duplicate hosts in virtual service: reviews & reviews"
UNSUPPORTED = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: r}
spec:
  hosts: [reviews]
  http:
  - route: [{destination: {host: reviews}}]
    corsPolicy: {allowOrigins: [{exact: a}]}
"""


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_validate_accepts_good_files(tmp_path, capsys):
    assert main(["validate", "-f", write(tmp_path, "a.yaml", GOOD)]) == 0
    out, err = capsys.readouterr()
    assert out == "" and "1 mesh resource(s) accepted" in err


def test_validate_prints_one_line_per_problem_and_exits_1(tmp_path, capsys):
    bad = write(tmp_path, "bad.yaml", GOOD + "---\n" + BAD)
    uns = write(tmp_path, "uns.yaml", UNSUPPORTED)
    assert main(["validate", "-f", bad, uns]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        f"{bad}: document 1: {DUPLICATE}",
        f"{uns}: document 0: spec.http[0].corsPolicy: unsupported: 'corsPolicy' is not supported by Lacewing yet; remove it",
    ]


def test_validate_warnings_alone_exit_0(tmp_path, capsys):
    path = write(tmp_path, "w.yaml", GOOD.replace("namespace: prod", "namespace: Prod"))
    assert main(["validate", "-f", path]) == 0
    assert "warning: namespace 'Prod'" in capsys.readouterr().out


def test_validate_json_output(tmp_path, capsys):
    path = write(tmp_path, "bad.yaml", BAD)
    assert main(["validate", "-f", path, "-o", "json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["summary"] == {"documents": 1, "accepted": 0, "invalid": 1, "unsupported": 0, "warning": 0}
    assert report["problems"] == [{"file": path, "index": 0, "path": "spec.hosts",
                                   "message": "duplicate hosts in virtual service: reviews & reviews",
                                   "kind": "invalid"}]


def test_validate_reports_unreadable_and_hostile_files_and_keeps_going(tmp_path, capsys):
    bomb = write(tmp_path, "bomb.yaml", "a: &a [x,x,x,x,x,x,x,x,x,x]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n" for p, c in zip("abcdefg", "bcdefgh", strict=True)))
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    good = write(tmp_path, "good.yaml", GOOD)
    missing = str(tmp_path / "missing.yaml")
    assert main(["validate", "-f", bomb, str(binary), missing, good]) == 1
    out = capsys.readouterr().out
    assert f"{bomb}: document 0: refused: expands to more than" in out
    assert f"{binary}: not UTF-8" in out
    assert f"{missing}: cannot read: No such file or directory" in out


def test_validate_reads_directories(tmp_path, capsys):
    write(tmp_path, "a.yaml", GOOD)
    write(tmp_path, "b.yml", BAD)
    write(tmp_path, "notes.txt", "not yaml: [")
    assert main(["validate", "-f", str(tmp_path)]) == 1
    assert "b.yml: document 0" in capsys.readouterr().out


def test_validate_without_documents_is_a_user_error(tmp_path, capsys):
    assert main(["validate", "-f", write(tmp_path, "empty.yaml", "# nothing\n")]) == 1
    assert "no documents found" in capsys.readouterr().err


def test_validate_reads_standard_input_in_a_real_process():
    proc = subprocess.run([sys.executable, "-m", "lacewing.cli", "validate", "-f", "-"], input=BAD,
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 1
    assert proc.stdout == f"<stdin>: document 0: {DUPLICATE}\n"
    assert "Traceback" not in proc.stderr


def test_validate_conformance_examples_only_unsupported(capsys):
    assert main(["validate", "-f", str(conformance_dir() / "api-examples")]) == 1
    out = capsys.readouterr().out
    problems = [line for line in out.splitlines() if line]
    assert problems and all(": unsupported: " in line or ": warning: " in line for line in problems)


ANALYZE = GOOD + """---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: prod}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: reviews, namespace: prod}
spec: {template: {metadata: {labels: {app: reviews}}}}
"""


def test_analyze_warns_and_exits_0(tmp_path, capsys):
    path = write(tmp_path, "a.yaml", ANALYZE)
    assert main(["analyze", "-f", path]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"{path}: document 0: spec.http[0].route[0].destination.subset: warning: subset 'v1' "
                   "of host 'reviews' is not defined: no DestinationRule exists for that host; "
                   "requests routed there will fail"]


def test_analyze_exits_1_on_invalid_documents_and_reports_skipped_checks(tmp_path, capsys):
    path = write(tmp_path, "a.yaml", BAD)
    assert main(["analyze", "-f", path, "-o", "json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["summary"]["invalid"] == 1 and len(report["summary"]["skipped_checks"]) == 2


def test_analyze_root_namespace_option(tmp_path, capsys):
    pas = "".join(f"---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
                  f"metadata: {{name: p{i}, namespace: mesh-root}}\nspec: {{}}\n" for i in range(2))
    path = write(tmp_path, "pa.yaml", pas)
    assert main(["analyze", "-f", path, "--root-namespace", "mesh-root"]) == 0
    assert capsys.readouterr().out.count("mesh-wide (root namespace mesh-root)") == 2


def test_analyze_without_files_reads_the_local_clusters_config(tmp_path, monkeypatch, capsys):
    from lacewing.local import names

    monkeypatch.setattr(names, "STATE_ROOT", tmp_path)
    assert main(["analyze", "--name", "nosuch"]) == 1
    assert "no local cluster 'nosuch'" in capsys.readouterr().err
    config = tmp_path / "lw-demo" / "config"
    config.mkdir(parents=True)
    (config / "VirtualService.networking.istio.io_prod_r.yaml").write_text(ANALYZE)
    assert main(["analyze", "--name", "demo"]) == 0
    assert "subset 'v1' of host 'reviews' is not defined" in capsys.readouterr().out
