"""Request limits and token budgets on Redis that fails over: a Redis Cluster (3 primaries,
3 replicas) and a primary watched by Sentinel (2 replicas, 3 sentinels), each started for
real, once for the module. Per topology, two services (RATE_LIMIT_FAIL_MODE open and
closed) take load while the primary holding the limits is killed: every request is
answered (open: served; closed: served or 503 `rate_limit_unavailable`), and once the
replica has taken over the limits and budgets hold again (docs/redis.md)."""

from __future__ import annotations

import random
import re
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
from limits import RateLimitItemPerMinute

from tests.servers import ServerProcess, dev_server, free_port
from tests.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

PER_MINUTE = 10
TOKENS_PER_MINUTE = 30
SERVICE = "avito"  # the Sentinel service name


def wait_for(what: str, check: Callable[[], object], timeout: float = 60) -> None:
    wait_until(check, timeout, what, interval=0.1)


def answers(port: int) -> bool:
    try:
        return bool(redis.Redis(port=port, socket_timeout=1).ping())
    except redis.RedisError:
        return False


@dataclass
class Node:
    """One redis-server process (a primary, a replica or a sentinel)."""

    port: int
    args: list[str]
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.workdir / "server.log", "ab") as log:  # (the child keeps its copy)
            self.proc = subprocess.Popen(
                ["redis-server", *self.args], cwd=self.workdir, stdout=log, stderr=log
            )
        wait_for(f"redis-server on {self.port}", lambda: answers(self.port), 20)

    def kill(self) -> None:
        """As a crash: no shutdown, nothing saved."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2, decode_responses=True)


def server_args(port: int, *extra: str) -> list[str]:
    return ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", *extra]


@dataclass
class Topology:
    uri: str
    nodes: list[Node]
    primary_of: Callable[[str], Node]  # the primary holding a key now
    failed_over: Callable[[Node], bool]  # has a replica replaced this (dead) primary?


@contextmanager
def stopping(nodes: list[Node]) -> Iterator[None]:
    try:
        yield
    finally:
        for node in nodes:
            node.kill()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.fail("redis-server is not installed: run `make test`, which installs it")
    tmp = tmp_path_factory.mktemp("cluster")
    nodes = []
    for _ in range(6):
        port = free_port()
        config = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
        config += ["--cluster-port", str(free_port())]  # (not port + 10000: may be taken)
        # Failover within seconds; a replica may take over however stale (the default
        # factor would refuse one that lost its link too long ago).
        timing = ["--cluster-node-timeout", "1000", "--cluster-replica-validity-factor", "0"]
        nodes.append(Node(port, server_args(port, *config, *timing), tmp / str(port)))
    with stopping(nodes):
        for node in nodes:
            node.start()
        addresses = [f"127.0.0.1:{node.port}" for node in nodes]
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *addresses,
                "--cluster-replicas",
                "1",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
        )
        by_port = {node.port: node for node in nodes}

        def state_ok() -> bool:
            return all(
                node.client().execute_command("CLUSTER INFO")["cluster_state"] == "ok"
                for node in nodes
                if node.proc and node.proc.poll() is None
            )

        def owners() -> list[tuple[int, int, int]]:
            """(first slot, last slot, primary's port), as a live node sees the cluster."""
            live = next(node for node in nodes if node.proc and node.proc.poll() is None)
            slots = live.client().execute_command("CLUSTER SLOTS")
            return [(int(lo), int(hi), int(primary[1])) for lo, hi, primary, *_ in slots]

        def primary_of(key: str) -> Node:
            live = next(node for node in nodes if node.proc and node.proc.poll() is None)
            slot = int(live.client().execute_command("CLUSTER KEYSLOT", key))
            return next(by_port[port] for lo, hi, port in owners() if lo <= slot <= hi)

        def failed_over(dead: Node) -> bool:
            return dead.port not in {port for *_, port in owners()} and state_ok()

        wait_for("the cluster to agree", lambda: state_ok() and len({p for *_, p in owners()}) == 3)
        uri = "redis+cluster://" + ",".join(addresses[:2])  # the rest are discovered
        yield Topology(uri, nodes, primary_of, failed_over)


def sentinel_conf(tmp: Path, port: int, primary: int) -> Path:
    path = tmp / f"sentinel-{port}.conf"  # (Sentinel rewrites its file: one each)
    path.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp}\n"
        f"sentinel monitor {SERVICE} 127.0.0.1 {primary} 2\n"
        f"sentinel down-after-milliseconds {SERVICE} 1000\n"
        f"sentinel failover-timeout {SERVICE} 5000\n"
    )
    return path


