"""Write the part of Kubernetes CRD schemas that infra/ manifests use, as JSON Schema for test_infra.py.

Tests cannot download the CRDs, so their schemas are kept here, cut down to what the manifests use. Run by
hand when a CRD version or a manifest changes, with the CRD files of the release named in ``--source``:

    python tests/schemas/crd_subtree.py --source "ray-project/kuberay v1.7.0 (commit ...)" \\
        --crd ray.io_rayjobs.yaml --crd ray.io_raycronjobs.yaml \\
        --manifest infra/rayjob-summarize.yaml --manifest infra/raycronjob-logs.yaml \\
        --out tests/schemas/kuberay-v1.7.0.json

For each kind, the storage version's ``openAPIV3Schema`` is taken as it is, except:

* every object the manifests fill keeps all the CRD's properties (their real names and types) and, where
  the CRD lists a fixed set of properties (no ``additionalProperties``, no
  ``x-kubernetes-preserve-unknown-fields``), gets ``additionalProperties: false`` (the API server's strict
  field validation, kubectl's default, refuses unknown fields the same way);
* a property the manifests do not use keeps only its type (objects and arrays are not descended into);
* descriptions, defaults and ``x-kubernetes-*`` extensions (list types, CEL rules) are dropped; OpenAPI's
  ``nullable`` becomes a ``null`` type;
* ``apiVersion`` and ``kind`` must be the CRD's, and the four top-level fields are required.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml

KEEP = {
    "type",
    "format",
    "enum",
    "pattern",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "uniqueItems",
    "required",
}
SHALLOW = {"type", "format", "enum", "pattern", "minimum", "maximum", "minLength", "maxLength"}


def _scalar_keys(node: dict, keys: set[str]) -> dict:
    out = {k: v for k, v in node.items() if k in keys}
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if "anyOf" in node:  # int-or-string quantities and ports
        out["anyOf"] = [_scalar_keys(a, keys) for a in node["anyOf"]]
    return out


def prune(node: dict, used: list[Any]) -> dict:
    """``node`` cut down to what the values ``used`` at this place of the manifests need."""
    if not used:
        return _scalar_keys(node, SHALLOW)
    out = _scalar_keys(node, KEEP)
    if "properties" in node:
        dicts = [u for u in used if isinstance(u, dict)]
        out["properties"] = {
            name: prune(sub, [d[name] for d in dicts if name in d])
            for name, sub in sorted(node["properties"].items())
        }
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        values = [v for u in used if isinstance(u, dict) for v in u.values()]
        out["additionalProperties"] = prune(extra, values)
    elif extra is not None:
        out["additionalProperties"] = extra
    elif "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    if "items" in node:
        out["items"] = prune(node["items"], [v for u in used if isinstance(u, list) for v in u])
    return out


def kind_schema(crd: dict, manifests: list[dict]) -> tuple[str, dict]:
    names = crd["spec"]["names"]
    version = next(v for v in crd["spec"]["versions"] if v.get("storage"))
    api_version = f"{crd['spec']['group']}/{version['name']}"
    used = [m for m in manifests if m.get("kind") == names["kind"] and m.get("apiVersion") == api_version]
    schema = prune(version["schema"]["openAPIV3Schema"], used)
    schema["properties"]["apiVersion"] = {"const": api_version}
    schema["properties"]["kind"] = {"const": names["kind"]}
    schema["required"] = ["apiVersion", "kind", "metadata", "spec"]
    return names["kind"], schema


def dump(value: Any, indent: str = "") -> str:
    """JSON, one line per object or array that is short enough, else one line per member."""
    line = json.dumps(value, sort_keys=True)
    if len(indent) + len(line) <= 100 or not isinstance(value, (dict, list)) or not value:
        return line
    inner = indent + " "
    if isinstance(value, dict):
        members = [f"{inner}{json.dumps(k)}: {dump(v, inner)}" for k, v in sorted(value.items())]
        return "{\n" + ",\n".join(members) + "\n" + indent + "}"
    return "[\n" + ",\n".join(inner + dump(v, inner) for v in value) + "\n" + indent + "]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", required=True, help="repository, release and commit of the CRD files")
    parser.add_argument("--crd", action="append", required=True, type=Path)
    parser.add_argument("--manifest", action="append", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    manifests = [m for path in args.manifest for m in yaml.safe_load_all(path.read_text()) if m]
    crd_names = ", ".join(path.name for path in args.crd)
    schemas = dict(kind_schema(yaml.safe_load(path.read_text()), manifests) for path in args.crd)
    document = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$comment": (
            f"Cut down from {crd_names} of {args.source} by tests/schemas/crd_subtree.py (its docstring "
            f"says how) for {', '.join(str(p) for p in args.manifest)}. Validate with "
            '{"$ref": "#/$defs/<kind>"} and these $defs.'
        ),
        "$defs": schemas,
    }
    args.out.write_text(dump(document) + "\n")


if __name__ == "__main__":
    main()
