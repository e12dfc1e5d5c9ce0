"""The OpenVINO backend: OpenVINO GenAI's continuous-batching pipeline, the CPU default.

`worker.py` drives a pipeline from one worker thread (`add_request` / `step()`), for both
engines: `engine.py` (A-Vibe: GGUF files and text IR folders, `loading.py`) and `vision.py`
(A-Vision: Qwen2-VL / Qwen2.5-VL IR folders, `vision_loading.py`); `detokenize.py` streams
text. No torch: this backend is what the light install (`pip install avito-ai`) serves.
"""
