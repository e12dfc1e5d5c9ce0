"""OpenVINO's own grammar compiler, asked before a grammar reaches the shared step.

OpenVINO GenAI compiles a request's grammar inside `ContinuousBatchingPipeline.step()`, with
the GIL held (the whole process stops: no event loop, no liveness), and with the xgrammar it
bundles, older than the service's. A grammar that parser refuses raises inside the step,
outside any request, and leaves the pipeline unusable; one that costs minutes to compile
freezes the process for minutes. So no grammar reaches a serving pipeline before this probe
accepted it:

* the probe is a process of its own (`python -m avito_ai.engines.openvino.probe`) holding a
  pipeline on the embedded SmolLM2 GGUF (every install has it), started on the first grammar;
* it compiles the grammar exactly as a serving step would (a one-token request through its
  own pipeline) and says how long that took, or what OpenVINO's parser said;
* past its time limit it is killed and the grammar refused; it is started again for the
  next one. Verdicts are cached per grammar, so a repeated schema costs a lookup.

The limit is the time a step may stop the serving process: a grammar that compiled in at
most `STEP_LIMIT_S` here, scaled by the vocabulary (compiling walks every token: a model with
three times the probe's vocabulary gets a third of the time), compiles in about that in the
serving step, once (OpenVINO caches compiled grammars).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import sys
import time
import weakref
from collections import OrderedDict
from pathlib import Path
from typing import Any

from avito_ai.errors import ModelUnavailable, Overloaded, ValidationFailed

log = logging.getLogger(__name__)

# The most seconds a grammar may compile in the probe (for the probe's vocabulary): the
# serving step then stops the process about that long, once (OpenVINO caches it). Real
# schemas and forced tool calls took 0.3 to 5.4 s on a busy 2-core machine (where they
# compiled in the step before, with no bound); the grammars that froze the process take
# minutes.
STEP_LIMIT_S = 15.0
START_TIMEOUT_S = 180.0  # loading the probe's model on a busy machine
MAX_WAITING = 32  # grammar checks queued for the probe; past it, 503
CACHE_SIZE = 1024
POLL_S = 0.25  # how often a compile's time is read while it runs
# Wall seconds (in limits, at least a minute) after which a compile that used little CPU is
# given up: the machine is too busy to say (503, asked again next time), not the grammar
# too complex.
STARVED_FACTOR = 6.0
STARVED_MIN_S = 60.0
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_LINE_LIMIT = 1 << 24  # the probe's answers are short; requests may be large


class GrammarProbe:
    """One probe process, checked one grammar at a time (asyncio, on the event loop)."""

    def __init__(self, model_path: str, *, limit_s: float = STEP_LIMIT_S) -> None:
        self._model_path = model_path
        self._limit_s = limit_s
        self._process: asyncio.subprocess.Process | None = None
        self._vocab = 0
        self._lock = asyncio.Lock()
        self._waiting = 0
        # sha256 of the grammar -> None (accepted) or the refusal's message
        self._verdicts: OrderedDict[str, str | None] = OrderedDict()

    async def check(self, grammar: str, vocab_size: int, param: str) -> None:
        """Accept `grammar` for an engine whose vocabulary has `vocab_size` tokens, or raise
        ValidationFailed (naming `param`) with OpenVINO's reason."""
        key = hashlib.sha256(f"{vocab_size}\0{grammar}".encode()).hexdigest()
        if key in self._verdicts:
            self._verdicts.move_to_end(key)
            refusal = self._verdicts[key]
            if refusal is not None:
                raise ValidationFailed(refusal, param=param)
            return
        if self._waiting >= MAX_WAITING:
            raise Overloaded("Too many structured-output requests are waiting to be checked")
        self._waiting += 1
        try:
            async with self._lock:
                refusal = await self._verdict(grammar, vocab_size)
        finally:
            self._waiting -= 1
        self._verdicts[key] = refusal
        if len(self._verdicts) > CACHE_SIZE:
            self._verdicts.popitem(last=False)
        if refusal is not None:
            raise ValidationFailed(refusal, param=param)

    def limit_for(self, vocab_size: int) -> float:
        """The probe's time limit for an engine with `vocab_size` tokens."""
        if not self._vocab or not vocab_size:
            return self._limit_s
        return self._limit_s * min(1.0, self._vocab / vocab_size)

    async def _verdict(self, grammar: str, vocab_size: int) -> str | None:
        """OpenVINO's verdict on `grammar`. Its cost is the compile's time on an idle
        machine, which is at most its CPU time (and at most its wall time): the probe runs
        at a low priority, so on a busy machine its wall time is the machine's load, not the
        grammar's. A grammar past twice the limit is stopped there, by the same measure."""
        process = await self._started()
        assert process.stdin is not None and process.stdout is not None
        limit = self.limit_for(vocab_size)
        started = time.monotonic()
        base_cpu = _cpu_seconds(process.pid)
        process.stdin.write(json.dumps({"grammar": grammar}).encode() + b"\n")
        read: asyncio.Future[bytes] | None = None
        cost = 0.0
        try:
            await process.stdin.drain()
            read = asyncio.ensure_future(process.stdout.readline())
            while not read.done():
                await asyncio.wait({read}, timeout=POLL_S)
                wall = time.monotonic() - started
                cost = min(wall, _cpu_seconds(process.pid) - base_cpu)
                if read.done() or cost > limit * 2 + 2.0:  # the probe's own slack
                    break
                if wall > max(limit * STARVED_FACTOR, STARVED_MIN_S):
                    # Hardly any CPU in all that time: the machine is busy, not the grammar
                    # too complex. Not cached: the next request asks again.
                    self._discard()
                    raise Overloaded(
                        "Structured output's grammar check is short of CPU on this busy "
                        "server; retry shortly"
                    )
            line = read.result() if read.done() else b""
            if not line and read.done():  # the probe ended by itself: its exit status
                await process.wait()
        except BaseException:
            # Cancelled (the client left, its deadline passed) with the grammar in the probe:
            # its answer would be read as the next grammar's. A fresh probe next time.
            self._discard()
            raise
        finally:
            if read is not None and not read.done():
                read.cancel()
        if not line:  # past the limit (or the probe died): it is started afresh next time
            exceeded = process.returncode is None
            await self.close()
            log.warning(
                "grammar probe: no verdict in %.1f s (%.1f s of compiling); the probe is restarted",
                time.monotonic() - started,
                cost,
            )
            if not exceeded:
                return (
                    "OpenVINO's grammar compiler failed on this grammar (exit "
                    f"{process.returncode}); "
                    "simplify it, or use another engine"
                )
            return (
                "The grammar is too complex: OpenVINO compiles it inside the step every "
                f"request shares, and it took longer than {limit:.2g} s to compile; "
                "simplify it (fewer or shorter bounded repetitions, smaller patterns), or "
                "use another engine"
            )
        answer = json.loads(line)
        if "error" in answer:  # its pipeline is unusable now: a fresh probe next time
            await self.close()
            return f"OpenVINO cannot use this grammar: {answer['error']}"
        cost = min(float(answer["seconds"]), float(answer["cpu"]))
        if cost > 1.0:
            log.info(
                "grammar probe: compiled in %.1f s (%.1f s of CPU; at most %.2g s)",
                float(answer["seconds"]),
                float(answer["cpu"]),
                limit,
            )
        if cost > limit:
            return (
                "The grammar is too complex: OpenVINO compiles it inside the step every "
                f"request shares, and it took {cost:.2g} s to compile "
                f"(at most {limit:.2g} s); simplify it, or use another engine"
            )
        return None

    def _discard(self) -> None:
        """Kill the probe now, without waiting (its exit is reaped by asyncio)."""
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()

    async def _started(self) -> asyncio.subprocess.Process:
        if self._process is not None and self._process.returncode is None:
            return self._process
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "avito_ai.engines.openvino.probe",
            self._model_path,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=_LINE_LIMIT,
        )
        assert process.stdout is not None
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                line = await process.stdout.readline()
            ready = json.loads(line) if line else {}
        except (TimeoutError, ValueError):
            ready = {}
        if "vocab" not in ready:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            raise ModelUnavailable(
                "Structured output is unavailable: OpenVINO's grammar checker did not "
                f"start ({ready.get('error', 'no answer')}); the service log has more"
            )
        self._vocab = int(ready["vocab"])
        self._process = process
        log.info("grammar probe ready: pid %d, %d tokens", process.pid, self._vocab)
        return process

    async def close(self) -> None:
        """Kill the probe and wait for its exit."""
        process = self._process
        self._discard()
        if process is not None:
            await process.wait()


