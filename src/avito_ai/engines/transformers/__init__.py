"""The transformers backend: the exact Hugging Face architectures, in process.

A-Vibe (`text.py`) is continuously batched by `scheduler.py` over `kvcache.py`, with
per-row `sampling.py` and `textstream.py`; A-Vision (`vision.py`) runs `generate()` one
request at a time. Both run their model on one worker thread (`threads.py`, and the shared
`engines/bridge.py`). `loading.py` finds and loads weights; `device.py` picks device and dtype.

Only this package imports torch and transformers: nothing else in the service does at
module level, so a service that uses another backend starts without them.
"""
