"""The manifest's `sp` section read back and checked, and the per-layer block weights it points to (no torch)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wan_rt.errors import WanError
from wan_rt.manifest import Manifest

ROLES = ("embed", "pre_attention", "attention", "post_attention", "head")
# The segments' contract, written by wan_export.components.dit_segments. 2: time conditioning per latent frame
# with `token_frames` (1, per-token time_mod inputs, is no longer run: rebuild).
SP_FORMAT_VERSION = 2


@dataclass(frozen=True)
class SPLayout:
    ranks: int
    num_layers: int
    num_heads: int
    heads_per_rank: int
    head_dim: int
    segments: dict  # role -> component name
    wire_dtype: str  # dtype whose values q/k/v and the attention output hold: what the all-to-all carries
    weights: dict  # the manifest's sp.weights table


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def sp_layout(manifest: Manifest, ranks: int) -> SPLayout:
    """The engines' SP layout for `ranks` processes, or one WanError line saying what is wrong and the fix."""
    heads = int(manifest.model["dit"]["num_heads"])
    if ranks < 1:
        raise WanError(f"--sp {ranks}: the rank count must be at least 1")
    if heads % ranks:
        raise WanError(f"--sp {ranks}: the DiT has {heads} attention heads, which do not split evenly over {ranks} "
                       f"ranks (Ulysses gives each rank num_heads/N heads); use --sp one of {_divisors(heads)}")
    section = manifest.data.get("sp")
    if not section:
        raise WanError(f"{manifest.root} has no sequence-parallel DiT segments; rebuild it with "
                       f"wan-export build --sp {ranks} (or run without --sp)")
    version = section.get("version")
    if version != SP_FORMAT_VERSION:
        raise WanError(f"{manifest.root}: its sequence-parallel segments have format version {version}, this wan-rt "
                       f"runs version {SP_FORMAT_VERSION}; rebuild them with wan-export build --sp {ranks}")
    try:
        built = int(section["ranks"])
        segments = dict(section["segments"])
        split = section["head_split"]
        layout = SPLayout(ranks=built, num_layers=int(section["num_layers"]), num_heads=int(split["num_heads"]),
                          heads_per_rank=int(split["heads_per_rank"]), head_dim=int(split["head_dim"]),
                          segments=segments, wire_dtype=str(section["wire_dtype"]), weights=dict(section["weights"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise WanError(f"{manifest.root}: the manifest's sp section is malformed ({exc!r}); rebuild with "
                       f"wan-export build --sp {ranks}") from None
    if built != ranks:
        raise WanError(f"{manifest.root}: the DiT segments were built for --sp {built}, not {ranks}; run with "
                       f"--sp {built} or rebuild with wan-export build --sp {ranks}")
    missing = [name for role, name in segments.items() if role in ROLES and name not in manifest.components]
    if missing or set(ROLES) - set(segments):
        raise WanError(f"{manifest.root}: sp segments {missing or sorted(set(ROLES) - set(segments))} are missing; "
                       f"rebuild with wan-export build --sp {ranks}")
    return layout


class BlockWeights:
    """Every layer's block parameters as read-only float32 views of the memory-mapped weights file."""

    def __init__(self, manifest: Manifest, layout: SPLayout):
        table = layout.weights
        if table.get("binding") != "graph-inputs" or table.get("dtype") != "float32":
            raise WanError(f"{manifest.root}: sp weights bound as {table.get('binding')!r} ({table.get('dtype')}) "
                           f"are not supported by this wan-rt; rebuild the engines")
        path = manifest.root / table["file"]
        layer_bytes = int(table["layer_bytes"])
        data = np.memmap(path, dtype=np.uint8, mode="r")
        if data.size != layer_bytes * layout.num_layers:
            raise WanError(f"{path} holds {data.size} bytes, the manifest says {layout.num_layers} layers of "
                           f"{layer_bytes}; rebuild the engines")
        prefix = table["input_prefix"]
        self._layers = []
        for layer in range(layout.num_layers):
            base = layer * layer_bytes
            tensors = {}
            for entry in table["tensors"]:
                shape = tuple(entry["shape"])
                tensors[entry["name"]] = np.frombuffer(data, np.float32, count=int(np.prod(shape)),
                                                       offset=base + int(entry["offset"])).reshape(shape)
            self._layers.append(tensors)
        self._feeds = {
            segment: [{prefix + name: tensors[name] for name in names} for tensors in self._layers]
            for segment, names in table["inputs"].items()}

    def feeds(self, segment: str, layer: int) -> dict[str, np.ndarray]:
        """The `w.*` inputs of `segment` for `layer`."""
        return self._feeds[segment][layer]
