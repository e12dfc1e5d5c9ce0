"""Validate Kubernetes manifests offline: core kinds against Kubernetes' own schemas
(kubernetes-validate, strict), custom resources against their CRDs' published schemas
(vendored beside this file: Gateway API, the Inference Extension's InferencePool), and the
Prometheus adapter's rules inside their ConfigMap against the adapter's configuration types.

    python deploy/schemas/validate_k8s.py -k 1.35.0 deploy/k8s/*.yaml deploy/k8s/gateway

A directory with a kustomization.yaml is followed through its `resources` (files and
directories, recursively), as `kubectl kustomize` would read them; `-` reads one YAML stream
from standard input (`kubectl kustomize DIR | ... -`). Strict everywhere: a field the schema
does not know is an error, as in `kubectl apply --validate=strict`. Not checked: the CRDs'
CEL rules (x-kubernetes-validations), which only an API server evaluates.

Exit status 1 and one line per problem (file, document, place in it, what is wrong).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml
from jsonschema.validators import Draft202012Validator, validator_for

HERE = Path(__file__).resolve().parent
CRD_FILES = (
    "gateway.networking.k8s.io_gateways.yaml",
    "gateway.networking.k8s.io_httproutes.yaml",
    "inference.networking.k8s.io_inferencepools.yaml",
)
ADAPTER_SCHEMA = HERE / "prometheus-adapter-config.json"
ADAPTER_LABEL = ("app.kubernetes.io/name", "prometheus-adapter")
KUSTOMIZATION = "kustomization.yaml"
# ObjectMeta's fields a manifest sets (the API server fills in the rest); a CRD's schema
# says only `metadata: {type: object}`.
OBJECT_META: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


def strict(schema: Any) -> Any:
    """An OpenAPI v3 structural schema as a JSON schema that refuses unknown fields."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: strict(value) for key, value in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@cache
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> JSON schema, for every served version of the vendored CRDs."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for name in CRD_FILES:
        crd = yaml.safe_load((HERE / name).read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if not version.get("served"):
                continue
            schema = strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
            schema["properties"]["metadata"] = OBJECT_META
            schema["required"] = sorted({*schema.get("required", ()), "apiVersion", "kind"})
            Draft202012Validator.check_schema(schema)
            out[(f"{group}/{version['name']}", kind)] = schema
    return out


def schema_problems(schema: dict[str, Any], document: Any) -> list[str]:
    cls = validator_for(schema, default=Draft202012Validator)
    validator = cls(schema, format_checker=cls.FORMAT_CHECKER)
    errors = sorted(validator.iter_errors(document), key=lambda e: list(map(str, e.path)))
    return [f"{e.json_path}: {e.message}" for e in errors]


def adapter_problems(document: dict[str, Any]) -> list[str]:
    """The rules inside a ConfigMap labelled for the Prometheus adapter."""
    labels = (document.get("metadata") or {}).get("labels") or {}
    if document.get("kind") != "ConfigMap" or labels.get(ADAPTER_LABEL[0]) != ADAPTER_LABEL[1]:
        return []
    text = (document.get("data") or {}).get("config.yaml")
    if not isinstance(text, str):
        return ["$.data: a prometheus-adapter ConfigMap needs config.yaml"]
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as e:
        return [f"$.data['config.yaml']: not YAML: {e}"]
    schema = json.loads(ADAPTER_SCHEMA.read_text())
    return [f"$.data['config.yaml']{p[1:]}" for p in schema_problems(schema, config)]


def problems(document: Any, k8s_version: str) -> list[str]:
    """What is wrong with one manifest document (already parsed), as 'place: message'."""
    if not isinstance(document, dict):
        return [f"$: a manifest is a mapping, not {type(document).__name__}"]
    key = (document.get("apiVersion"), document.get("kind"))
    schema = crd_schemas().get(key)  # type: ignore[arg-type]
    if schema is not None:
        return schema_problems(schema, document)
    try:
        kubernetes_validate.validate(document, k8s_version, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        return [f"$: no schema for apiVersion {key[0]!r} kind {key[1]!r} (vendor its CRD)"]
    except kubernetes_validate.ValidationError as e:
        return [f"{e.json_path}: {e.message}"]  # the first problem kubernetes-validate found
    return adapter_problems(document)


def manifest_files(path: Path) -> Iterator[Path]:
    """The manifest files a path names: itself, or a kustomization's resources."""
    if not path.is_dir():
        yield path
        return
    kustomization = path / KUSTOMIZATION
    if not kustomization.exists():
        yield from sorted(path.glob("*.yaml"))
        return
    spec = yaml.safe_load(kustomization.read_text()) or {}
    for resource in spec.get("resources", []):
        target = (path / resource).resolve()
        if not target.exists():
            raise FileNotFoundError(f"{kustomization}: resource {resource} does not exist")
        yield from manifest_files(target)


def documents(path: str) -> Iterator[tuple[str, Any]]:
    """(where, document) for each YAML document of a file, directory or standard input."""
    if path == "-":
        for n, doc in enumerate(yaml.safe_load_all(sys.stdin.read()), 1):
            if doc is not None:
                yield f"<stdin> document {n}", doc
        return
    for file in manifest_files(Path(path)):
        for n, doc in enumerate(yaml.safe_load_all(file.read_text()), 1):
            if doc is not None:
                yield f"{file} document {n}", doc


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-k", "--kubernetes-version", default="1.35.0")
    parser.add_argument("paths", nargs="+")
    args = parser.parse_args(argv)
    failed = checked = 0
    for path in args.paths:
        for where, doc in documents(path):
            checked += 1
            name = f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"
            for line in problems(doc, args.kubernetes_version):
                failed += 1
                print(f"{where} ({name}): {line}")
    print(f"{checked} manifests checked, {failed} problems", file=sys.stderr)
    return 1 if failed or not checked else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
