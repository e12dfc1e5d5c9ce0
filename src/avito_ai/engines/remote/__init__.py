"""The remote backend: OpenAI-compatible upstreams (vLLM, SGLang, this service) as an engine."""
