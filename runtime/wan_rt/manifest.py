"""manifest.json: the one contract between `wan-export` (writer) and `wan-rt` (reader).

Loading validates before anything runs: format and version, every listed file present with its
sha256, component I/O declared. A mismatch is one `WanError` line saying what and how to fix it.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from wan_rt.errors import WanError
from wan_rt.shapes import ShapeLimits

FORMAT = "wan-deploy-engines"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
VERIFIED_CACHE = ".verified.json"  # sha256 results keyed by size and mtime, so a 10 GB engine is hashed once
COMPONENTS = ("text_encoder", "dit", "vae_encoder", "vae_decoder_first", "vae_decoder_step")


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def axis_size(axis, dims: dict, which: int) -> int:
    """An axis of a manifest shape (an int, a dim name, or "name*k") at point `which` of its dims (0 min, 1 opt,
    2 max)."""
    if isinstance(axis, int):
        return axis
    name, _, factor = axis.partition("*")
    return dims[name][which] * int(factor or 1)


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str  # numpy dtype name: float32, int64, ...
    shape: tuple  # ints for fixed axes, names of `ComponentInfo.dims` for dynamic ones

    @classmethod
    def from_dict(cls, data: dict) -> "TensorInfo":
        return cls(name=data["name"], dtype=data["dtype"], shape=tuple(data["shape"]))


@dataclass(frozen=True)
class ComponentInfo:
    name: str
    backend: str  # onnxruntime | tensorrt | tensorrt-rtx
    precision: str
    file: str  # the engine or ONNX graph the backend opens
    files: dict  # every file of this component -> sha256
    inputs: tuple
    outputs: tuple
    dims: dict  # dynamic axis name -> [min, opt, max]
    target: dict = field(default_factory=dict)  # library versions, GPU compute capability for engines
    device: str = ""  # placement: "cpu" pins an ONNX Runtime graph to the CPU beside GPU engines (t5_cpu); "" default

    @classmethod
    def from_dict(cls, name: str, data: dict) -> "ComponentInfo":
        return cls(
            name=name, backend=data["backend"], precision=data["precision"], file=data["file"],
            files=dict(data["files"]), inputs=tuple(TensorInfo.from_dict(t) for t in data["inputs"]),
            outputs=tuple(TensorInfo.from_dict(t) for t in data["outputs"]),
            dims={k: tuple(v) for k, v in data["dims"].items()}, target=dict(data.get("target", {})),
            device=data.get("device", ""))


@dataclass(frozen=True)
class Manifest:
    root: Path
    data: dict
    limits: ShapeLimits
    components: dict

    @property
    def model(self) -> dict:
        return self.data["model"]

    @property
    def sampling(self) -> dict:
        return self.data["sampling"]

    @property
    def tokenizer_dir(self) -> Path:
        return self.root / self.data["tokenizer"]["dir"]

    def component(self, name: str) -> ComponentInfo:
        if name not in self.components:
            raise WanError(f"{self.root} has no {name} engine; rebuild with wan-export build")
        return self.components[name]

    def path(self, component: str) -> Path:
        return self.root / self.component(component).file


def _load_verified_cache(root: Path) -> dict:
    try:
        return json.loads((root / VERIFIED_CACHE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _save_verified_cache(root: Path, cache: dict) -> None:
    try:
        tmp = root / f"{VERIFIED_CACHE}.tmp-{os.getpid()}"
        tmp.write_text(json.dumps(cache, indent=1), encoding="utf-8")
        os.replace(tmp, root / VERIFIED_CACHE)
    except OSError:  # a read-only engines folder just means hashing again next time
        pass


def verify_files(root: Path, expected: dict) -> None:
    """Every file exists with its sha256 (re-hashed only when its size or mtime changed)."""
    cache = _load_verified_cache(root)
    changed = False
    for relative, digest in sorted(expected.items()):
        path = root / relative
        if not path.is_file():
            raise WanError(f"{root}: missing file {relative} named in {MANIFEST_NAME}; rebuild the engines folder")
        stat = path.stat()
        stamp = [stat.st_size, stat.st_mtime_ns, digest]
        if cache.get(relative) == stamp:
            continue
        if sha256_file(path) != digest:
            raise WanError(f"{root}: {relative} does not match its sha256 in {MANIFEST_NAME} (corrupt or replaced); "
                           f"rebuild the engines folder")
        cache[relative] = stamp
        changed = True
    if changed:
        _save_verified_cache(root, cache)


def load_manifest(folder: str | Path, verify: bool = True) -> Manifest:
    root = Path(folder)
    path = root / MANIFEST_NAME
    if not root.is_dir():
        raise WanError(f"engines folder {root} does not exist; build one with wan-export build --out {root}")
    if not path.is_file():
        raise WanError(f"{root} has no {MANIFEST_NAME}: not an engines folder (build one with wan-export build)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise WanError(f"{path}: invalid JSON ({exc}); rebuild the engines folder") from None
    if data.get("format") != FORMAT:
        raise WanError(f"{path}: not a wan-deploy manifest (format {data.get('format')!r})")
    if data.get("format_version") != FORMAT_VERSION:
        raise WanError(f"{path}: manifest format version {data.get('format_version')} but this wan-rt reads "
                       f"version {FORMAT_VERSION}; rebuild the engines with the matching wan-export")
    try:
        components = {name: ComponentInfo.from_dict(name, info) for name, info in data["components"].items()}
        limits = ShapeLimits.from_dict(data["limits"])
        files = dict(data["tokenizer"]["files"])
        for info in components.values():
            files.update(info.files)
        data["model"], data["sampling"]
    except (KeyError, TypeError) as exc:
        raise WanError(f"{path}: manifest is incomplete ({exc!r} missing or malformed); rebuild the engines folder") from None
    if verify:
        verify_files(root, files)
    return Manifest(root=root, data=data, limits=limits, components=components)
