"""The committed generated code matches control/api/*.proto and imports with this runtime."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_current(tmp_path):
    protos = sorted(p.relative_to(ROOT) for p in (ROOT / "control" / "api").glob("*.proto"))
    assert protos
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I", ".", f"--python_out={tmp_path}",
         f"--grpc_python_out={tmp_path}", *map(str, protos)],
        cwd=ROOT, check=True, capture_output=True, timeout=60,
    )
    for proto in protos:
        for suffix in ("_pb2.py", "_pb2_grpc.py"):
            rel = proto.with_name(proto.stem + suffix)
            assert (tmp_path / rel).read_text() == (ROOT / rel).read_text(), (
                f"{rel} is stale: run scripts/gen-protos.sh and commit the result")


def test_generated_ca_code_imports():
    from control.api import ca_pb2, ca_pb2_grpc

    assert ca_pb2.DESCRIPTOR.package == "lacewing.ca.v1"
    assert hasattr(ca_pb2_grpc, "CertificateServiceStub")
