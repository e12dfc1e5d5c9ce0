"""The OpenVINO backend: OpenVINO GenAI's continuous-batching pipeline, the CPU default.

`engine.py` drives the pipeline from one worker thread (`add_request` / `step()`),
`loading.py` finds and loads GGUF files and OpenVINO IR folders, `detokenize.py` streams
text. No torch: this backend is what the light install (`pip install avito-ai`) serves.
"""
