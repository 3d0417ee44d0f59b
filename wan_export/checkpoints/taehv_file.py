"""TAEHV tiny-decoder weights: a `taew2_2` / `taew2_2_super` file (`.pth` weights-only or `.safetensors`), or
seeded random weights (the tiny profile, tests).

Sizes and the variant are read from the tensors, like the other loaders, so a narrow random decoder loads like the
real one. Only the `decoder.` tensors are kept (upstream files also hold the tiny encoder). Upstream trains the first
TGrow with time stride 2 and runs it with stride 1 for Wan (`decoder_time_upscale=(False, True, True)`): its loader
keeps the last time step's output channels of a larger TGrow conv, and so does this one.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from wan_export.checkpoints.random_weights import random_tensor
from wan_export.checkpoints.tensors import expected_shapes
from wan_export.model.loading import load_module
from wan_export.model.taehv import TGrow, TinyDecoder, TinyVAEConfig
from wan_rt.errors import WanError

# The tiny profile's random decoder: the real layout at a fraction of the width (export and runs in seconds).
TINY_WIDTHS = (32, 16, 16, 16)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise WanError(f"--tiny-vae {path}: no such file; pass a taew2_2.pth / taew2_2_super.pth (or .safetensors) "
                       "from madebyollin/taehv")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    elif path.suffix in (".pth", ".pt"):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickled code, a truncated download: one line, not a traceback
            raise WanError(f"--tiny-vae {path}: not a weights-only torch file ({str(exc).splitlines()[0]}); use the "
                           "upstream taew2_2.pth or its .safetensors") from None
    else:
        raise WanError(f"--tiny-vae {path}: unknown file type {path.suffix!r}; give a .pth or .safetensors file")
    if not isinstance(state, dict):
        raise WanError(f"--tiny-vae {path}: holds a {type(state).__name__}, not a state dict of tensors")
    return {k: v for k, v in state.items() if k.startswith("decoder.")}


def infer_config(state: dict[str, torch.Tensor], origin: str) -> TinyVAEConfig:
    """The variant and sizes of a TAEHV decoder from its tensors (base: decoder.0 is the parameter-free clamp)."""
    try:
        if "decoder.0.weight" in state:
            first = state["decoder.0.weight"]
            widths = (first.shape[0], *(state[f"decoder.{i}.weight"].shape[0] // 4 for i in (4, 11, 18)))
            return TinyVAEConfig("super", int(first.shape[1]), tuple(int(w) for w in widths),
                                 _patch(state["decoder.22.weight"], origin))
        first = state["decoder.1.weight"]
        widths = (first.shape[0], *(state[f"decoder.{i}.weight"].shape[0] for i in (8, 14, 20)))
        return TinyVAEConfig("base", int(first.shape[1]), tuple(int(w) for w in widths),
                             _patch(state["decoder.22.weight"], origin))
    except KeyError as exc:
        raise WanError(f"{origin}: not a TAEHV decoder (no tensor {exc.args[0]}); give taew2_2.pth or "
                       "taew2_2_super.pth") from None


def _patch(head: torch.Tensor, origin: str) -> int:
    patch = round((head.shape[0] / 3) ** 0.5)
    if 3 * patch * patch != head.shape[0]:
        raise WanError(f"{origin}: output conv has {head.shape[0]} channels, not 3 x patch^2")
    return patch


def fit_tgrow(state: dict[str, torch.Tensor], module: TinyDecoder, origin: str) -> dict[str, torch.Tensor]:
    """Keep the last time step's channels of a TGrow conv stored with a larger stride (as upstream's loader)."""
    state = dict(state)
    for i, layer in enumerate(module.decoder):
        if isinstance(layer, TGrow):
            key = f"decoder.{i}.conv.weight"
            wanted = layer.conv.out_channels
            if key in state and state[key].shape[0] > wanted:
                state[key] = state[key][-wanted:]
            elif key in state and state[key].shape[0] < wanted:
                raise WanError(f"{origin}: {key} has {state[key].shape[0]} output channels, fewer than the "
                               f"{wanted} the Wan2.2 4x time upsampling needs (is this a taew2_2 file?)")
    return state


def random_state(cfg: TinyVAEConfig, seed: int) -> dict[str, torch.Tensor]:
    """Seeded random decoder weights (values depend only on seed and name, as the other random checkpoints)."""
    with torch.device("meta"):
        shapes = expected_shapes(lambda: TinyDecoder(cfg))
    return {name: random_tensor(f"taehv.{name}", shape, seed) for name, shape in shapes.items()}


def state_sha256(state: dict[str, torch.Tensor]) -> str:
    """One digest of a state dict's names and float32 values (the parity fixture records its weights by it)."""
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].detach().float().contiguous().numpy().tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class TinyVAESource:
    """Where the tiny decoder's weights come from: a file, or seeded random values (`path` None)."""

    path: Path | None
    seed: int = 0
    random_widths: tuple[int, int, int, int] = TINY_WIDTHS

    @property
    def origin(self) -> str:
        return f"--tiny-vae {self.path}" if self.path else f"random TAEHV decoder (seed {self.seed})"

    def _file_state(self) -> dict[str, torch.Tensor]:
        return read_state_dict(Path(self.path))

    @property
    def config(self) -> TinyVAEConfig:
        if self.path is None:
            return TinyVAEConfig("base", 48, self.random_widths, 2)
        return infer_config(self._file_state(), self.origin)

    def load(self) -> TinyDecoder:
        cfg = self.config
        if self.path is None:
            state = random_state(cfg, self.seed)
        else:
            with torch.device("meta"):
                template = TinyDecoder(cfg)
            state = fit_tgrow(self._file_state(), template, self.origin)
        try:
            return load_module(lambda: TinyDecoder(cfg), state)
        except RuntimeError as exc:  # missing / unexpected / mis-shaped tensors
            raise WanError(f"{self.origin}: does not match a TAEHV {cfg.variant} decoder "
                           f"({str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else exc})") from None

    def record(self) -> dict:
        """For the manifest (how `wan-export check` rebuilds the reference) and the build's reuse key."""
        if self.path is None:
            return {"kind": "random", "seed": self.seed, "widths": list(self.random_widths)}
        path = Path(self.path)
        return {"kind": "file", "path": str(path.resolve()), "sha256": _sha256(path)}

    @classmethod
    def from_record(cls, record: dict) -> "TinyVAESource":
        if record["kind"] == "random":
            return cls(path=None, seed=int(record["seed"]), random_widths=tuple(record["widths"]))
        path = Path(record["path"])
        if not path.is_file() or _sha256(path) != record["sha256"]:
            raise WanError(f"tiny VAE file {path} named in the manifest is missing or changed since the build; put "
                           "the file back or rebuild with --tiny-vae")
        return cls(path=path)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def with_tiny_vae(source, choice: str, seed: int):
    """`source` (a WeightSource) that also exports a tiny decoder: `choice` a file, or "random" (seeded)."""
    from dataclasses import replace

    return replace(source, tiny_vae=TinyVAESource(path=None if choice == "random" else Path(choice), seed=seed))
