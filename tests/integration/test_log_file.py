"""LOG_FILE trouble against real processes: a path that cannot be written stops the server
and `avito-ai config` with one line; a full disk (/dev/full) costs one warning and a
counter, never a traceback per line nor a failed request."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.servers import BIN, ROOT, dev_server, serving

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("path", ["/proc/version", "/proc/no-such-folder/app.log", "/tmp"])
@pytest.mark.parametrize("command", ["config", "serve", "gunicorn"])
def test_an_unusable_log_file_is_one_line_naming_it(
    path: str, command: str, clean_environment: dict[str, str]
) -> None:
    argv = {
        "config": [sys.executable, "-m", "avito_ai", "config"],
        "serve": [sys.executable, "app_production.py"],
        "gunicorn": [str(BIN / "gunicorn"), "-c", "gunicorn_config.py", "app_production:app"],
    }[command]
    done = subprocess.run(
        argv,
        cwd=ROOT,
        env={**clean_environment, "LOG_FILE": path, "AVIBE_BACKEND": "fake"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("avito-ai: Invalid configuration: LOG_FILE:")
    assert path in lines[0]


def test_a_full_disk_costs_one_warning_and_no_request(tmp_path: Path) -> None:
    env = {
        "AVIBE_BACKEND": "fake",
        "LOG_FILE": "/dev/full",  # every write: ENOSPC
        "RATE_LIMIT_PER_MINUTE": "100000",
        "RATE_LIMIT_PER_HOUR": "100000",
    }
    with serving(dev_server(env, tmp_path / "server.log")) as srv:
        with httpx.Client(timeout=30) as client:
            for _ in range(200):
                r = client.post(srv.url + "/api/v1/text/generate", json={"prompt": "a b"})
                assert r.status_code == 200
        metrics = httpx.get(srv.url + "/metrics").text
        output = srv.output()
    assert "Traceback" not in output
    warnings = [line for line in output.splitlines() if "cannot write LOG_FILE" in line]
    assert len(warnings) == 1, warnings
    lost = next(
        float(line.split()[1])
        for line in metrics.splitlines()
        if line.startswith("avito_log_write_errors_total ")
    )
    assert lost >= 200  # an access line per request at least
