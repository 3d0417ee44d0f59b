"""LoRAs merged into the DiT weights before export (`wan-export build --lora FILE[:SCALE]`, `wan-export refit`).

Key formats in circulation for Wan (as diffusers reads them, src/diffusers/loaders/lora_conversion_utils.py):
- diffusers / PEFT: `transformer.blocks.0.attn1.to_q.lora_A.weight` / `.lora_B.weight` (diffusers module names,
  optional `transformer.` or `base_model.model.` prefix), `.lora_B.bias` for a bias delta;
- original / ComfyUI: `diffusion_model.blocks.0.self_attn.q.lora_down.weight` / `.lora_up.weight` + `.alpha`
  (Wan module names; lora_A/lora_B spellings too), full deltas `.diff` (weight) and `.diff_b` (bias);
- musubi-tuner / kohya: `lora_unet_blocks_0_self_attn_q.lora_down.weight` / `.lora_up.weight` + `.alpha`.

Each pair adds  scale * (alpha / rank) * up @ down  to the weight (alpha absent: alpha = rank, as diffusers does);
`.diff` / `.diff_b` add  scale * delta, and `lora_B.bias`  scale * (alpha / rank) * delta (PEFT scales lora_B's bias
with it). Unlike diffusers, `.diff` keys on linear weights and on norm weights are applied (diffusers skips them
with a log line); everything else equals diffusers' load_lora_weights
+ fuse_lora(lora_scale=scale). Keys that match no DiT weight, or shapes that do not fit, are one error line naming
the first few. Merging is done in float64 and cast back to the weight's dtype.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from wan_export.checkpoints import dit_keys, tensors
from wan_export.weights import WeightSource
from wan_rt.errors import WanError

log = logging.getLogger("wan_export")

_PREFIXES = ("transformer.", "base_model.model.", "diffusion_model.", "model.diffusion_model.", "lora_unet_")
# suffix -> role; longest first so `.lora_B.bias` is not read as `.bias`
_SUFFIXES = ((".lora_down.weight", "down"), (".lora_up.weight", "up"), (".lora_A.weight", "down"),
             (".lora_B.weight", "up"), (".lora_B.bias", "up_bias"), (".alpha", "alpha"), (".diff_b", "bias"),
             (".diff", "diff"))
SHOWN = 5


@dataclass(frozen=True)
class LoraSpec:
    path: Path
    scale: float = 1.0

    def record(self) -> dict:
        """What the manifest and the resumable build key on: the file's sha256 and the scale."""
        return {"file": self.path.name, "path": str(self.path.resolve()), "sha256": sha256(self.path),
                "scale": self.scale}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def parse_lora(text: str) -> LoraSpec:
    """FILE or FILE:SCALE (a path may itself hold ':'; only a numeric tail is a scale)."""
    path, scale = text, 1.0
    head, sep, tail = text.rpartition(":")
    if sep:
        try:
            path, scale = head, float(tail)
        except ValueError:
            pass
    path = Path(path)
    if not path.is_file():
        raise WanError(f"LoRA file {path} does not exist (give --lora FILE or FILE:SCALE)")
    return LoraSpec(path=path, scale=scale)


def read_lora(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return with_peft_alphas(tensors.load_safetensors([path]), path)
    return with_peft_alphas(tensors.load_pth(path), path)  # weights_only


PEFT_CONFIG = "adapter_config.json"  # PEFT's save_pretrained writes it beside adapter_model.safetensors
PEFT_METADATA = "lora_adapter_metadata"  # diffusers' save_lora_weights: the same config in the safetensors header


def peft_config(path: Path) -> tuple[dict, str] | None:
    """(the LoRA's PEFT config, where it was read) from the safetensors header or adapter_config.json beside it."""
    import json

    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            text = (handle.metadata() or {}).get(PEFT_METADATA)
        if text:  # diffusers prefixes each entry with the model it belongs to: "transformer.lora_alpha"
            packed = json.loads(text)
            ours = {k.removeprefix("transformer."): v for k, v in packed.items() if k.startswith("transformer.")}
            return ours or packed, f"{path} header"
    beside = path.parent / PEFT_CONFIG
    if beside.is_file():
        return json.loads(beside.read_text(encoding="utf-8")), str(beside)
    return None


def with_peft_alphas(lora: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """A PEFT-format LoRA (lora_A / lora_B, no `.alpha` keys) scales by its config's lora_alpha / r, which lives
    outside the tensors: written here as `.alpha` keys, per module (rsLoRA: lora_alpha / sqrt(r)). Per-module
    patterns are refused in one line rather than merged at the wrong strength."""
    pairs = [key[: -len(".lora_A.weight")] for key in lora if key.endswith(".lora_A.weight")]
    if not pairs or any(key.endswith(".alpha") for key in lora):
        return lora
    found = peft_config(path)
    if found is None:
        return lora  # no config: alpha = rank, as diffusers does
    config, where = found
    if config.get("alpha_pattern") or config.get("rank_pattern"):
        raise WanError(f"{where}: per-module alpha_pattern / rank_pattern are not supported; merge the LoRA with "
                       f"PEFT (merge_and_unload) and pass the merged checkpoint instead")
    if "lora_alpha" not in config:
        raise WanError(f"{where}: a PEFT LoRA config without lora_alpha; add it (training's lora_alpha)")
    alpha = float(config["lora_alpha"])
    out = dict(lora)
    for module in pairs:
        rank = lora[f"{module}.lora_A.weight"].shape[0]
        effective = alpha / rank ** 0.5 if config.get("use_rslora") else alpha / rank  # scale = alpha / rank here
        out[f"{module}.alpha"] = torch.tensor(effective * rank)
    log.info("LoRA %s: PEFT lora_alpha %g from %s", path.name, alpha, where)
    return out


@dataclass
class _Target:
    down: torch.Tensor | None = None
    up: torch.Tensor | None = None
    alpha: float | None = None
    diff: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    up_bias: torch.Tensor | None = None  # lora_B's own bias (PEFT lora_bias): scaled like lora_B
    keys: list = field(default_factory=list)


def _module_resolver(param_names):
    """A function from a LoRA's module name (any format) to the official DiT module name, or None."""
    modules = {name.rsplit(".", 1)[0] for name in param_names} | set(param_names)
    underscored = {name.replace(".", "_"): name for name in modules}

    def resolve(name: str) -> str | None:
        if name in modules:
            return name
        if name in underscored:  # musubi / kohya
            return underscored[name]
        try:  # diffusers module names
            official = dit_keys.rename(f"{name}.weight", False).rsplit(".", 1)[0]
        except ValueError:
            return None
        return official if official in modules else None

    return resolve


def _split(key: str) -> tuple[str, str] | None:
    for prefix in _PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix):]
            break
    for suffix, role in _SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)], role
    return None


