from __future__ import annotations

import json
import logging

from avito_ai.observability.logging import configure_logging, request_id_var


def test_text_lines_carry_the_request_id(tmp_path) -> None:
    log_file = tmp_path / "app.log"
    configure_logging("INFO", "text", log_file)
    token = request_id_var.set("abc-123")
    try:
        logging.getLogger("avito_ai.test").info("Processing request...")
    finally:
        request_id_var.reset(token)
    line = log_file.read_text().strip().splitlines()[-1]
    assert "[INFO] [abc-123]" in line and "Processing request..." in line


def test_json_lines(tmp_path) -> None:
    log_file = tmp_path / "app.log"
    configure_logging("INFO", "json", log_file)
    token = request_id_var.set("j-1")
    try:
        logging.getLogger("avito_ai.test").info("hello %s", "мир", extra={"status": 201})
    finally:
        request_id_var.reset(token)
    record = json.loads(log_file.read_text().strip().splitlines()[-1])
    assert record["request_id"] == "j-1"
    assert record["message"] == "hello мир"
    assert record["status"] == 201
    assert record["level"] == "INFO"


def test_log_file_survives_logrotate_rename(tmp_path) -> None:
    log_file = tmp_path / "app.log"
    configure_logging("INFO", "text", log_file)
    log = logging.getLogger("avito_ai.test")
    log.info("before rotation")
    log_file.rename(tmp_path / "app.log.1")  # what logrotate does (without copytruncate)
    log.info("after rotation")
    assert "after rotation" in log_file.read_text()
    assert "before rotation" in (tmp_path / "app.log.1").read_text()


def test_level_filters(tmp_path) -> None:
    log_file = tmp_path / "app.log"
    configure_logging("WARNING", "text", log_file)
    logging.getLogger("avito_ai.test").info("hidden")
    logging.getLogger("avito_ai.test").warning("shown")
    text = log_file.read_text()
    assert "shown" in text and "hidden" not in text
