"""The directory source: what local mode writes becomes objects; a change is one rescan away;
a file that cannot be read keeps what it held (a half-written file removes nothing)."""

from __future__ import annotations

import asyncio

from control.objects import Key, Replace
from control.sources.directory import DirectorySource
from control.writer import Synced
from tests.control.helpers import namespace, pod, run, write_yaml


def test_scan_reads_both_folders_and_reports_only_real_changes(tmp_path):
    write_yaml(tmp_path / "config" / "Namespace_shop.yaml", namespace("shop"))
    write_yaml(tmp_path / "runtime" / "Pod_shop_a.yaml",
               pod("shop", "a", node_name="n1", ip="10.0.0.1"))
    (tmp_path / "config" / "notes.txt").write_text("not yaml")
    src = DirectorySource([tmp_path / "config", tmp_path / "runtime"])
    first = src.scan()
    assert set(first) == {Key("Namespace", "", "shop"), Key("Pod", "shop", "a")}
    assert src.scan() is None  # nothing changed
    write_yaml(tmp_path / "runtime" / "Pod_shop_b.yaml",
               pod("shop", "b", node_name="n1", ip="10.0.0.2"))
    assert Key("Pod", "shop", "b") in src.scan()


def test_an_unreadable_file_keeps_its_previous_objects(tmp_path):
    path = tmp_path / "config" / "Namespace_shop.yaml"
    write_yaml(path, namespace("shop"))
    src = DirectorySource([tmp_path / "config"])
    assert Key("Namespace", "", "shop") in src.scan()
    path.write_text("kind: Namespace\nmetadata: {name: [unclosed\n")
    after = src.scan()
    assert after is None or Key("Namespace", "", "shop") in after
    path.unlink()
    assert src.scan() == {}


def test_run_emits_a_replace_then_synced_then_changes(tmp_path):
    async def go():
        write_yaml(tmp_path / "config" / "Namespace_a.yaml", namespace("a"))
        src = DirectorySource([tmp_path / "config"], interval=0.05)
        queue: asyncio.Queue = asyncio.Queue()
        task = asyncio.create_task(src.run(queue))
        try:
            first = await asyncio.wait_for(queue.get(), 5)
            assert isinstance(first, Replace) and Key("Namespace", "", "a") in first.objects
            assert isinstance(await asyncio.wait_for(queue.get(), 5), Synced)
            write_yaml(tmp_path / "config" / "Namespace_b.yaml", namespace("b"))
            change = await asyncio.wait_for(queue.get(), 10)
            assert Key("Namespace", "", "b") in change.objects
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    run(go())
