"""`dcl bundle BUNDLE --app APP`: put a verified bundle into a demo app's assets.

The app is recognised by its files: an Android Gradle project (`settings.gradle.kts` and
`app/src/main/`, e.g. android_demo/) gets the ExecuTorch, ONNX Runtime and TFLite artifacts in
`app/src/main/assets/bundle/`; a Swift package (`Package.swift` with Sources/DclDemo/, e.g.
ios_demo/) gets the Core ML artifacts in `Sources/DclDemo/Resources/bundle/`.

Before anything is written the bundle is checked (dcl_core.bundle.load_manifest): manifest schema
(dcl_core/manifest.schema.json), format_version, names and paths that stay inside the bundle, plain
files only (no links), every file's sha256, and that it holds at least one artifact of each format the
platform runs (a missing one is one line naming the `dcl export --formats` that adds it). Then the
platform's artifacts, a manifest listing only them, and samples go into a temporary folder that is
renamed into place (dcl_core.outputs.atomic_output: never half-copied, and a folder dcl did not
create is never replaced; --force replaces a previous `dcl bundle`).

Samples (samples/index.json + little-endian raw tensors, read by the apps): the exporters keep the
real validation inputs in memory only, so `dcl bundle` takes them from the bundle's `samples/`
folder when it has one (`samples/<program>.npz`, arrays keyed by the artifacts' input names, first
dimension = sample count), else synthesizes them from the artifacts' input specs and the program's
`extra` (float inputs uniform in extra.input.range, default [0, 1]; integer targets uniform in
[0, extra.num_classes)), seeded, and says so in index.json's "source".
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np

from dcl_core.bundle import Manifest, Program, load_manifest, sha256_file
from dcl_core.errors import BundleError, OutputError
from dcl_core.outputs import atomic_output
from dcl_core.untrusted import inside, plain_file
from exporters.formats import formats_of_app

APP_BUNDLE = "app-bundle"  # the output kind of an app's bundle folder
SAMPLES_VERSION = 1
SYNTH_SEED = 0


@dataclass(frozen=True)
class Platform:
    name: str  # a demo app kind; its formats are those whose descriptor names it (Format.demo_app)
    assets: str  # the bundle folder, relative to the app
    example_target: str  # a phone of this platform, for the hint that re-exports

    @property
    def formats(self) -> tuple[str, ...]:
        return formats_of_app(self.name)

    @property
    def export_hint(self) -> str:
        return f"--target {self.example_target} --formats {','.join(self.formats)}"

    def detect(self, app: Path) -> bool:
        if self.name == "android":
            return (app / "settings.gradle.kts").is_file() and (app / "app" / "src" / "main").is_dir()
        return (app / "Package.swift").is_file() and (app / "Sources" / "DclDemo").is_dir()


PLATFORMS = (
    Platform("android", "app/src/main/assets/bundle", "pixel-8"),
    Platform("ios", "Sources/DclDemo/Resources/bundle", "iphone-15"),
)


def platform_of(app: Path) -> Platform:
    for p in PLATFORMS:
        if p.detect(app):
            return p
    raise OutputError(f"{app} is not a dcl demo app (expected an Android Gradle project with app/src/main/, "
                      f"like android_demo/, or a Swift package with Sources/DclDemo/, like ios_demo/)")


def bundle_into_app(bundle_dir: str | Path, app_dir: str | Path, force: bool = False) -> dict[str, Any]:
    """Verify `bundle_dir`, copy the app's platform artifacts, manifest and samples into its assets."""
    bundle, app = Path(bundle_dir), Path(app_dir)
    if not app.is_dir():
        raise OutputError(f"app folder {app} does not exist; give the demo app's folder, e.g. --app android_demo")
    platform = platform_of(app)
    manifest = load_manifest(bundle, verify=True)  # schema, names, paths inside, plain files, sha256
    kept = _platform_manifest(manifest, platform, bundle)
    samples = _samples(bundle, kept)
    dest = inside(app, platform.assets, "the app's asset folder", OutputError)
    with atomic_output(dest, APP_BUNDLE, force, inputs=(bundle,)) as tmp:
        for a in kept.artifacts:
            for f in a.files:
                target = inside(tmp, f.path, "bundle file", BundleError)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(bundle / f.path, target, follow_symlinks=False)
                if sha256_file(target) != f.sha256:  # the copy, not just the source
                    raise BundleError(f"copying {f.path} into {dest} changed it (disk full or failing?); nothing was written")
        kept.write(tmp)
        _write_samples(tmp, samples)
    return {"platform": platform.name, "app": str(app), "assets": str(dest), "source": str(bundle),
            "artifacts": [a.name for a in kept.artifacts], "bytes": sum(a.bytes for a in kept.artifacts),
            "samples": {"source": samples["source"],
                        "programs": {p: v["count"] for p, v in samples["programs"].items()}}}