def _targets(lora: dict[str, torch.Tensor], param_names, source: Path) -> dict[str, _Target]:
    resolve = _module_resolver(param_names)
    targets: dict[str, _Target] = {}
    unmatched = []
    for key, value in lora.items():
        split = _split(key)
        module = resolve(split[0]) if split else None
        if module is None:
            unmatched.append(key)
            continue
        target = targets.setdefault(module, _Target())
        role = split[1]
        setattr(target, role, float(value.item()) if role == "alpha" else value)
        target.keys.append(key)
    if unmatched:
        raise WanError(f"{source}: {len(unmatched)} LoRA keys match no DiT weight (first: "
                       f"{', '.join(sorted(unmatched)[:SHOWN])}); is it a LoRA for Wan2.2 TI2V-5B?")
    return targets


def lora_deltas(lora: dict[str, torch.Tensor], params: dict[str, torch.Tensor], scale: float,
                source: Path) -> dict[str, torch.Tensor]:
    """float64 deltas per DiT parameter name for one LoRA file at `scale`."""
    deltas: dict[str, torch.Tensor] = {}
    misfits = []

    def add(name: str, delta: torch.Tensor, keys) -> None:
        if name not in params or delta.numel() != params[name].numel():
            shape = tuple(params[name].shape) if name in params else "absent"
            misfits.append(f"{keys[0]} {tuple(delta.shape)} (DiT {name} {shape})")
            return
        delta = delta.reshape(params[name].shape) * scale
        deltas[name] = deltas[name] + delta if name in deltas else delta

    for module, t in _targets(lora, params, source).items():
        weight = f"{module}.weight" if f"{module}.weight" in params else module
        ratio = 1.0  # alpha / rank of the pair
        if (t.down is None) != (t.up is None):
            misfits.append(f"{t.keys[0]} (its {'up' if t.up is None else 'down'} half is missing)")
        elif t.down is not None:
            down, up = t.down.double().flatten(1), t.up.double().flatten(1)
            if up.shape[1] != down.shape[0]:
                misfits.append(f"{t.keys[0]} rank {down.shape[0]} vs up {tuple(t.up.shape)}")
            else:
                rank = down.shape[0]
                ratio = (t.alpha / rank) if t.alpha is not None else 1.0
                add(weight, (up @ down) * ratio, t.keys)
        if t.diff is not None:
            add(weight, t.diff.double(), t.keys)
        if t.bias is not None:
            add(f"{module}.bias", t.bias.double(), t.keys)
        if t.up_bias is not None:  # PEFT's lora_B is a Linear whose output, bias included, is scaled by alpha/r
            add(f"{module}.bias", t.up_bias.double() * ratio, t.keys)
    if misfits:
        raise WanError(f"{source}: LoRA shapes do not fit the DiT: {'; '.join(misfits[:SHOWN])}"
                       + (f" ({len(misfits)} in all)" if len(misfits) > SHOWN else ""))
    return deltas


def merged_weights(params: dict[str, torch.Tensor], specs: list[LoraSpec]) -> dict[str, torch.Tensor]:
    """The DiT parameters the LoRAs change, merged (new tensors in each parameter's dtype); others untouched."""
    total: dict[str, torch.Tensor] = {}
    for spec in specs:
        for name, delta in lora_deltas(read_lora(spec.path), params, spec.scale, spec.path).items():
            total[name] = total[name] + delta if name in total else delta
        log.info("LoRA %s (scale %g) merged into the DiT", spec.path.name, spec.scale)
    return {name: (params[name].double() + delta).to(params[name].dtype) for name, delta in total.items()}


def merge_into_module(module: torch.nn.Module, specs: list[LoraSpec]) -> None:
    params = dict(module.named_parameters())
    with torch.no_grad():
        for name, value in merged_weights({k: p.detach() for k, p in params.items()}, specs).items():
            params[name].data = value


@dataclass
class LoraWeightSource(WeightSource):
    """A weight source whose DiT gets the LoRAs merged in; manifest and resume keys name each file and scale."""

    loras: tuple = ()

    def load(self, part: str, dtype: torch.dtype = torch.float32):
        module = super().load(part, dtype)
        if part == "dit" and self.loras:
            merge_into_module(module, list(self.loras))
        return module

    def manifest_record(self) -> dict:
        return {**super().manifest_record(), "loras": [spec.record() for spec in self.loras]}


def with_loras(source: WeightSource, specs: list[LoraSpec]) -> WeightSource:
    if not specs:
        return source
    return LoraWeightSource(config=source.config, checkpoint=source.checkpoint, seed=source.seed, loras=tuple(specs),
                            tiny_vae=source.tiny_vae)