# One probe per event loop (its pipes belong to the loop that started it): a server has one.
_PROBES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, GrammarProbe] = (
    weakref.WeakKeyDictionary()
)


def shared_probe(cache_dir: Path, limit_s: float = STEP_LIMIT_S) -> GrammarProbe:
    """The process's probe (one for both OpenVINO engines), on the embedded model (a copy
    in `cache_dir`, MODEL_CACHE_DIR, where this user cannot write the installed one), with
    OPENVINO_GRAMMAR_LIMIT."""
    loop = asyncio.get_running_loop()
    probe = _PROBES.get(loop)
    if probe is None:
        from avito_ai.engines.models import embedded_gguf_path
        from avito_ai.engines.openvino.loading import openable_gguf

        path = str(openable_gguf(embedded_gguf_path(), cache_dir))
        probe = _PROBES[loop] = GrammarProbe(path, limit_s=limit_s)
    return probe


# ---------------------------------------------------------------------- the probe itself


def _cpu_seconds(pid: int) -> float:
    """A process's CPU time (all its threads, user and system); 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime


def _clean(message: str) -> str:
    """OpenVINO's first line, without the build's paths and the timestamp."""
    first = (message.strip().splitlines() or ["unknown error"])[0]
    return re.sub(r"^\[[\d:]+\] \S+?\.cc:\d+: ", "", first)[:500]


def _new_pipeline(path: str) -> Any:
    import openvino_genai as genai

    scheduler = genai.SchedulerConfig()
    scheduler.cache_size = 1
    scheduler.max_num_seqs = 1
    return genai.ContinuousBatchingPipeline(path, scheduler, "CPU", {})


def _compile_seconds(pipe: Any, prompt: Any, grammar: str) -> dict[str, float]:
    """Run a one-token request under `grammar`, what a serving step does with it: its wall
    time and the CPU time it took (every thread of this process)."""
    import openvino_genai as genai

    config = genai.GenerationConfig()
    config.max_new_tokens = 1
    config.structured_output_config = genai.StructuredOutputConfig(grammar=grammar)
    started, cpu = time.monotonic(), _cpu_seconds(os.getpid())
    handle = pipe.add_request(0, prompt, config)  # (a dropped handle drops the request)
    while handle.get_status() == genai.GenerationStatus.RUNNING:
        pipe.step()
    return {"seconds": time.monotonic() - started, "cpu": _cpu_seconds(os.getpid()) - cpu}


def main(model_path: str) -> None:
    out = sys.stdout
    # Background work: the serving process (its event loop, its step) comes first for the
    # CPU; xgrammar compiles on every core it finds.
    os.nice(10)
    try:
        pipe = _new_pipeline(model_path)
        prompt = pipe.get_tokenizer().encode("Hi").input_ids
        vocab = len(pipe.get_tokenizer().get_vocab())
        _compile_seconds(pipe, prompt, 'root ::= "a"')  # the compiler's one-time set-up
    except Exception as exc:  # the parent says it; the probe stops
        out.write(json.dumps({"error": _clean(str(exc))}) + "\n")
        out.flush()
        return
    out.write(json.dumps({"vocab": vocab}) + "\n")
    out.flush()
    for line in sys.stdin:
        grammar = json.loads(line)["grammar"]
        try:
            answer: dict[str, Any] = _compile_seconds(pipe, prompt, grammar)
        except Exception as exc:  # a failed step leaves the pipeline unusable: say, stop
            out.write(json.dumps({"error": _clean(str(exc))}) + "\n")
            out.flush()
            return
        out.write(json.dumps(answer) + "\n")
        out.flush()


if __name__ == "__main__":
    main(sys.argv[1])