@pytest.fixture(scope="module")
def sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed: run `make test`, which installs it")
    tmp = tmp_path_factory.mktemp("sentinel")
    primary_port = free_port()
    primary = Node(primary_port, server_args(primary_port), tmp / str(primary_port))
    replicas = []
    for _ in range(2):
        port = free_port()
        args = server_args(port, "--replicaof", "127.0.0.1", str(primary_port))
        replicas.append(Node(port, args, tmp / str(port)))
    sentinels = []
    for _ in range(3):
        port = free_port()
        conf = sentinel_conf(tmp, port, primary_port)
        sentinels.append(Node(port, [str(conf), "--sentinel"], tmp / f"s{port}"))
    servers = [primary, *replicas]
    with stopping([*sentinels, *servers]):
        for node in [*servers, *sentinels]:
            node.start()

        def master_port() -> int:
            _host, port = (
                sentinels[0].client().execute_command("SENTINEL GET-MASTER-ADDR-BY-NAME", SERVICE)
            )
            return int(port)

        def settled() -> bool:
            for node in sentinels:
                client = node.client()
                if len(client.execute_command("SENTINEL REPLICAS", SERVICE)) != 2:
                    return False
                if len(client.execute_command("SENTINEL SENTINELS", SERVICE)) != 2:
                    return False
            return all(
                node.client().info("replication").get("master_link_status") == "up"
                for node in replicas
            )

        wait_for("the sentinels to see the replicas and each other", settled)
        by_port = {node.port: node for node in servers}

        def failed_over(dead: Node) -> bool:
            port = master_port()
            return (
                port != dead.port and by_port[port].client().info("replication")["role"] == "master"
            )

        hosts = ",".join(f"127.0.0.1:{node.port}" for node in sentinels)
        yield Topology(
            f"redis+sentinel://{hosts}/{SERVICE}",
            servers,
            lambda key: by_port[master_port()],
            failed_over,
        )


@contextmanager
def services(uri: str, tmp: Path) -> Iterator[dict[str, ServerProcess]]:
    """One service per RATE_LIMIT_FAIL_MODE, on the same storage."""
    env = {
        "AVIBE_BACKEND": "fake",
        "RATE_LIMIT_STORAGE_URI": uri,
        "RATE_LIMIT_PER_MINUTE": str(PER_MINUTE),
        "RATE_LIMIT_PER_HOUR": "100000",
        "TOKENS_PER_MINUTE": str(TOKENS_PER_MINUTE),
        "FORWARDED_ALLOW_IPS": "127.0.0.1",  # the test's X-Forwarded-For names the client
    }
    with ExitStack() as stack:
        found = {}
        for mode in ("open", "closed"):
            srv = dev_server({**env, "RATE_LIMIT_FAIL_MODE": mode}, tmp / f"{mode}.log")
            stack.callback(srv.stop)
            found[mode] = srv
        for srv in found.values():
            srv.wait_ready(60)
        yield found


def address() -> str:
    """A client nobody has used (its own limits and budgets)."""
    return f"10.{random.randrange(256)}.{random.randrange(256)}.{random.randrange(1, 255)}"


def minute_key(client: str) -> str:
    """Where `limits` counts a client's minute on Redis (its prefix and key layout)."""
    return "LIMITS:" + RateLimitItemPerMinute(PER_MINUTE).key_for(f"ip:{client}")


def budget_key(client: str) -> str:
    return f"avito-tokens/{{ip:{client}}}/minute"  # (services/budgets.py)


def health(srv: ServerProcess, client: str) -> httpx.Response:
    headers = {"X-Forwarded-For": client}
    return httpx.get(srv.url + "/api/health", headers=headers, timeout=10)


def generate(srv: ServerProcess, client: str) -> httpx.Response:
    body = {"prompt": "one two three", "max_tokens": 3}
    headers = {"X-Forwarded-For": client}
    return httpx.post(srv.url + "/api/v1/text/generate", json=body, headers=headers, timeout=10)