def _platform_manifest(m: Manifest, platform: Platform, bundle: Path) -> Manifest:
    have = {a.format for a in m.artifacts}
    missing = [f for f in platform.formats if f not in have]
    if missing:
        raise BundleError(f"bundle {bundle} has no {', '.join(missing)} artifact, which the {platform.name} app needs; "
                          f"re-export with `dcl export RUN {platform.export_hint}`")
    programs = [Program(p.name, [a for a in p.artifacts if a.format in platform.formats],
                        [n for n in p.not_exported if n.get("format") in platform.formats], p.extra)
                for p in m.programs]
    extra = {**m.extra, "app_bundle": {"platform": platform.name, "formats": list(platform.formats),
                                       "source_manifest_sha256": sha256_file(bundle / "manifest.json")}}
    return Manifest(m.method, m.target, [p for p in programs if p.artifacts], m.tool_versions, m.created,
                    m.format_version, extra)


def _program_specs(p: Program) -> list[Any]:
    """The inputs samples must cover: a training artifact's (model inputs + target), else inference's."""
    train = next((a for a in p.artifacts if a.kind == "training"), None)
    return (train or p.artifacts[0]).inputs


def _samples(bundle: Path, m: Manifest) -> dict[str, Any]:
    programs: dict[str, Any] = {}
    sources = set()
    for p in m.programs:
        specs = _program_specs(p)
        npz = bundle / "samples" / f"{p.name}.npz"
        if os.path.lexists(npz):  # a link here is refused, not followed
            arrays = _from_npz(plain_file(inside(bundle, f"samples/{p.name}.npz", "sample file", BundleError),
                                          "sample file", BundleError), specs)
            sources.add("bundle samples/")
        else:
            arrays = _synthesize(p, specs)
            sources.add(f"synthesized from the artifacts' input specs (seed {SYNTH_SEED}): not real data")
        count = {a.shape[0] for a in arrays.values()}
        if len(count) != 1:
            raise BundleError(f"{npz}: its arrays have different sample counts {sorted(count)}")
        programs[p.name] = {"count": count.pop(), "arrays": arrays}
    return {"source": "; ".join(sorted(sources)), "programs": programs}


def _from_npz(npz: Path, specs: list[Any]) -> dict[str, np.ndarray]:
    try:
        with np.load(npz, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        raise BundleError(f"{npz} is not a readable .npz ({e}); fix or remove it") from None
    out = {}
    for s in specs:
        if s.name not in data:
            raise BundleError(f"{npz} lacks the input {s.name!r} (it has {sorted(data)})")
        a = data[s.name]
        if list(a.shape[1:]) != list(s.shape[1:]):
            raise BundleError(f"{npz}: {s.name} has shape {list(a.shape)}, the artifact takes [N, {', '.join(map(str, s.shape[1:]))}]")
        out[s.name] = np.ascontiguousarray(a, dtype=_dtype(s.dtype))
    return out


def _synthesize(p: Program, specs: list[Any]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(SYNTH_SEED)
    batch = max([s.shape[0] for s in specs if s.shape and s.shape[0] > 0] or [1])
    n = max(2 * batch, 8)  # two distinct training batches, a few images to classify
    lo, hi = (p.extra.get("input") or {}).get("range", [0.0, 1.0])
    classes = int(p.extra.get("num_classes") or 2)
    out = {}
    for s in specs:
        shape = [n, *[d if d > 0 else 1 for d in s.shape[1:]]]
        if s.dtype.startswith("float"):
            out[s.name] = rng.uniform(lo, hi, size=shape).astype(np.float32)
        else:
            out[s.name] = rng.integers(0, classes, size=shape).astype(np.int64)
    return out


def _dtype(name: str) -> np.dtype:
    return np.dtype(np.float32) if name.startswith("float") else np.dtype(np.int64)


def _write_samples(root: Path, samples: dict[str, Any]) -> None:
    folder = root / "samples"
    folder.mkdir()
    index: dict[str, Any] = {"version": SAMPLES_VERSION, "source": samples["source"], "programs": {}}
    for prog, v in samples["programs"].items():
        tensors = []
        for i, (name, a) in enumerate(v["arrays"].items()):
            rel = f"samples/{prog}_{i}.bin"  # tensor names are the manifest's data, not file names
            (root / rel).write_bytes(a.astype(a.dtype.newbyteorder("<")).tobytes())
            tensors.append({"name": name, "shape": list(a.shape), "dtype": str(a.dtype), "file": rel})
        index["programs"][prog] = {"count": v["count"], "tensors": tensors}
    (folder / "index.json").write_text(json.dumps(index, indent=2) + "\n")


@click.command("bundle")
@click.argument("bundle_dir")
@click.option("--app", "app_dir", required=True, help="The demo app's folder (android_demo/, ios_demo/ or a copy).")
@click.option("--force", is_flag=True, help="Replace what a previous `dcl bundle` put in the app (never anything else).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def bundle_command(bundle_dir: str, app_dir: str, force: bool, as_json: bool) -> None:
    """Verify a bundle and copy its artifacts, manifest and samples into a demo app's assets."""
    s = bundle_into_app(bundle_dir, app_dir, force)
    if as_json:
        click.echo(json.dumps(s, indent=2))
        return
    click.echo(f"{s['platform']} app {s['app']}: {len(s['artifacts'])} artifacts ({s['bytes']:,} bytes) -> {s['assets']}")
    for name in s["artifacts"]:
        click.echo(f"  {name}")
    click.echo(f"  samples: {', '.join(f'{p} x{n}' for p, n in s['samples']['programs'].items())} ({s['samples']['source']})")


__all__ = ["APP_BUNDLE", "PLATFORMS", "bundle_command", "bundle_into_app", "platform_of"]
