"""The front door's cost at scale, against LiteLLM's proxy and the direct path.

    make bench-scale                                   # or:
    python benchmarks/bench_scale.py --rounds 2 --seconds 12
    python benchmarks/bench_scale.py --upstream-only 8001     # just the synthetic upstream
    python benchmarks/bench_scale.py --paths direct service --compare ../before  # A/B

One run, each load measured on the three paths in turn (the first path alternating by
round), in front of the same synthetic OpenAI upstream:

- direct: the upstream itself;
- this service: `gunicorn -c gunicorn_config.py app_production:app`, one worker,
  AVIBE_BACKEND=remote, API keys on, limits high enough never to refuse;
- LiteLLM's proxy (`litellm[proxy]`, installed by this script into its own environment,
  ~/.cache/avito-ai/bench/litellm): one worker, a master key, no database.

The upstream (its own process) streams OpenAI chat chunks, one token each, at a set
inter-token delay (0: as fast as it can write), then `finish_reason`, a usage chunk and
`[DONE]`, as vLLM does. The client (this process, raw asyncio sockets: an HTTP client
library would be the bottleneck first) keeps N streams going for the load's seconds, each
asking for --tokens tokens, and reports delivered tokens/s (tokens received in the window),
time to first token p50/p99, the gap between tokens p99 and errors (an exception, a status
other than 200, a stream without `[DONE]` or short of tokens). Then `/api/health` against a
bare FastAPI app under the same gunicorn worker, with 32 keep-alive connections.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.servers import BIN, ServerProcess, free_port, gunicorn_server  # noqa: E402

LITELLM_VERSION = "1.106.12"  # later releases' [proxy] extra needs litellm-proxy, not on PyPI
LITELLM_ENV = Path.home() / ".cache" / "avito-ai" / "bench" / "litellm"
KEY = "sk-bench-0123456789abcdef"
MODEL = "avibe"

# --- the synthetic upstream -------------------------------------------------------------


def sse_chunk(payload: object) -> bytes:
    """One SSE event as one HTTP/1.1 chunk."""
    data = b"data: " + (payload if isinstance(payload, bytes) else json.dumps(payload).encode())
    data += b"\n\n"
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def chunk(delta: dict[str, str], finish: str | None = None) -> dict[str, object]:
    return {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


FIRST = sse_chunk(chunk({"role": "assistant", "content": ""}))
# Distinct words: LiteLLM ends a stream that repeats one chunk 100 times in a row.
TOKENS = [sse_chunk(chunk({"content": f" w{i}"})) for i in range(16)]
DONE = sse_chunk(b"[DONE]") + b"0\r\n\r\n"
MODELS = json.dumps(
    {"object": "list", "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": "x"}]}
).encode()


class Upstream:
    """A fast OpenAI-compatible upstream over raw asyncio (HTTP/1.1, keep-alive)."""

    def __init__(self) -> None:
        self.delay = 0.02

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                line, *headers = head.decode("latin-1").split("\r\n")
                method, target, _ = line.split(" ", 2)
                length = 0
                for h in headers:
                    if h.lower().startswith("content-length:"):
                        length = int(h.split(":", 1)[1])
                body = await reader.readexactly(length) if length else b""
                if target.startswith("/control"):
                    self.delay = float(target.split("delay=", 1)[1])
                    await self.respond(writer, b"{}")
                elif method == "GET":
                    await self.respond(writer, MODELS)
                else:
                    await self.stream(writer, json.loads(body))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def respond(self, writer: asyncio.StreamWriter, body: bytes) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            + f"content-length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()

    async def stream(self, writer: asyncio.StreamWriter, request: dict[str, object]) -> None:
        tokens = int(request.get("max_tokens") or request.get("max_completion_tokens") or 16)
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n" + FIRST
        )
        delay = self.delay
        for i in range(tokens):
            if delay:
                await asyncio.sleep(delay)
            writer.write(TOKENS[i % 16])
            await writer.drain()
            if not delay:
                await asyncio.sleep(0)
        usage = {"prompt_tokens": 12, "completion_tokens": tokens, "total_tokens": 12 + tokens}
        writer.write(
            sse_chunk(chunk({}, "length"))
            + sse_chunk({**chunk({}), "choices": [], "usage": usage})
            + DONE
        )
        await writer.drain()


async def serve_upstream(port: int) -> None:
    upstream = Upstream()
    server = await asyncio.start_server(upstream.handle, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


# --- the client ---------------------------------------------------------------------------

GRACE = 15.0
# The server's keep-alive (gunicorn_config.py) and the client's idle expiry below it: a
# connection idle longer is not reused (as httpx's pool drops one past keepalive_expiry).
SERVER_KEEPALIVE = float(
    re.search(r"(?m)^keepalive = (\d+)", (ROOT / "gunicorn_config.py").read_text()).group(1)  # type: ignore[union-attr]
)
CLIENT_IDLE_EXPIRY = 4.0
TOKEN_RE = re.compile(rb'"content":\s*"(?!")')


@dataclass
class Load:
    streams: int
    delay: float
    label: str


def cpu_seconds(pid: int) -> float:
    """CPU time of a process and its children (gunicorn's worker, LiteLLM's)."""
    import psutil

    total = 0.0
    root = psutil.Process(pid)
    for proc in (root, *root.children(recursive=True)):
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


@dataclass
class Result:
    cpu: float = 0.0  # the server's CPU seconds during the load (direct: the upstream's)
    tokens: int = 0
    seconds: float = 0.0
    ttft: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    requests: int = 0
    cut: int = 0  # requests still running GRACE seconds after the window, cancelled

    @property
    def rate(self) -> float:
        return self.tokens / self.seconds

    @property
    def cpu_us_per_token(self) -> float:
        """Server CPU per token relayed: the steadier figure on a shared machine (a
        neighbour slows everyone's clock, not the CPU time a token costs)."""
        return self.cpu / max(1, self.tokens) * 1e6

    def pct(self, values: list[float], q: float) -> float:
        if not values:
            return float("nan")
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def read_chunk(reader: asyncio.StreamReader) -> bytes:
    size = int((await reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16)
    data = await reader.readexactly(size + 2)
    return data[:-2]


async def one_stream(
    host: str, port: int, path: str, tokens: int, deadline: float, result: Result
) -> None:
    body = json.dumps(
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Write about the sea."}],
            "max_tokens": tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    ).encode()
    request = (
        f"POST {path} HTTP/1.1\r\nhost: {host}:{port}\r\nauthorization: Bearer {KEY}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    ).encode() + body
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    ended = 0.0  # when this connection's previous answer ended (0: a new connection)
    while time.monotonic() < deadline:
        got = 0
        start = time.monotonic()
        try:
            if writer is not None and ended and time.monotonic() - ended > CLIENT_IDLE_EXPIRY:
                writer.close()  # as httpx's pool does: never reuse one the server may close
                writer = None
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
                ended = 0.0
            assert reader is not None
            start = time.monotonic()
            writer.write(request)
            result.requests += 1
            head = await reader.readuntil(b"\r\n\r\n")
            status = head[9:12]
            if status != b"200":
                size = re.search(rb"(?i)content-length: *(\d+)", head)
                text = await reader.readexactly(int(size.group(1))) if size else b""
                result.errors.append(f"HTTP {status.decode()} {text[:120]!r}")
                writer.close()
                writer = None
                await asyncio.sleep(0.1)
                continue
            last = 0.0
            done = False
            while True:
                data = await read_chunk(reader)
                if not data:
                    break
                now = time.monotonic()
                n = len(TOKEN_RE.findall(data))
                if n:
                    if got == 0:
                        result.ttft.append(now - start)
                    else:
                        result.gaps.append(now - last)
                    last = now
                    got += n
                    if now <= deadline:
                        result.tokens += n
                if b"[DONE]" in data:
                    done = True
            if not done or got != tokens:
                result.errors.append(f"incomplete: {got}/{tokens} tokens, done={done}")
            ended = time.monotonic()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as e:
            # Where it broke tells whose it is: a reused keep-alive connection the server had
            # left idle (a new request racing the server's keep-alive close), or mid-answer.
            where = f"a connection idle {start - ended:.1f} s" if ended else "a new connection"
            result.errors.append(f"{type(e).__name__} after {got} tokens on {where}: {e}"[:200])
            if writer is not None:
                writer.close()
            writer = None
    if writer is not None:
        writer.close()


async def run_load(url: str, path: str, load: Load, tokens: int, seconds: float) -> Result:
    host, port = url.removeprefix("http://").split(":")
    result = Result()
    start = time.monotonic()
    deadline = start + seconds
    tasks = [
        asyncio.create_task(one_stream(host, int(port), path, tokens, deadline, result))
        for _ in range(load.streams)
    ]
    # Streams still running past the window finish their request (so that errors show),
    # for up to GRACE seconds; a path slower than that has its last requests cut, uncounted.
    _, pending = await asyncio.wait(tasks, timeout=seconds + GRACE)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    result.cut = len(pending)
    result.seconds = seconds
    return result


async def get_rate(url: str, path: str, seconds: float, connections: int = 32) -> float:
    """Requests per second of keep-alive GETs (each answer read whole)."""
    host, port = url.removeprefix("http://").split(":")
    count = 0
    deadline = time.monotonic() + seconds

    async def conn() -> None:
        nonlocal count
        reader, writer = await asyncio.open_connection(host, int(port))
        req = f"GET {path} HTTP/1.1\r\nhost: {host}\r\n\r\n".encode()
        while time.monotonic() < deadline:
            writer.write(req)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
            await reader.readexactly(length)
            if head[9:12] == b"200":
                count += 1
        writer.close()

    await asyncio.gather(*(conn() for _ in range(connections)))
    return count / seconds


async def set_delay(url: str, delay: float) -> None:
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"POST /control?delay={delay} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
    await reader.readuntil(b"\r\n\r\n")
    writer.close()


async def keepalive_probe(url: str, idles: list[float]) -> list[str]:
    """For each idle time: one streamed request on a new connection, that long idle, then a
    second request on the same connection. What the second one met: "ok", or the error a
    client sees when its request races the server closing the idle connection."""
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps(
        {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 3}
        | {"stream": True}
    ).encode()
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: {host}\r\nauthorization: Bearer {KEY}"
        f"\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    ).encode() + body

    async def probe(idle: float) -> str:
        reader, writer = await asyncio.open_connection(host, int(port))

        async def one() -> None:
            writer.write(request)
            await reader.readuntil(b"\r\n\r\n")
            while await read_chunk(reader):
                pass

        try:
            await one()
            await asyncio.sleep(idle)
            await one()
            return "ok"
        except (OSError, asyncio.IncompleteReadError) as e:
            return type(e).__name__
        finally:
            writer.close()

    return list(await asyncio.gather(*(probe(idle) for idle in idles)))


# --- the servers ---------------------------------------------------------------------------

BARE_APP = """
from fastapi import FastAPI

app = FastAPI()


@app.get("/api/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}
"""


def litellm_bin() -> Path:
    exe = LITELLM_ENV / "bin" / "litellm"
    version = LITELLM_ENV / "bin" / "python"
    if exe.exists():
        out = subprocess.run(
            [str(version), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        if out == LITELLM_VERSION:
            return exe
    print(f"installing litellm[proxy]=={LITELLM_VERSION} into {LITELLM_ENV}", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(LITELLM_ENV)], check=True)
    subprocess.run(
        [str(LITELLM_ENV / "bin" / "pip"), "install", "-q", f"litellm[proxy]=={LITELLM_VERSION}"],
        check=True,
    )
    return exe


def start_litellm(tmp: Path, upstream: str) -> ServerProcess:
    config = tmp / "litellm.yaml"
    config.write_text(
        json.dumps(
            {
                "model_list": [
                    {
                        "model_name": MODEL,
                        "litellm_params": {
                            "model": f"openai/{MODEL}",
                            "api_base": upstream + "/v1",
                            "api_key": "unused",
                        },
                    }
                ],
                "general_settings": {"master_key": KEY},
                "litellm_settings": {"telemetry": False},
            }
        )
    )
    port = free_port()
    cmd = [str(litellm_bin()), "--config", str(config), "--port", str(port), "--num_workers", "1"]
    env = {"LITELLM_LOG": "ERROR", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}  # no DATABASE_URL
    return ServerProcess(cmd, env, tmp / "litellm.log", port)


def start_service(
    tmp: Path, upstream: str, tree: Path = ROOT, name: str = "service"
) -> ServerProcess:
    """The service of a checkout (`tree`: this one, or --compare's), its own gunicorn_config.py."""
    env = {
        "PYTHONPATH": str(tree / "src"),
        "AVIBE_BACKEND": "remote",
        "AVIBE_UPSTREAM_URLS": upstream,
        "AVIBE_UPSTREAM_MODEL": MODEL,
        "AVISION_BACKEND": "remote",
        "AVISION_UPSTREAM_URLS": upstream,
        "AVISION_UPSTREAM_MODEL": MODEL,
        "API_KEYS": KEY,
        "RATE_LIMIT_PER_MINUTE": "100000000",
        "RATE_LIMIT_PER_HOUR": "1000000000",
        "LOG_LEVEL": "WARNING",
        "MAX_TOKENS_AVIBE": "4096",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp / f"prom-{name}"),
        "WEB_CONCURRENCY": "1",
    }
    (tmp / f"prom-{name}").mkdir()
    if tree == ROOT:
        return gunicorn_server(env, tmp / f"{name}.log", workers=1)
    port = free_port()
    config = str(tree / "gunicorn_config.py")
    cmd = [str(BIN / "gunicorn"), "-c", config, "--chdir", str(tree), "app_production:app"]
    return ServerProcess(cmd, env, tmp / f"{name}.log", port)


def start_bare(tmp: Path) -> ServerProcess:
    (tmp / "bare_app.py").write_text(BARE_APP)
    port = free_port()
    cmd = [
        str(BIN / "gunicorn"), "-w", "1", "-k", "uvicorn_worker.UvicornWorker",
        "-b", f"127.0.0.1:{port}", "--chdir", str(tmp), "--log-level", "warning", "bare_app:app",
    ]  # fmt: skip
    return ServerProcess(cmd, {}, tmp / "bare.log", port)


def wait_answering(url: str, path: str, proc: ServerProcess, timeout: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.proc.poll() is not None:
            raise RuntimeError(proc.output())
        try:
            r = httpx.get(url + path, headers={"authorization": f"Bearer {KEY}"}, timeout=2)
            if r.status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url}{path} not answering:\n{proc.output()[-3000:]}")


# --- the run -------------------------------------------------------------------------------


def fmt(result: Result, direct: Result | None) -> str:
    ratio = f" ({result.rate / direct.rate:.2f}×)" if direct is not None else ""
    return (
        f"{result.rate:,.0f} tok/s{ratio}, TTFT p50 {result.pct(result.ttft, 0.5) * 1e3:.0f} ms "
        f"p99 {result.pct(result.ttft, 0.99) * 1e3:.0f} ms, gap p99 "
        f"{result.pct(result.gaps, 0.99) * 1e3:.0f} ms, errors {len(result.errors)}"
        f"/{result.requests} ({result.cut} cut at the end), "
        f"server CPU {result.cpu_us_per_token:.0f} µs/token"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=12.0, help="per load and path")
    parser.add_argument("--tokens", type=int, default=100, help="per request (50 tok/s loads)")
    parser.add_argument("--saturation-tokens", type=int, default=500)
    parser.add_argument("--paths", nargs="+", default=["direct", "service", "litellm"])
    parser.add_argument("--loads", nargs="+", default=["64", "256", "sat64"])
    parser.add_argument("--no-health", action="store_true")
    parser.add_argument(
        "--compare", type=Path, help="another checkout's service too, as path 'before'"
    )
    parser.add_argument("--upstream-only", type=int, metavar="PORT")
    parser.add_argument(
        "--keepalive-probe",
        action="store_true",
        help="only: requests sent on keep-alive connections idle the server's keep-alive ±0.2 s",
    )
    parser.add_argument("--hold", type=float, default=0, help="keep the servers this long after")
    args = parser.parse_args()
    if args.upstream_only:
        asyncio.run(serve_upstream(args.upstream_only))
        return

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the servers on the way out
    tmp = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    up_port = free_port()
    upstream_proc = ServerProcess(
        [sys.executable, __file__, "--upstream-only", str(up_port)], {}, tmp / "up.log", up_port
    )
    upstream = upstream_proc.url
    servers: dict[str, ServerProcess] = {"upstream": upstream_proc}
    urls = {"direct": upstream}
    try:
        if "service" in args.paths:
            servers["service"] = start_service(tmp, upstream)
            urls["service"] = servers["service"].url
        if args.compare is not None:
            servers["before"] = start_service(tmp, upstream, args.compare.resolve(), "before")
            urls["before"] = servers["before"].url
            args.paths = [*args.paths, "before"]
        if "litellm" in args.paths:
            servers["litellm"] = start_litellm(tmp, upstream)
            urls["litellm"] = servers["litellm"].url
        wait_answering(upstream, "/v1/models", upstream_proc)
        for name in args.paths:
            if name != "direct":
                wait_answering(urls[name], "/v1/models", servers[name])
        if args.keepalive_probe:
            idles = [round(SERVER_KEEPALIVE - 0.2 + 0.01 * i, 2) for i in range(41)]
            asyncio.run(set_delay(upstream, 0.0))
            met = asyncio.run(keepalive_probe(urls["service"], idles))
            for outcome in dict.fromkeys(met):
                seen = [t for t, m in zip(idles, met, strict=True) if m == outcome]
                print(f"idle {min(seen):.2f}-{max(seen):.2f} s: {outcome} ({len(seen)})")
            return
        print(
            f"pids: {', '.join(f'{k} {v.proc.pid}' for k, v in servers.items())}; logs in {tmp}",
            flush=True,
        )
        loads = {
            "64": Load(64, 0.02, "64 streams × 50 tok/s"),
            "256": Load(256, 0.02, "256 streams × 50 tok/s"),
            "sat64": Load(64, 0.0, "saturation, 64 streams"),
        }
        # Warm every path up first (connection pools, imports on first use, JIT-less caches).
        asyncio.run(set_delay(upstream, 0.02))
        for name in args.paths:
            asyncio.run(run_load(urls[name], "/v1/chat/completions", loads["64"], 20, 3.0))
        results: dict[tuple[str, str], list[Result]] = {}
        for rnd in range(args.rounds):
            for key in args.loads:
                load = loads[key]
                asyncio.run(set_delay(upstream, load.delay))
                order = args.paths[rnd % len(args.paths) :] + args.paths[: rnd % len(args.paths)]
                tokens = args.saturation_tokens if load.delay == 0 else args.tokens
                for name in order:
                    pid = servers["upstream" if name == "direct" else name].proc.pid
                    before = cpu_seconds(pid)
                    result = asyncio.run(
                        run_load(urls[name], "/v1/chat/completions", load, tokens, args.seconds)
                    )
                    result.cpu = cpu_seconds(pid) - before
                    results.setdefault((key, name), []).append(result)
                    print(
                        f"round {rnd + 1} {load.label:26} {name:8} {fmt(result, None)}", flush=True
                    )
                    for error in sorted(set(result.errors))[:5]:
                        print(f"    {error}", flush=True)
                    time.sleep(1)
        health: dict[str, list[float]] = {}
        if not args.no_health and "service" in urls:
            servers["bare"] = start_bare(tmp)
            wait_answering(servers["bare"].url, "/api/health", servers["bare"])
            for _ in range(args.rounds * 2):
                for name, url in (("bare", servers["bare"].url), ("service", urls["service"])):
                    before = cpu_seconds(servers[name].proc.pid)
                    rate = asyncio.run(get_rate(url, "/api/health", args.seconds / 2))
                    cpu = cpu_seconds(servers[name].proc.pid) - before
                    health.setdefault(name, []).append(rate)
                    health.setdefault(f"{name} cpu", []).append(
                        cpu / max(1.0, rate * args.seconds / 2) * 1e6
                    )
        report(args, loads, results, health)
        if args.hold:
            time.sleep(args.hold)
    finally:
        for srv in servers.values():
            srv.stop()
    for name in ("service", "litellm"):
        if name in servers:
            text = servers[name].log_path.read_text(errors="replace")
            errors = [ln for ln in text.splitlines() if "error" in ln.lower()]
            print(f"{name} log: {len(text.splitlines())} lines, {len(errors)} with 'error'")
            for line in errors[:5]:
                print("   ", line[:300])


def report(
    args: argparse.Namespace,
    loads: dict[str, Load],
    results: dict[tuple[str, str], list[Result]],
    health: dict[str, list[float]],
) -> None:
    print(
        f"\n{args.rounds} rounds, {args.seconds:.0f} s a load; {args.tokens} tokens a request "
        f"({args.saturation_tokens} at saturation); this machine: {os.cpu_count()} cores\n"
    )
    print(
        "| load | path | tok/s (each round) | × direct | TTFT p50 | TTFT p99 | gap p99 "
        "| errors | server CPU µs/token |"
    )
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for key in args.loads:
        direct = results.get((key, "direct"))
        for name in args.paths:
            rs = results[(key, name)]
            rates = " / ".join(f"{r.rate:,.0f}" for r in rs)
            ratio = (
                statistics.median(r.rate / d.rate for r, d in zip(rs, direct, strict=True))
                if direct
                else float("nan")
            )
            ttft50 = statistics.median(r.pct(r.ttft, 0.5) for r in rs) * 1e3
            ttft99 = statistics.median(r.pct(r.ttft, 0.99) for r in rs) * 1e3
            gap99 = statistics.median(r.pct(r.gaps, 0.99) for r in rs) * 1e3
            errors = sum(len(r.errors) for r in rs)
            requests = sum(r.requests for r in rs)
            cpu = statistics.median(r.cpu_us_per_token for r in rs)
            print(
                f"| {loads[key].label} | {name} | {rates} | {ratio:.2f} | {ttft50:.0f} ms "
                f"| {ttft99:.0f} ms | {gap99:.0f} ms | {errors} of {requests} | {cpu:.0f} |"
            )
    if health:
        ratio = statistics.median(
            s / b for s, b in zip(health["service"], health["bare"], strict=True)
        )
        print(
            f"\n/api/health: service {statistics.median(health['service']):,.0f} req/s, bare "
            f"FastAPI {statistics.median(health['bare']):,.0f} req/s: {ratio:.2f}× (32 "
            "keep-alive connections, paired by round)"
        )
        by_cpu = statistics.median(
            b / s for s, b in zip(health["service cpu"], health["bare cpu"], strict=True)
        )
        print(
            f"/api/health by server CPU per request: service "
            f"{statistics.median(health['service cpu']):.0f} µs, bare "
            f"{statistics.median(health['bare cpu']):.0f} µs: {by_cpu:.2f}×"
        )


if __name__ == "__main__":
    main()
