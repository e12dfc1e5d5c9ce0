"""xgrammar's grammar compiler without its matcher; the whole package for the engines that need it.

Checked for xgrammar 0.2.9 (the pinned version): its `__init__` imports `testing`,
`matcher` and `contrib.hf`, each of which runs `import torch` at module level
(xgrammar/testing.py:9, matcher.py:9, contrib/hf.py:8). The grammar compiler itself is C++
(`load_binding`) and `xgrammar.grammar` imports no torch. So the services, which only
compile schemas to grammar text, take `grammar_class()`: the package registered from its
real spec without running its `__init__`, then `load_binding` and `grammar` alone. That
works in the light install, which has no torch (xgrammar is installed --no-deps there).
Where torch is installed, the binding's tvm_ffi imports it all the same (`imports_torch`).
The transformers engines, which mask logits with xgrammar's
matcher, take `full()`: it runs the package's own `__init__` into the same module, so
both callers share one `xgrammar` in `sys.modules`, whichever came first; a plain
`import xgrammar` elsewhere completes it on its first use.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
from types import ModuleType
from typing import Any

_PARTIAL = "_avito_ai_partial"  # set on the package while its __init__ has not run
_LOCK = threading.Lock()


def _package() -> ModuleType:
    module = sys.modules.get("xgrammar")
    if module is not None:
        return module
    spec = importlib.util.find_spec("xgrammar")
    if spec is None or spec.loader is None:
        raise RuntimeError("xgrammar is not installed (`make serve` installs it)")
    module = importlib.util.module_from_spec(spec)
    setattr(module, _PARTIAL, True)
    # Anyone else's `import xgrammar` gets this module: its first use of a name the
    # package's __init__ defines (xgrammar.GrammarMatcher) runs that __init__ (PEP 562).
    module.__getattr__ = _completing  # type: ignore[method-assign]
    sys.modules["xgrammar"] = module
    return module


def _completing(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    return getattr(full(), name)


def grammar_class() -> Any:
    """xgrammar's `Grammar` (schema, regex and EBNF to grammar text), without xgrammar's
    matcher; torch only where `imports_torch()` says."""
    with _LOCK:
        _package()
        # The C++ library first, as the package's __init__ loads it.
        import xgrammar.load_binding  # noqa: F401
        from xgrammar.grammar import Grammar

        return Grammar


def imports_torch() -> bool:
    """Whether `grammar_class()` would import torch now: xgrammar's binding loads tvm_ffi,
    whose `__init__` imports torch whenever torch is installed (tvm_ffi/__init__.py, for
    DLPack), seconds of CPU and hundreds of MB in a process that may never use torch."""
    if "torch" in sys.modules or "xgrammar.grammar" in sys.modules:
        return False
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):  # an import hook refuses it; torch.__spec__ unset
        return False


def full() -> ModuleType:
    """The whole xgrammar package (matcher, tokenizer info, bitmasks; imports torch)."""
    module = sys.modules.get("xgrammar")
    if module is not None and not module.__dict__.get(_PARTIAL):
        return module  # every token of a constrained sequence asks
    with _LOCK:
        module = _package()
        if module.__dict__.get(_PARTIAL):
            assert module.__spec__ is not None and module.__spec__.loader is not None
            del module.__dict__["__getattr__"]
            module.__spec__.loader.exec_module(module)
            del module.__dict__[_PARTIAL]
        return module