def storage_errors(srv: ServerProcess) -> float:
    text = httpx.get(srv.url + "/metrics", timeout=10).text
    match = re.search(r"^avito_rate_limit_storage_errors_total (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


Answer = httpx.Response | httpx.HTTPError


class Load:
    """Requests from fresh clients (each under its limits), one thread per service,
    until stopped: every answer (or failure to get one) kept."""

    def __init__(self, servers: dict[str, ServerProcess]) -> None:
        self.answers: dict[str, list[Answer]] = {mode: [] for mode in servers}
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self._run, args=(mode, srv), daemon=True)
            for mode, srv in servers.items()
        ]

    def _run(self, mode: str, srv: ServerProcess) -> None:
        while not self.stop.is_set():
            client = address()
            for ask in (health, generate):
                try:
                    self.answers[mode].append(ask(srv, client))
                except httpx.HTTPError as exc:  # (asserted on below: none expected)
                    self.answers[mode].append(exc)

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)

    def wait_for(self, count: int) -> None:
        wait_for(f"{count} answers", lambda: all(len(a) >= count for a in self.answers.values()))


def limited_again(srv: ServerProcess) -> bool:
    """The storage answers again: fresh clients' requests are counted (a `RateLimit`
    header), three in a row."""
    return all("RateLimit" in health(srv, address()).headers for _ in range(3))


def clients_on(topology: Topology, primary: Node) -> Iterator[str]:
    """Fresh clients whose request counts and token budget both live on `primary`."""
    while True:
        client = address()
        holder = topology.primary_of(minute_key(client))
        if holder is primary and topology.primary_of(budget_key(client)) is primary:
            yield client


def failover_under_load(topology: Topology, tmp: Path) -> None:
    victim = topology.primary_of(minute_key(address()))
    client = next(clients_on(topology, victim))
    with services(topology.uri, tmp) as servers:
        assert health(servers["open"], client).status_code == 200
        assert victim.client().exists(minute_key(client))  # counted where expected
        errors_before = {mode: storage_errors(srv) for mode, srv in servers.items()}
        with Load(servers) as load:
            load.wait_for(10)
            victim.kill()
            wait_for("a replica to take over", lambda: topology.failed_over(victim))
            for srv in servers.values():
                wait_for("the limits to answer again", lambda srv=srv: limited_again(srv))
            load.wait_for(max(len(a) for a in load.answers.values()) + 10)
        # Every request was answered: served without limits (open) or refused with 503
        # (closed) while the primary was gone.
        failures = [a for mode in load.answers.values() for a in mode if isinstance(a, Exception)]
        assert not failures
        assert {a.status_code for a in load.answers["open"] if isinstance(a, httpx.Response)} == {
            200
        }
        refused = [
            a
            for a in load.answers["closed"]
            if isinstance(a, httpx.Response) and a.status_code != 200
        ]
        assert refused, "the closed service never saw the outage"
        for r in refused:
            assert r.status_code == 503, r.text
            assert r.json()["error"] == "rate_limit_unavailable"
            assert r.headers["Retry-After"]
        for mode, srv in servers.items():
            assert storage_errors(srv) > errors_before[mode], mode
        # The limits hold again, on the primary that took over the killed one's keys: a
        # burst over the limit is refused, and a token budget runs out.
        successor = topology.primary_of(minute_key(client))
        assert successor is not victim
        fresh = clients_on(topology, successor)
        for srv in servers.values():
            burster = next(fresh)
            burst = [health(srv, burster).status_code for _ in range(PER_MINUTE + 3)]
            assert burst == [200] * PER_MINUTE + [429] * 3
            spender = next(fresh)
            spent = [generate(srv, spender) for _ in range(PER_MINUTE)]
            codes = [r.status_code for r in spent]
            assert 429 in codes and set(codes) == {200, 429}, codes
            refusal = next(r for r in spent if r.status_code == 429)
            assert f"{TOKENS_PER_MINUTE} tokens per minute" in refusal.json()["message"]
            used = sum(
                r.json()["data"]["input_tokens"] + r.json()["data"]["generated_tokens"]
                for r in spent
                if r.status_code == 200
            )
            assert used <= TOKENS_PER_MINUTE


def test_redis_cluster_primary_killed_under_load(cluster: Topology, tmp_path: Path) -> None:
    failover_under_load(cluster, tmp_path)


def test_redis_sentinel_primary_killed_under_load(sentinel: Topology, tmp_path: Path) -> None:
    failover_under_load(sentinel, tmp_path)
