"""Validate Compose files against the Compose Specification's JSON schema, offline.

    python deploy/schemas/validate_compose.py deploy/compose.yaml   (make lint runs it)

The schema is vendored beside this file (compose-spec.json; README.md says where from).
Exit status 1 and one line per problem (file, place in it, what is wrong) if any is found.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml
from jsonschema.validators import validator_for

SCHEMA = Path(__file__).resolve().parent / "compose-spec.json"


def problems(document: Any) -> list[str]:
    """What is wrong with one Compose document (already parsed), as 'place: message'."""
    schema = json.loads(SCHEMA.read_text())
    cls = validator_for(schema)
    cls.check_schema(schema)
    validator = cls(schema, format_checker=cls.FORMAT_CHECKER)
    errors = sorted(validator.iter_errors(document), key=lambda e: list(map(str, e.path)))
    return [f"{e.json_path}: {e.message}" for e in errors]


def main(paths: list[str]) -> int:
    if not paths:
        print(__doc__, file=sys.stderr)
        return 2
    failed = False
    for path in paths:
        found = problems(yaml.safe_load(Path(path).read_text()))
        for line in found:
            print(f"{path}: {line}")
        failed = failed or bool(found)
        if not found:
            print(f"{path}: valid against the Compose Specification")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
