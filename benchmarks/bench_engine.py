"""In-process throughput of the A-Vibe engine against the model's own `generate()`.

    python benchmarks/bench_engine.py                        # embedded SmolLM2, DTYPE=auto
    python benchmarks/bench_engine.py --dtype float32 --concurrency 1 4 16
    python benchmarks/bench_engine.py --model /path/to/folder
    python benchmarks/bench_engine.py --qwen3-8b-random --device cuda   # GPU, no download
    python benchmarks/bench_engine.py --detokenizers          # DecodeStream against the window
    python benchmarks/bench_engine.py --save-qwen3-random 0.6b /tmp/q06   # a folder to serve

Every request generates exactly `--tokens` tokens (EOS ignored), greedy, so the numbers
compare like with like. The baseline is transformers' `generate()` on one stream (prefill
included, as in the engine's figures). `--qwen3-8b-random` builds Qwen3-8B's architecture
from its config with random bf16 weights (~16 GB): it measures speed only.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.tiny_models, for --qwen3-8b-random's tokenizer

from avito_ai.config import Settings  # noqa: E402
from avito_ai.engines.base import ChatMessage, GenerationRequest, SamplingParams  # noqa: E402
from avito_ai.engines.transformers.text import TransformersTextEngine  # noqa: E402

PROMPTS = [
    "What is the capital of France?",
    "Write a short poem about the sea.",
    "Give me three tips for selling a bicycle online.",
    "Explain why the sky is blue.",
]


# Published Qwen3 configs (layer shapes only; the weights are random).
QWEN3_SHAPES: dict[str, dict[str, Any]] = {
    "8b": {
        "hidden_size": 4096,
        "intermediate_size": 12288,
        "num_hidden_layers": 36,
        "num_attention_heads": 32,
        "tie_word_embeddings": False,
    },
    "0.6b": {
        "hidden_size": 1024,
        "intermediate_size": 3072,
        "num_hidden_layers": 28,
        "num_attention_heads": 16,
        "tie_word_embeddings": True,
    },
}


def build_qwen3_random(device: str, size: str = "8b") -> tuple[Any, Any]:
    """Qwen3's architecture at `size` (its published config values) with random bf16 weights.

    The tokenizer is the tests' small one; the output rows of the ids it does not have are
    zeroed, so greedy decoding always picks a token that decodes to text (random rows give
    positive logits) while every matrix keeps its published shape and cost.
    """
    from tests.tiny_models import QWEN3_CHAT_TEMPLATE, train_tokenizer
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        vocab_size=151936,
        num_key_value_heads=8,
        head_dim=128,
        max_position_embeddings=40960,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        rms_norm_eps=1e-6,
        eos_token_id=151645,
        pad_token_id=151643,
        **QWEN3_SHAPES[size],
    )
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = Qwen3ForCausalLM(config).eval()  # type: ignore[no-untyped-call]
    finally:
        torch.set_default_dtype(torch.float32)
    tokens = train_tokenizer()
    with torch.no_grad():
        model.get_output_embeddings().weight[tokens.get_vocab_size(with_added_tokens=True) :] = 0
    tokenizer = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tokens,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=QWEN3_CHAT_TEMPLATE,
    )
    return model, tokenizer


def save_qwen3_random(folder: Path, size: str) -> None:
    """A model folder that AVIBE_MODEL can name (for benchmarks through HTTP)."""
    model, tokenizer = build_qwen3_random("cuda" if torch.cuda.is_available() else "cpu", size)
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))


async def start_in_memory(engine: TransformersTextEngine, model: Any, tokenizer: Any) -> None:
    """Bench-only: serve an already built model (the engine's own loading path is skipped)."""
    from avito_ai.engines.base import EngineState
    from avito_ai.engines.transformers.device import resolve_placement
    from avito_ai.engines.transformers.loading import LoadedTextModel, TextModelSource
    from avito_ai.engines.transformers.scheduler import warm_up

    engine._placement = resolve_placement(engine._local.device, engine._local.dtype)
    engine._model_id = "Qwen3-8B architecture, random weights"
    source = TextModelSource("folder", "-", engine._model_id)
    warm_up(model, engine._placement.device)
    engine._install(LoadedTextModel(model, tokenizer, source, 0.0))
    engine._state = EngineState.READY


def baseline(engine: TransformersTextEngine, tokens: int, repeats: int) -> float:
    """Single-stream tokens/s of model.generate() on the engine's own model."""
    loaded = engine._loaded
    assert loaded is not None
    model = loaded.model
    device = model.device
    spec = engine.build_spec(request(PROMPTS[0], tokens))
    ids = torch.tensor([spec.prompt_ids], device=device)
    mask = torch.ones_like(ids)
    kwargs: dict[str, Any] = {
        "max_new_tokens": tokens,
        "min_new_tokens": tokens,
        "do_sample": False,
        "pad_token_id": loaded.tokenizer.pad_token_id or 0,
    }
    with torch.inference_mode():
        model.generate(ids, attention_mask=mask, **{**kwargs, "max_new_tokens": 4})
        best = float("inf")
        for _ in range(repeats):
            sync(device)
            began = time.perf_counter()
            model.generate(ids, attention_mask=mask, **kwargs)
            sync(device)
            best = min(best, time.perf_counter() - began)
    return tokens / best


def sync(device: Any) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def request(prompt: str, tokens: int) -> GenerationRequest:
    return GenerationRequest(
        request_id="bench",
        sampling=SamplingParams(max_tokens=tokens),
        messages=[ChatMessage.text("user", prompt)],
    )


async def engine_run(engine: TransformersTextEngine, clients: int, tokens: int) -> float:
    """Aggregate tokens/s with `clients` concurrent requests (wall time of the slowest)."""
    scheduler = engine.scheduler
    assert scheduler is not None

    async def one(i: int) -> int:
        spec = engine.build_spec(request(PROMPTS[i % len(PROMPTS)], tokens))
        spec = dataclasses.replace(spec, ignore_eos=True)
        generated = 0
        async for chunk in scheduler.stream(spec):
            if chunk.is_final:
                generated = chunk.generated_tokens or 0
        return generated

    began = time.perf_counter()
    counts = await asyncio.gather(*(one(i) for i in range(clients)))
    elapsed = time.perf_counter() - began
    assert all(c == tokens for c in counts), counts
    return sum(counts) / elapsed


def detokenizer_factories(engine: TransformersTextEngine) -> dict[str, Any]:
    """The detokenizer the engine picked (DecodeStream for fast tokenizers) and the fallback."""
    import copy

    from avito_ai.engines.textstream import IncrementalDetokenizer

    scheduler = engine.scheduler
    assert scheduler is not None and engine._loaded is not None
    tokenizer = copy.deepcopy(engine._loaded.tokenizer)

    def decode(ids: list[int]) -> str:
        text: str = tokenizer.decode(
            ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )
        return text

    return {
        "DecodeStream": scheduler.new_detokenizer,
        "window (fallback)": lambda: IncrementalDetokenizer(decode),
    }


def detokenizer_cost(factories: dict[str, Any], tokenizer: Any, tokens: int = 4000) -> None:
    """Microseconds per token of each detokenizer alone, on mixed Russian/English text."""
    text = (
        "Продаю велосипед в хорошем состоянии, торг уместен. Bicycle for sale, barely used! "
        "Доставка по Москве 🚲 — звоните после 18:00. "
    )
    ids: list[int] = []
    while len(ids) < tokens:
        ids += list(tokenizer(text, add_special_tokens=False)["input_ids"])
    ids = ids[:tokens]
    for name, make in factories.items():
        best = float("inf")
        for _ in range(3):
            detok = make()
            began = time.perf_counter()
            for token in ids:
                detok.push(token)
            detok.flush()
            best = min(best, time.perf_counter() - began)
        print(f"{name:<28}{best / len(ids) * 1e6:>10.1f} us/token alone")


async def compare_detokenizers(engine: TransformersTextEngine, args: argparse.Namespace) -> None:
    """The engine with each detokenizer, alternating run by run; best of --repeats."""
    factories = detokenizer_factories(engine)
    assert engine._loaded is not None and engine.scheduler is not None
    detokenizer_cost(factories, engine._loaded.tokenizer)
    await engine_run(engine, 1, 8)  # warm the engine path
    rates: dict[str, dict[int, float]] = {name: {} for name in factories}
    for clients in args.concurrency:
        for _ in range(args.repeats):
            for name, make in factories.items():
                engine.scheduler.new_detokenizer = make
                rate = await engine_run(engine, clients, args.tokens)
                rates[name][clients] = max(rates[name].get(clients, 0.0), rate)
    print(f"\n{'detokenizer':<28}" + "".join(f"{f'{c} client(s)':>14}" for c in args.concurrency))
    for name, by_clients in rates.items():
        print(f"{name:<28}" + "".join(f"{v:>10.1f} t/s" for v in by_clients.values()))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="AVIBE_MODEL (default: embedded)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--qwen3-8b-random", action="store_true")
    parser.add_argument("--detokenizers", action="store_true", help="compare detokenizers")
    parser.add_argument(
        "--save-qwen3-random",
        nargs=2,
        metavar=("SIZE", "FOLDER"),
        help=f"only write a random-weight Qwen3 of SIZE ({', '.join(QWEN3_SHAPES)}) to FOLDER",
    )
    args = parser.parse_args()
    if args.save_qwen3_random:
        save_qwen3_random(Path(args.save_qwen3_random[1]), args.save_qwen3_random[0])
        return

    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        avibe_model=args.model,
        device=args.device,
        dtype=args.dtype,
        max_batch_size=max(args.concurrency),
        max_queue_size=max(64, max(args.concurrency)),
    )
    engine = TransformersTextEngine(
        settings.avibe, settings.in_process, max_queue_size=settings.max_queue_size
    )
    began = time.perf_counter()
    if args.qwen3_8b_random:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        model, tokenizer = build_qwen3_random(device, "8b")
        print(f"built random Qwen3-8B on {device} in {time.perf_counter() - began:.1f} s")
        await start_in_memory(engine, model, tokenizer)
        del model
    else:
        await engine.start()
    status = engine.status()
    print(
        f"{status.model_id} on {status.device}/{status.dtype}: {status.state.value} "
        f"in {time.perf_counter() - began:.1f} s ({status.reason or 'ok'})"
    )
    if engine.scheduler is None:
        return
    try:
        if args.detokenizers:
            await compare_detokenizers(engine, args)
            return
        base = baseline(engine, args.tokens, args.repeats)
        print(f"\n{'setup':<28}{'tok/s':>10}{'per stream':>12}{'x base':>9}{'x 1 client':>12}")
        print(f"{'generate() 1 stream':<28}{base:>10.1f}{base:>12.1f}{1.0:>9.2f}{'':>12}")
        await engine_run(engine, 1, 8)  # warm the engine path
        one_client: float | None = None
        for clients in args.concurrency:
            rate = max(
                [await engine_run(engine, clients, args.tokens) for _ in range(args.repeats)]
            )
            one_client = one_client or (rate if clients == 1 else None)
            scale = f"{rate / one_client:>12.2f}" if one_client else f"{'':>12}"
            print(
                f"{f'engine {clients} client(s)':<28}{rate:>10.1f}{rate / clients:>12.1f}"
                f"{rate / base:>9.2f}{scale}"
            )
    finally:
        await engine.stop()


if __name__ == "__main__":
    asyncio.run(main())
