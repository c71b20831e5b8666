"""A real Redis Cluster for the tests: redis-server processes in cluster mode on free loopback
ports, joined with `redis-cli --cluster create`, each with its data under a folder of its own.

`LocalCluster(root, masters=3, replicas=1).start()` returns once every node reports
`cluster_state:ok`, agrees on who owns each slot and (with replicas) every replica's link to
its master is up. Every wait is bounded. `close()` kills every process and deletes `root`,
whatever state the cluster is in; use it as a context manager (or a fixture's `finally`).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from redis.crc import key_slot

from service.embedded_redis import free_port, start_redis_server
from service.registry import namespace


@dataclass
class Node:
    port: int
    bus_port: int
    data_dir: Path
    process: subprocess.Popen | None = None
    node_id: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self, timeout_s: float = 2.0) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True,
                           socket_timeout=timeout_s, socket_connect_timeout=timeout_s)

    @property
    def log_path(self) -> Path:
        return self.data_dir / "redis.log"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


class LocalCluster:
    """`masters` masters with `replicas` replicas each; `node_timeout_ms` is the cluster's
    failure-detection time (small, so an automatic failover takes seconds, not 15 s)."""

    def __init__(self, root: Path, masters: int = 3, replicas: int = 0, node_timeout_ms: int = 1000):
        self.binary = shutil.which("redis-server")
        self.cli = shutil.which("redis-cli")
        if self.binary is None or self.cli is None:
            pytest.skip("redis-server and redis-cli are not installed")
        self.root = Path(root)
        self.masters = masters
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.nodes = [
            Node(free_port(), free_port(), self.root / f"node-{i}") for i in range(masters * (1 + replicas))
        ]

    # ------------------------------------------------------------------ lifecycle

    def _args(self, node: Node) -> list[str]:
        return [
            self.binary,
            "--port", str(node.port),
            "--cluster-port", str(node.bus_port),  # the default, port + 10000, may be past 65535
            "--bind", "127.0.0.1",
            "--dir", str(node.data_dir.resolve()),
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(self.node_timeout_ms),
            "--repl-diskless-sync-delay", "0",  # a replica's first sync at once, not after 5 s
            "--appendonly", "no",
            "--save", "",
            "--daemonize", "no",
            "--logfile", "",  # stdout, appended to node.log_path
            "--loglevel", "notice",
        ]  # fmt: skip

    def _start_node(self, node: Node, timeout_s: float) -> None:
        """Starts a node on its picked ports; if one of them was taken meanwhile (its log says
        the address was in use), on new ones, with its cluster config written afresh."""
        tries = []

        def args(port: int) -> list[str]:
            if tries:  # a retry: the bus port may have been the taken one
                node.port, node.bus_port = port, free_port()
                (node.data_dir / "nodes.conf").unlink(missing_ok=True)
            tries.append(port)
            return self._args(node)

        node.data_dir.mkdir(parents=True, exist_ok=True)
        node.process, _port = start_redis_server(args, node.log_path, node.port, repick=True, timeout_s=timeout_s)

    def start(self, timeout_s: float = 30.0) -> LocalCluster:
        deadline = time.monotonic() + timeout_s
        try:
            for node in self.nodes:
                self._start_node(node, max(1.0, deadline - time.monotonic()))
            created = subprocess.run(
                [self.cli, "--cluster", "create", *(n.address for n in self.nodes),
                 "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                capture_output=True, text=True, timeout=max(1.0, deadline - time.monotonic()),
            )
            if created.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed: {created.stdout[-2000:]}{created.stderr}")
            self.wait_healthy(deadline - time.monotonic())
        except BaseException:
            self.close()
            raise
        return self

    def wait_healthy(self, timeout_s: float = 15.0) -> None:
        """Until every live node says `cluster_state:ok`, all agree on the slots' owners, and
        every live replica's link to its master is up."""
        deadline = time.monotonic() + timeout_s
        _wait(self._healthy, deadline, "the cluster to be healthy")
        for node in self.nodes:
            if node.alive:
                with node.client() as client:
                    node.node_id = client.execute_command("CLUSTER", "MYID")

    def _healthy(self) -> bool:
        views = []
        for node in self.nodes:
            if not node.alive:
                continue
            try:
                with node.client(0.5) as client:
                    if "cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
                        return False
                    views.append(_slot_owners(client))
                    info = client.info("replication")
                    if info["role"] == "slave" and info.get("master_link_status") != "up":
                        return False
            except (redis.RedisError, OSError):
                return False
        return bool(views) and all(view == views[0] for view in views)

    def close(self) -> None:
        """Kills every node (SIGKILL; a frozen one too) and deletes the data folders."""
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                os.kill(node.process.pid, signal.SIGCONT)
                node.process.kill()
        for node in self.nodes:
            if node.process is not None:
                try:
                    node.process.wait(timeout=10)
                except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL is not ignored
                    pass
                node.process = None
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ what the tests ask

    @property
    def url(self) -> str:
        """A seed node's URL (the cluster client learns the rest)."""
        return f"redis://{self.live_nodes()[0].address}/0"

    @property
    def seeds_url(self) -> str:
        """Every node, as the service's REDIS_URL lists several seeds."""
        first, *rest = self.live_nodes()
        return "redis://" + ",".join(n.address for n in [first, *rest]) + "/0"

    def live_nodes(self) -> list[Node]:
        return [n for n in self.nodes if n.alive]

    def node(self, node_id: str) -> Node:
        return next(n for n in self.nodes if n.node_id == node_id)

    def owner(self, slot: int) -> Node:
        """The master that serves `slot` now (as a live node sees it)."""
        with self.live_nodes()[0].client() as client:
            owner_port = _slot_owners(client)[slot]
        return next(n for n in self.nodes if n.port == owner_port)

    def replicas_of(self, master: Node) -> list[Node]:
        with master.client() as client:
            info = client.info("replication")
        ports = {int(v["port"]) for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)}
        return [n for n in self.nodes if n.port in ports]

    def masters_now(self) -> list[Node]:
        with self.live_nodes()[0].client() as client:
            owners = set(_slot_owners(client).values())
        return [n for n in self.nodes if n.port in owners]

    def kill(self, node: Node) -> None:
        """SIGKILL: the node is gone at once, with whatever it had not sent to its replicas."""
        if node.process is not None:
            os.kill(node.process.pid, signal.SIGCONT)
            node.process.kill()
            node.process.wait(timeout=10)

    def restart(self, node: Node, timeout_s: float = 20.0) -> None:
        """Starts a killed node again on its port and folder: a master whose slots were taken
        over rejoins as a replica of its successor. Returns once the cluster is healthy."""
        deadline = time.monotonic() + timeout_s
        node.process, _port = start_redis_server(lambda _port: self._args(node), node.log_path, node.port,
                                                 repick=False, timeout_s=timeout_s)
        self.wait_healthy(deadline - time.monotonic())

    def detach_replica(self, master: Node, replica: Node) -> None:
        """Makes `replica` fall behind for good: frozen (SIGSTOP), then its replication link
        dropped by the master (CLIENT KILL TYPE replica). Freezing alone is not enough on
        loopback: the kernel buffers what the master sends, and the replica reads it on SIGCONT."""
        self.freeze(replica)
        with master.client() as client:
            client.execute_command("CLIENT", "KILL", "TYPE", "replica")

    def freeze(self, node: Node) -> None:
        """SIGSTOP: the node neither answers nor reads what its master sends."""
        os.kill(node.process.pid, signal.SIGSTOP)

    def thaw(self, node: Node) -> None:
        os.kill(node.process.pid, signal.SIGCONT)

    def wait_owner(self, slot: int, node: Node, timeout_s: float = 15.0) -> float:
        """Seconds until every live node says `node` serves `slot` (a failover or a migration done)."""
        start = time.monotonic()

        def done() -> bool:
            try:
                for live in self.live_nodes():
                    with live.client(0.5) as client:
                        if _slot_owners(client).get(slot) != node.port:
                            return False
                return True
            except (redis.RedisError, OSError):
                return False

        _wait(done, start + timeout_s, f"slot {slot} to move to {node.address}")
        return time.monotonic() - start

    def migrate_slot(self, slot: int, target: Node, batch: int = 10, pause_s: float = 0.0) -> dict:
        """Moves `slot` to `target` the way `redis-cli --cluster reshard` does: IMPORTING on the
        target, MIGRATING on the source, MIGRATE ... KEYS in batches of `batch` keys (with
        `pause_s` between them), then SETSLOT NODE on the target, the source and the others."""
        source = self.owner(slot)
        start = time.monotonic()
        moved = 0
        with source.client(10) as src, target.client(10) as dst:
            dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source.node_id)
            src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target.node_id)
            while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, batch):
                src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
                moved += len(keys)
                time.sleep(pause_s)
            for node in [target, source, *(n for n in self.live_nodes() if n not in (target, source))]:
                with node.client() as client:
                    if client.info("replication")["role"] == "master":
                        client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target.node_id)
        return {"keys": moved, "seconds": time.monotonic() - start, "source": source, "target": target}

    def catalog_keys(self, catalog: str) -> list[str]:
        """Every key of a catalog (they share one slot, so one node holds them all)."""
        slot = catalog_slot(catalog)
        with self.owner(slot).client() as client:
            return list(client.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1_000_000))

    def delete_catalog(self, catalog: str) -> None:
        """Best effort cleanup of a test's keys, on whichever node holds the slot now."""
        try:
            slot = catalog_slot(catalog)
            with self.owner(slot).client() as client:
                while keys := client.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000):
                    client.delete(*keys)
        except (redis.RedisError, OSError, StopIteration):
            pass

    def catalog_on(self, master: Node, prefix: str = "test") -> str:
        """A catalog name whose slot `master` serves (names are tried in a fixed order)."""
        with master.client() as client:
            mine = {slot for slot, port in _slot_owners(client).items() if port == master.port}
        base = f"{prefix}-{uuid.uuid4().hex[:8]}"
        for i in range(100_000):
            name = f"{base}-{i}"
            if catalog_slot(name) in mine:
                return name
        raise RuntimeError("no catalog name hashes to that master")  # pragma: no cover


def catalog_slot(catalog: str) -> int:
    return key_slot(namespace(catalog).encode())


def _slot_owners(client: redis.Redis) -> dict[int, int]:
    """slot -> port of its master, from CLUSTER SLOTS."""
    owners: dict[int, int] = {}
    for start, end, master, *_replicas in client.execute_command("CLUSTER", "SLOTS"):
        port = int(master[1])
        for slot in range(int(start), int(end) + 1):
            owners[slot] = port
    return owners


def _wait(predicate, deadline: float, what: str, interval_s: float = 0.05) -> None:
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval_s)
    if not predicate():
        raise RuntimeError(f"timed out waiting for {what}")
