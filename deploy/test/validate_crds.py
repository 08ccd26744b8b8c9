#!/usr/bin/env python3
"""Validates custom resources against the CRD schemas kept in deploy/test/crds/.

Owns: turning a CRD's OpenAPI v3 schema into a strict JSON Schema (unknown fields are errors,
as with `kubectl apply --validate=strict`, unless the schema preserves unknown fields), a
small ObjectMeta check, and sorting rendered objects into "custom" (validated here) and
"core" (written to --core-out for kubernetes-validate). It never contacts a cluster.

Usage: validate_crds.py --crds DIR [--core-out FILE] RENDERED.yaml...
Exit 0 when every custom resource is valid, 1 otherwise.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import jsonschema
import yaml

# ObjectMeta as a client may write it (status-like fields are the server's).
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
OBJECT_META = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "maxLength": 253, "pattern": DNS_SUBDOMAIN},
        "namespace": {"type": "string", "maxLength": 63, "pattern": DNS_LABEL},
        "labels": STRING_MAP,
        "annotations": STRING_MAP,
        "finalizers": {"type": "array", "items": {"type": "string"}},
        "ownerReferences": {"type": "array", "items": {"type": "object"}},
    },
}


def strict(schema: dict) -> dict:
    """A JSON Schema for jsonschema from a structural OpenAPI v3 schema, unknown fields refused."""
    s = {k: v for k, v in schema.items() if not k.startswith("x-kubernetes-") and k != "format"}
    if schema.get("x-kubernetes-int-or-string"):
        s.pop("type", None)
        s.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if s.pop("nullable", False) and "type" in s:
        s["type"] = [s["type"], "null"]
    if "properties" in s:
        s["properties"] = {k: strict(v) for k, v in s["properties"].items()}
        if "additionalProperties" not in s and not schema.get(
            "x-kubernetes-preserve-unknown-fields"
        ):
            s["additionalProperties"] = False
    if isinstance(s.get("additionalProperties"), dict):
        s["additionalProperties"] = strict(s["additionalProperties"])
    if isinstance(s.get("items"), dict):
        s["items"] = strict(s["items"])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in s:
            s[key] = [strict(x) for x in s[key]]
    return s


def load_crds(directory: Path) -> dict[tuple[str, str], dict]:
    """{(apiVersion, kind): JSON Schema} for every served version of every CRD in directory."""
    schemas = {}
    for path in sorted(directory.glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                if not version.get("served", True):
                    continue
                schema = strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
                schema.setdefault("properties", {})["metadata"] = OBJECT_META
                schema["properties"]["apiVersion"] = {"const": f"{group}/{version['name']}"}
                schema["properties"]["kind"] = {"const": kind}
                schema["required"] = sorted(set(schema.get("required", [])) | {"metadata"})
                schemas[(f"{group}/{version['name']}", kind)] = schema
    if not schemas:
        raise ValueError(f"{directory}: no CustomResourceDefinition found")
    return schemas


def errors_of(doc: dict, schema: dict) -> list[str]:
    """Every schema violation of one object, one line each."""
    validator = jsonschema.Draft202012Validator(schema)
    out = []
    for e in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path)):
        at = ".".join(str(p) for p in e.absolute_path) or "(root)"
        out.append(f"{at}: {e.message}")
    return out


def is_custom_group(api_version: str, schemas: dict) -> bool:
    """Whether objects of this API group are the business of a vendored CRD."""
    group = api_version.split("/")[0] if "/" in api_version else ""
    return any(av.split("/")[0] == group for av, _ in schemas)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--crds", required=True, type=Path)
    ap.add_argument("--core-out", type=Path)
    ap.add_argument("files", nargs="+", type=Path)
    args = ap.parse_args(argv)

    schemas = load_crds(args.crds)
    core, failed, checked = [], 0, 0
    for path in args.files:
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            api_version, kind = doc.get("apiVersion", ""), doc.get("kind", "")
            name = (doc.get("metadata") or {}).get("name", "?")
            if not is_custom_group(api_version, schemas):
                core.append(doc)
                continue
            schema = schemas.get((api_version, kind))
            problems = (
                errors_of(doc, schema)
                if schema
                else [f"no CRD schema for {api_version} {kind} in {args.crds}"]
            )
            checked += 1
            for p in problems:
                print(f"FAIL {path}: {kind}/{name}: {p}", file=sys.stderr)
            failed += bool(problems)
    if args.core_out:
        args.core_out.write_text(yaml.safe_dump_all(core, sort_keys=False))
    if failed:
        return 1
    print(f"custom resources: {checked} valid against their CRD schemas")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
