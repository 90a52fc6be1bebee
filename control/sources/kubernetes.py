"""Kubernetes as a source, through the official `kubernetes` client: list, then watch.

Before: an `ApiClient` (kubeconfig, in-cluster, or any `Configuration`). After: for each kind the
control plane reads — Namespaces, Pods, Services, EndpointSlices, ServiceAccounts, Nodes and the
mesh resources (Istio's AuthorizationPolicy, PeerAuthentication, VirtualService,
DestinationRule; lacewing.dev's RateLimitPolicy) — one thread follows the API server:

1. list → a `Replace` of that kind (so objects deleted while we were away disappear), noting
   the list's resourceVersion; after every kind's first list, `Synced` for this source;
2. watch from that resourceVersion with bookmarks → `Upsert`/`Delete` per event; a bookmark
   only moves the resourceVersion on;
3. a watch that ends (server timeout) is reopened from the last resourceVersion; `410 Gone`
   (the version is too old) → back to 1 (relist); any other failure (connection refused, reset,
   5xx) → wait with exponential backoff and jitter, then reopen from the last version (or relist
   if there is none).

A mesh kind whose CRD is not installed (404) counts as empty and is listed again later. The
client is used unpatched; threads are used because it is synchronous, and every event crosses
to the event loop with `call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes import watch as k8s_watch
from kubernetes.client.rest import ApiException

from control.backoff import Backoff
from control.objects import Delete, Key, Replace, Upsert, key_of
from control.writer import Synced

log = logging.getLogger("lacewing.control.kubernetes")

WATCH_TIMEOUT = 300  # seconds the API server keeps one watch open (it closes it, we reopen)
CRD_RETRY = 30.0     # seconds between lists of a mesh kind whose CRD is not installed
DEFAULT_BACKOFF = Backoff(initial=0.5, maximum=30.0)


@dataclass(frozen=True)
class Followed:
    kind: str
    api_version: str
    list_fn: Callable[[k8s.ApiClient], tuple[Callable[..., Any], dict[str, Any]]]
    optional: bool = False  # a CRD that may be missing


def _custom(group: str, version: str, plural: str):
    def make(api: k8s.ApiClient):
        return k8s.CustomObjectsApi(api).list_cluster_custom_object, \
            {"group": group, "version": version, "plural": plural}
    return make


FOLLOWED: tuple[Followed, ...] = (
    Followed("Namespace", "v1", lambda a: (k8s.CoreV1Api(a).list_namespace, {})),
    Followed("Node", "v1", lambda a: (k8s.CoreV1Api(a).list_node, {})),
    Followed("ServiceAccount", "v1",
             lambda a: (k8s.CoreV1Api(a).list_service_account_for_all_namespaces, {})),
    Followed("Pod", "v1", lambda a: (k8s.CoreV1Api(a).list_pod_for_all_namespaces, {})),
    Followed("Service", "v1", lambda a: (k8s.CoreV1Api(a).list_service_for_all_namespaces, {})),
    Followed("EndpointSlice", "discovery.k8s.io/v1",
             lambda a: (k8s.DiscoveryV1Api(a).list_endpoint_slice_for_all_namespaces, {})),
    Followed("AuthorizationPolicy", "security.istio.io/v1",
             _custom("security.istio.io", "v1", "authorizationpolicies"), optional=True),
    Followed("PeerAuthentication", "security.istio.io/v1",
             _custom("security.istio.io", "v1", "peerauthentications"), optional=True),
    Followed("VirtualService", "networking.istio.io/v1",
             _custom("networking.istio.io", "v1", "virtualservices"), optional=True),
    Followed("DestinationRule", "networking.istio.io/v1",
             _custom("networking.istio.io", "v1", "destinationrules"), optional=True),
    Followed("RateLimitPolicy", "lacewing.dev/v1alpha1",
             _custom("lacewing.dev", "v1alpha1", "ratelimitpolicies"), optional=True),
)


def load_api_client(*, kubeconfig: str | None = None, in_cluster: bool = False) -> k8s.ApiClient:
    cfg = k8s.Configuration()
    if in_cluster:
        k8s_config.load_incluster_config(client_configuration=cfg)
    else:
        k8s_config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    cfg.connection_pool_maxsize = 2 * len(FOLLOWED)  # one watch per kind, plus lists
    return k8s.ApiClient(cfg)


class _Gone(Exception):
    """The watch's resourceVersion is too old: relist."""


