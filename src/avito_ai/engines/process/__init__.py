"""Engine servers (vLLM, SGLang, or any OpenAI-compatible command) run as child processes:
commands.py builds their command lines, supervisor.py starts and watches them in the
process that outlives worker reloads, engine.py is what each worker serves through."""
