"""The manifest's JSON Schema (`manifest.schema.json`, draft 2020-12), one file for every reader:
dcl (here), `dcl bundle --app`, and the Android demo's JVM tests.

`validate_manifest_schema(raw)` raises BundleError with one line naming the first problem's place
in the manifest (e.g. `programs[0].artifacts[2].sha256`), so a hand-edited or foreign manifest is
refused before any app copies it.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from dcl_core.errors import BundleError

SCHEMA_PATH = Path(__file__).with_name("manifest.schema.json")


@lru_cache(maxsize=1)
def manifest_schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text())


def validate_manifest_schema(raw: Any, where: str = "manifest.json") -> None:
    """Raise BundleError (one line) unless `raw` (the parsed manifest JSON) matches the schema."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(manifest_schema())
    error = jsonschema.exceptions.best_match(validator.iter_errors(raw))
    if error is None:
        return
    place = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path).lstrip(".") or "(top level)"
    message = error.message if len(error.message) <= 160 else error.message[:157] + "..."
    raise BundleError(f"{where} does not match the manifest schema at {place}: {message}; re-run `dcl export`")


__all__ = ["SCHEMA_PATH", "manifest_schema", "validate_manifest_schema"]
