"""The bundle contract: manifest.json and its records. Apps and the harness read only this.

{"format_version": 2, "method", "target", "created", "tool_versions": {...},
 "programs": [{"name", "artifacts": [...], "not_exported": [...], "extra": {...}}], "extra": {...}}
A bundle holds named programs (DC-CCL: `device_step`; a recommender method: a sample classifier
and a recommender), each with its inference and training artifacts per format.
Each artifact's `path` is relative to the bundle and is a file, or a folder for multi-file artifacts (ORT training artifacts); `files` lists every file with its sha256, and `sha256`
covers the whole artifact (the file's hash, or for a folder the hash of its sorted file list).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from dcl_core.config import from_dict
from dcl_core.errors import BundleError
from dcl_core.schema import validate_manifest_schema
from dcl_core.untrusted import inside, plain_file

FORMAT_VERSION = 2
# Version 1 bundles (one program, no program names) are refused with a line that says to re-export:
# apps look programs up by name, and a guessed name would be a silent contract.
READABLE_VERSIONS = (FORMAT_VERSION,)


@dataclass
class TensorSpec:
    name: str
    shape: list[int]
    dtype: str  # "float32" | "int64" | "int32"

    @staticmethod
    def of(name: str, t: Any) -> "TensorSpec":
        """The spec of a tensor (torch or numpy): its shape and dtype name."""
        return TensorSpec(name, [int(d) for d in t.shape], str(t.dtype).removeprefix("torch."))


@dataclass
class FileEntry:
    path: str
    sha256: str
    bytes: int


@dataclass
class Validation:
    checked: bool
    passed: bool
    reason: str = ""
    max_abs_diff: float | None = None
    tolerance: float | None = None  # inference: the absolute part (atol); training: the relative error
    rtol: float | None = None  # inference: |runtime - pytorch| <= tolerance + rtol * |pytorch| per element
    steps: int | None = None
    # training: per-step losses (runtime and PyTorch) and the worst relative weight error
    loss_runtime: list[float] | None = None
    loss_pytorch: list[float] | None = None
    max_rel_loss_diff: float | None = None
    max_rel_weight_diff: float | None = None
    inputs_checked: list[str] | None = None


@dataclass
class Artifact:
    name: str
    path: str
    format: str
    kind: str  # "inference" | "training"
    sha256: str = ""
    bytes: int = 0
    inputs: list[TensorSpec] = field(default_factory=list)
    outputs: list[TensorSpec] = field(default_factory=list)
    trainable: list[str] = field(default_factory=list)
    loss: str | None = None
    optimizer: dict[str, Any] | None = None
    validation: Validation = field(default_factory=lambda: Validation(False, False, "not validated"))
    files: list[FileEntry] = field(default_factory=list)
    # format-specific facts a runner needs (signature names, weight layouts, delegate, ...)
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Program:
    """One named program of a bundle (e.g. `device_step`) with its artifacts in every format."""

    name: str
    artifacts: list[Artifact] = field(default_factory=list)
    # what a format cannot express at all: [{"format", "kind", "reason"}], never silent
    not_exported: list[dict[str, str]] = field(default_factory=list)
    # facts an app needs to feed the program (input layout and range, class count, ...)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Manifest:
    method: str
    target: str
    programs: list[Program] = field(default_factory=list)
    tool_versions: dict[str, str] = field(default_factory=dict)
    created: str = ""
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def artifacts(self) -> list[Artifact]:
        """Every artifact of every program, in program order."""
        return [a for p in self.programs for a in p.artifacts]

    @property
    def not_exported(self) -> list[dict[str, str]]:
        return [{"program": p.name, **n} for p in self.programs for n in p.not_exported]

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {"format_version": d.pop("format_version"), "method": d.pop("method"), "target": d.pop("target"),
                "created": d.pop("created"), "tool_versions": d.pop("tool_versions"),
                "programs": d.pop("programs"), **d}

    def write(self, bundle: Path) -> Path:
        p = bundle / "manifest.json"
        p.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        return p

    def program(self, name: str) -> Program:
        for p in self.programs:
            if p.name == name:
                return p
        raise BundleError(f"no program named {name!r} in the bundle; it has: {', '.join(p.name for p in self.programs)}")

    def artifact(self, name: str) -> Artifact:
        for a in self.artifacts:
            if a.name == name:
                return a
        raise BundleError(f"no artifact named {name!r} in the manifest; it has: {', '.join(a.name for a in self.artifacts)}")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def describe_files(bundle: Path, rel: str) -> tuple[str, int, list[FileEntry]]:
    """sha256, total bytes and file entries of an artifact path (a file or a folder)."""
    p = bundle / rel
    files = [p] if p.is_file() else sorted(q for q in p.rglob("*") if q.is_file())
    entries = [FileEntry(str(q.relative_to(bundle)), sha256_file(q), q.stat().st_size) for q in files]
    if p.is_file():
        return entries[0].sha256, entries[0].bytes, entries
    combined = hashlib.sha256("".join(f"{e.path}\0{e.sha256}\n" for e in entries).encode()).hexdigest()
    return combined, sum(e.bytes for e in entries), entries


def tool_versions(packages: tuple[str, ...]) -> dict[str, str]:
    """Installed versions of `packages` (the format descriptors name theirs)."""
    out = {}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def artifact_from_json(data: Any) -> Artifact:
    """An Artifact record from its manifest JSON, strictly (unknown keys are refused)."""
    return from_dict(Artifact, data, "artifact")


MAX_TENSOR_ELEMENTS = 1 << 28  # 1 GiB of float32: past any phone model's input; a crafted shape is refused


def load_manifest(bundle: str | Path, verify: bool = True) -> Manifest:
    """Read and (by default) verify a bundle; one clear line on any problem.

    A manifest is data from whoever made the bundle: it must match the JSON Schema (names are
    single path components, shapes bounded), every path in it resolves inside the bundle with no
    link on the way, and with `verify` every file is a plain file with one name and its sha256."""
    bundle = Path(bundle)
    p = bundle / "manifest.json"
    if p.is_symlink() or not p.is_file():
        raise BundleError(f"{p} is missing or not a plain file; is {bundle} a bundle made by `dcl export`?")
    try:
        raw = json.loads(p.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise BundleError(f"{p} is corrupt (not JSON: {e}); re-run `dcl export`") from None
    version = raw.get("format_version") if isinstance(raw, dict) else None
    if version not in READABLE_VERSIONS:
        raise BundleError(f"{p} has format_version {version!r}; this dcl reads bundles of version "
                          f"{', '.join(map(str, READABLE_VERSIONS))}: re-run `dcl export` to rewrite it")
    validate_manifest_schema(raw, str(p))
    try:
        # strict: unknown keys mean a manifest we do not understand
        m = from_dict(Manifest, raw, str(p))
    except Exception as e:  # noqa: BLE001 - any parse problem is the same user error
        raise BundleError(f"{p} is corrupt ({str(e).splitlines()[0] if str(e) else type(e).__name__}); re-run `dcl export`") from None
    _check_contents(m, bundle, p)
    if verify:
        for a in m.artifacts:
            for f in a.files:
                fp = plain_file(inside(bundle, f.path, "bundle file", BundleError), "bundle file", BundleError)
                if sha256_file(fp) != f.sha256:
                    raise BundleError(f"bundle file {fp} fails its sha256 check (corrupt or modified); re-run `dcl export`")
    return m


def _check_contents(m: Manifest, bundle: Path, where: Path) -> None:
    """What the schema cannot say: names unique, paths inside the bundle, tensor sizes bounded."""
    names = [a.name for a in m.artifacts]
    if len(set(names)) != len(names) or len({p.name for p in m.programs}) != len(m.programs):
        raise BundleError(f"{where} names an artifact or program twice; re-run `dcl export`")
    for a in m.artifacts:
        inside(bundle, a.path, f"artifact {a.name} path", BundleError)
        for f in a.files:
            rel = inside(bundle, f.path, f"artifact {a.name} file", BundleError)
            if a.path != f.path and not rel.is_relative_to(bundle.resolve() / a.path):
                raise BundleError(f"{where}: artifact {a.name} lists {f.path!r}, which is outside its path {a.path!r}")
        for t in a.inputs + a.outputs:
            if math.prod(d for d in t.shape if d > 0) > MAX_TENSOR_ELEMENTS:
                raise BundleError(f"{where}: artifact {a.name} tensor {t.name!r} has shape {t.shape}, more than "
                                  f"{MAX_TENSOR_ELEMENTS:,} elements; re-run `dcl export`")
    for prog in m.programs:
        lo_hi = (prog.extra.get("input") or {}).get("range")
        if lo_hi is not None and not (math.isfinite(lo_hi[0]) and math.isfinite(lo_hi[1]) and lo_hi[0] < lo_hi[1]):
            raise BundleError(f"{where}: program {prog.name} extra.input.range {lo_hi} is not an interval lo < hi")
