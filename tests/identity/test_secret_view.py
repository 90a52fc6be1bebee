"""`lacewing proxy-config secret` through the loopback admin endpoint of a real manager."""

import asyncio
import json
import threading

import pytest

from control.ca.spiffe_id import workload_id
from lacewing.cli import main as lacewing
from node_agent.certs.admin import handle_request, serve_admin
from node_agent.certs.manager import CertificateManager
from tests.identity.helpers import running_cluster

WEB = workload_id("default", "web")


class AdminInBackground:
    """A real CA + manager + admin endpoint on an event loop in a thread, for the sync CLI."""

    def __init__(self, tmp_path):
        self.tmp_path = tmp_path
        self.ready = threading.Event()
        self.stop: asyncio.Event | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.url = ""
        self.cert = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()))

    async def _main(self):
        try:
            self.loop, self.stop = asyncio.get_running_loop(), asyncio.Event()
            async with running_cluster(self.tmp_path, placements={"n1": {("default", "web")}}) as cl:
                mgr = CertificateManager(cl.client_for("n1"))
                server = await serve_admin(mgr.describe, host="127.0.0.1", port=0)
                try:
                    self.cert = await mgr.get(WEB)
                    self.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
                    self.ready.set()
                    await self.stop.wait()
                finally:
                    server.close()
                    await server.wait_closed()
                    await mgr.close()
        except BaseException as exc:  # noqa: BLE001 - surfaced by __enter__
            self.error = exc
            self.ready.set()

    def __enter__(self):
        self.thread.start()
        assert self.ready.wait(30)
        if self.error:
            raise self.error
        return self

    def __exit__(self, *exc):
        if self.loop and self.stop:
            self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(30)


@pytest.fixture
def admin(tmp_path):
    with AdminInBackground(tmp_path) as a:
        yield a


def test_table_shows_identity_serial_and_validity(admin, capsys):
    assert lacewing(["proxy-config", "secret", "n1", "--admin-url", admin.url]) == 0
    out = capsys.readouterr().out
    header, row = out.strip().splitlines()
    assert header.split() == ["IDENTITY", "STATE", "SERIAL", "NOT", "BEFORE", "NOT", "AFTER"]
    assert WEB.uri in row and format(admin.cert.serial, "x") in row and "valid" in row


def test_json_and_pem_outputs(admin, capsys):
    assert lacewing(["proxy-config", "secret", "n1", "--admin-url", admin.url, "-o", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["identity"] for r in rows] == [WEB.uri]
    assert rows[0]["serial"] == format(admin.cert.serial, "x")
    assert rows[0]["not_before"].endswith("Z") and rows[0]["not_after"].endswith("Z")
    assert "PRIVATE KEY" not in json.dumps(rows)  # keys never leave the agent
    assert lacewing(["proxy-config", "secret", "n1", "--admin-url", admin.url, "-o", "pem"]) == 0
    pem = capsys.readouterr().out
    assert pem.count("BEGIN CERTIFICATE") == 1 and "PRIVATE KEY" not in pem


def test_unreachable_admin_is_a_clear_error(capsys):
    assert lacewing(["proxy-config", "secret", "n1", "--admin-url", "http://127.0.0.1:9"]) == 1
    assert "cannot reach" in capsys.readouterr().err


def test_without_admin_url_the_part_is_looked_up_in_a_local_cluster(capsys):
    assert lacewing(["proxy-config", "secret", "n1", "--name", "nosuchclstr"]) == 1
    assert "no local cluster named 'nosuchclstr'" in capsys.readouterr().err


def test_secret_of_a_node_agent_in_a_local_cluster(make_cluster, tmp_path, capsys):
    """The real path: an enrolled pod's identity, held by its node's agent, shown by PART."""
    import time

    cluster = make_cluster(nodes=1)
    (tmp_path / "pod.yaml").write_text(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: "
        "{lacewing.dev/dataplane-mode: ambient}}\n---\napiVersion: v1\nkind: ServiceAccount\n"
        "metadata: {name: api, namespace: shop}\n---\napiVersion: v1\nkind: Pod\n"
        "metadata: {name: api, namespace: shop}\nspec:\n  serviceAccountName: api\n"
        "  containers: [{name: c, command: [sleep, infinity]}]\n")
    cluster.apply([tmp_path / "pod.yaml"])
    want = "spiffe://cluster.local/ns/shop/sa/api"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        capsys.readouterr()
        if lacewing(["proxy-config", "secret", "node0", "--name", cluster.name, "-o",
                     "json"]) == 0:
            certs = json.loads(capsys.readouterr().out)
            if any(c["identity"] == want and c.get("serial") for c in certs):
                break
        time.sleep(0.5)
    else:
        raise AssertionError(f"node0's agent never showed a certificate for {want}")
    assert lacewing(["proxy-config", "secret", "node-agent-node0", "--name", cluster.name]) == 0
    assert want in capsys.readouterr().out
    assert lacewing(["proxy-config", "secret", "node7", "--name", cluster.name]) == 1
    assert "no node agent 'node7'" in capsys.readouterr().err


def test_admin_endpoint_is_read_only_and_loopback_only():
    assert handle_request(b"POST /certs HTTP/1.1\r\n\r\n", list).startswith(b"HTTP/1.1 405")
    assert handle_request(b"GET /other HTTP/1.1\r\n\r\n", list).startswith(b"HTTP/1.1 404")
    assert handle_request(b"\xff\xfe\r\n\r\n", list).startswith(b"HTTP/1.1 400")
    ok = handle_request(b"GET /certs HTTP/1.1\r\nHost: x\r\n\r\n", list)
    assert ok.startswith(b"HTTP/1.1 200") and ok.endswith(b'{\n  "certificates": []\n}\n')

    async def try_public():
        with pytest.raises(ValueError, match="loopback"):
            await serve_admin(list, host="0.0.0.0", port=0)
    asyncio.run(try_public())