class KubernetesSource:
    def __init__(self, api: k8s.ApiClient, *, followed: tuple[Followed, ...] = FOLLOWED,
                 backoff: Backoff = DEFAULT_BACKOFF,
                 watch_timeout: int = WATCH_TIMEOUT, name: str = "kubernetes") -> None:
        self.api = api
        self.followed = followed
        self.backoff = backoff
        self.watch_timeout = watch_timeout
        self.name = name
        self._stop = threading.Event()
        self._watches: dict[str, k8s_watch.Watch] = {}
        self._lock = threading.Lock()
        self._unsynced: set[str] = {f.kind for f in followed}
        # Counters, for tests and status.
        self.lists: dict[str, int] = {f.kind: 0 for f in followed}
        self.watches: dict[str, int] = {f.kind: 0 for f in followed}
        self.relists_after_gone = 0
        self.errors = 0

    async def run(self, queue: asyncio.Queue) -> None:
        loop = asyncio.get_running_loop()

        def emit(item) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        threads = [threading.Thread(target=self._follow, args=(f, emit), daemon=True,
                                    name=f"k8s-{f.kind}") for f in self.followed]
        for t in threads:
            t.start()
        try:
            await asyncio.Event().wait()
        finally:
            self._stop.set()
            # A thread blocked reading a watch ends when its socket is shut down; a watch that
            # was being opened just now has no socket yet, so keep stopping for a moment.
            deadline = loop.time() + 3.0
            while any(t.is_alive() for t in threads) and loop.time() < deadline:
                with self._lock:
                    for w in self._watches.values():
                        with contextlib.suppress(Exception):
                            w.stop()
                await asyncio.sleep(0.05)

    # --- one kind, in its thread ----------------------------------------------------------------
    def _synced(self, kind: str, emit) -> None:
        with self._lock:
            if kind in self._unsynced:
                self._unsynced.discard(kind)
                if not self._unsynced:
                    emit(Synced(self.name))

    def _list(self, f: Followed, emit) -> str:
        fn, kwargs = f.list_fn(self.api)
        try:
            resp = fn(**kwargs, _preload_content=False, _request_timeout=(5, 60))
        except ApiException as exc:
            if exc.status == 404 and f.optional:
                emit(Replace(frozenset({f.kind}), {}))
                self._synced(f.kind, emit)
                raise _CrdMissing() from None
            raise
        data = json.loads(resp.data)
        objects: dict[Key, dict] = {}
        for item in data.get("items") or ():
            obj = {"apiVersion": f.api_version, "kind": f.kind, **item}
            key = key_of(obj)
            if key is not None:
                objects[key] = obj
        emit(Replace(frozenset({f.kind}), objects))
        self.lists[f.kind] += 1
        self._synced(f.kind, emit)
        return str((data.get("metadata") or {}).get("resourceVersion") or "")

    def _watch(self, f: Followed, rv: str, emit) -> str:
        fn, kwargs = f.list_fn(self.api)
        w = k8s_watch.Watch()
        with self._lock:
            if self._stop.is_set():
                return rv
            self._watches[f.kind] = w
        self.watches[f.kind] += 1
        try:
            for event in w.stream(fn, **kwargs, resource_version=rv, allow_watch_bookmarks=True,
                                  timeout_seconds=self.watch_timeout,
                                  _request_timeout=(5, self.watch_timeout + 30)):
                etype = event.get("type")
                raw = event.get("raw_object") or {}
                meta = raw.get("metadata") or {}
                if meta.get("resourceVersion"):
                    rv = str(meta["resourceVersion"])
                if etype == "BOOKMARK":
                    continue
                obj = {"apiVersion": f.api_version, "kind": f.kind, **raw}
                key = key_of(obj)
                if key is None:
                    continue
                if etype in ("ADDED", "MODIFIED"):
                    emit(Upsert(key, obj))
                elif etype == "DELETED":
                    emit(Delete(key))
        except ApiException as exc:
            if exc.status == 410:
                raise _Gone() from None
            raise
        finally:
            with self._lock:
                self._watches.pop(f.kind, None)
        return rv

    def _follow(self, f: Followed, emit) -> None:
        rv: str | None = None
        failures = 0
        while not self._stop.is_set():
            try:
                if rv is None:
                    rv = self._list(f, emit)
                rv = self._watch(f, rv, emit)
                failures = 0
            except _Gone:
                log.info("watch of %s: resourceVersion %s is gone (410); listing again", f.kind, rv)
                self.relists_after_gone += 1
                rv = None
            except _CrdMissing:
                self._stop.wait(CRD_RETRY)
            except Exception as exc:  # noqa: BLE001 - network, 5xx, decoding: back off, retry
                if self._stop.is_set():
                    return
                failures += 1
                self.errors += 1
                delay = self.backoff.delay(failures, rand=random.random)
                log.warning("following %s failed (%s: %s); retrying in %.1fs", f.kind,
                            type(exc).__name__, exc, delay)
                self._stop.wait(delay)


class _CrdMissing(Exception):
    """The kind's CRD is not installed: nothing of it exists."""
