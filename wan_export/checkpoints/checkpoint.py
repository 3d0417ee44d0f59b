"""A Wan2.2 TI2V-5B checkpoint folder in either layout, read one component at a time.

official  (Wan-AI/Wan2.2-TI2V-5B): config.json + diffusion_pytorch_model*.safetensors (Wan key names),
          Wan2.2_VAE.pth, models_t5_umt5-xxl-enc-bf16.pth, google/umt5-xxl/ (tokenizer). The DiT may instead be
          one torch file of its state dict (DIT_TORCH_FILES: Wan2.2-TI2V-5B-Turbo's `generator.pt` / `model.pt`,
          keys `model.blocks.0...`), which then wins over the safetensors beside it.
diffusers (Wan-AI/Wan2.2-TI2V-5B-Diffusers): model_index.json, transformer/, vae/, text_encoder/, tokenizer/

Every state dict handed out uses the official key names (what `wan_export.model` expects), keeps the stored
dtype, and has been checked against the model's expected names and shapes. Sizes are inferred from the
tensors (and config.json), so a scaled-down checkpoint loads exactly like the real one.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch

from wan_export.checkpoints import dit_keys, t5_keys, tensors, vae_keys
from wan_export.config import DiTConfig, ModelConfig, T5Config, VAEConfig
from wan_rt.errors import WanError

log = logging.getLogger("wan_export")

OFFICIAL_FILES = {
    "dit": "diffusion_pytorch_model",
    "vae": "Wan2.2_VAE.pth",
    "t5": "models_t5_umt5-xxl-enc-bf16.pth",
    "tokenizer": "google/umt5-xxl",
}
# A DiT state dict as a torch file in an official folder (distilled checkpoints ship the DiT alone, e.g. Turbo).
DIT_TORCH_FILES = ("generator.pt", "model.pt", "diffusion_pytorch_model.pt", "diffusion_pytorch_model.pth")


def detect_layout(root: Path) -> str:
    if (root / "model_index.json").is_file() or (root / "transformer").is_dir():
        return "diffusers"
    if (root / "config.json").is_file() and (root / OFFICIAL_FILES["vae"]).exists():
        return "official"
    raise WanError(
        f"{root} is neither an official Wan2.2 checkpoint (config.json, {OFFICIAL_FILES['vae']}, "
        f"{OFFICIAL_FILES['t5']}) nor a diffusers one (model_index.json, transformer/, vae/, text_encoder/)")


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise WanError(f"missing {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise WanError(f"{path}: invalid JSON ({exc})") from None


@dataclass
class Checkpoint:
    root: Path
    layout: str

    # -- where each component lives ------------------------------------------------------------------
    def _dit_files(self) -> list[Path]:
        if self._dit_torch_file is not None:
            return [self._dit_torch_file]
        folder = self.root if self.layout == "official" else self.root / "transformer"
        return tensors.safetensors_files(folder, OFFICIAL_FILES["dit"])

    @cached_property
    def _dit_torch_file(self) -> Path | None:
        """The DiT as one torch file (official layout only), or None: the safetensors files."""
        if self.layout != "official":
            return None
        found = next((self.root / name for name in DIT_TORCH_FILES if (self.root / name).is_file()), None)
        if found is not None:
            log.info("DiT weights: %s (a torch file; any diffusion_pytorch_model safetensors there are not used)",
                     found)
        return found

    def _dit_config_json(self) -> dict:
        folder = self.root if self.layout == "official" else self.root / "transformer"
        return _read_json(folder / "config.json")

    def _dit_source(self, files: list[Path]) -> Path:
        """The file to name in errors: the single safetensors (or torch) file, or the shard index."""
        return files[0] if len(files) == 1 else files[0].parent / f"{OFFICIAL_FILES['dit']}.safetensors.index.json"

    def _vae_source(self) -> Path:
        return self.root / OFFICIAL_FILES["vae"] if self.layout == "official" else self.root / "vae"

    def _t5_source(self) -> Path:
        return self.root / OFFICIAL_FILES["t5"] if self.layout == "official" else self.root / "text_encoder"

    def part_files(self, part: str) -> list[Path]:
        """The files checkpoint part "t5", "dit" or "vae" is read from (what a rebuild of its graphs depends on)."""
        if part == "dit":
            folder = self.root if self.layout == "official" else self.root / "transformer"
            index = folder / f"{OFFICIAL_FILES['dit']}.safetensors.index.json"
            return [*self._dit_files(), folder / "config.json", *([index] if index.is_file() else [])]
        source = {"vae": self._vae_source, "t5": self._t5_source}[part]()
        return sorted(p for p in source.rglob("*") if p.is_file()) if source.is_dir() else [source]

    @property
    def tokenizer_dir(self) -> Path:
        folder = self.root / (OFFICIAL_FILES["tokenizer"] if self.layout == "official" else "tokenizer")
        if not (folder / "tokenizer.json").is_file() and not (folder / "spiece.model").is_file():
            raise WanError(f"no tokenizer in {folder}: it needs tokenizer.json or spiece.model (the umT5 tokenizer of "
                           f"google/umt5-xxl); copy the checkpoint's tokenizer folder there")
        return folder

    # -- sizes ----------------------------------------------------------------------------------------
    # Inference reads a few tensors by name: a missing one (KeyError) or a key map / size rule that does not
    # fit (ValueError) becomes one WanError naming the file, like the strict check after it.
    @cached_property
    def dit_config(self) -> DiTConfig:
        files = self._dit_files()
        if self._dit_torch_file is not None:  # memory-mapped: reading the shapes reads no weights
            shapes = tensors.shapes_of(self._raw_dit())
        else:
            shapes = tensors.safetensors_shapes(files)
        config = self._dit_config_json()
        source = self._dit_source(files)
        if self.layout == "diffusers":
            shapes = _convert(lambda raw: {dit_keys.rename(k, False): v for k, v in raw.items()}, shapes, source)
            heads = config.get("num_attention_heads")
        else:
            heads = config.get("num_heads")
        return _infer(lambda: dit_keys.dit_config_from_shapes(shapes, heads), source)

    @cached_property
    def vae_config(self) -> VAEConfig:
        raw = self._raw_vae(shapes_only=True)
        if self.layout == "official":
            return _infer(lambda: vae_keys.vae_config_from_state_dict(raw), self._vae_source())
        config = _read_json(self.root / "vae" / "config.json")
        return _infer(lambda: vae_keys.vae_config_from_state_dict(
            raw, latents_mean=config.get("latents_mean"), latents_std=config.get("latents_std")), self._vae_source())

    @cached_property
    def t5_config(self) -> T5Config:
        raw = self._raw_t5(shapes_only=True)
        if self.layout == "official":
            return _infer(lambda: t5_keys.t5_config_from_state_dict(raw), self._t5_source())
        config = _read_json(self.root / "text_encoder" / "config.json")
        return _infer(lambda: t5_keys.t5_config_from_state_dict(raw, num_heads=config.get("num_heads")),
                      self._t5_source())

    def model_config(self) -> ModelConfig:
        name = "ti2v-5b" if self.dit_config == DiTConfig() else f"checkpoint:{self.root.name}"
        return ModelConfig(name=name, dit=self.dit_config, vae=self.vae_config, t5=self.t5_config)

    # -- raw tensors in official key names ---------------------------------------------------------------
    # With shapes_only, safetensors contribute meta tensors (shapes, no data): size inference then reads
    # no weights (.pth files are memory-mapped, so reading them is cheap either way).
    def _raw_vae(self, shapes_only: bool = False) -> dict[str, torch.Tensor]:
        if self.layout == "official":
            return tensors.load_pth(self.root / OFFICIAL_FILES["vae"])
        raw = tensors.load_safetensors(tensors.safetensors_files(self.root / "vae", "diffusion_pytorch_model"),
                                       shapes_only)
        return _convert(vae_keys.diffusers_to_official, raw, self.root / "vae")

    def _raw_t5(self, shapes_only: bool = False) -> dict[str, torch.Tensor]:
        if self.layout == "official":
            return tensors.load_pth(self.root / OFFICIAL_FILES["t5"])
        raw = tensors.load_safetensors(tensors.safetensors_files(self.root / "text_encoder", "model"), shapes_only)
        return _convert(t5_keys.hf_to_official, raw, self.root / "text_encoder")

    def _raw_dit(self) -> dict[str, torch.Tensor]:
        files = self._dit_files()
        if self._dit_torch_file is not None:
            return dit_keys.strip_prefixes(tensors.load_pth(self._dit_torch_file))
        raw = tensors.load_safetensors(files)
        if self.layout == "diffusers":
            raw = _convert(dit_keys.diffusers_to_official, raw, self._dit_source(files))
        return raw

    # -- checked state dicts ------------------------------------------------------------------------------
    def state_dict(self, part: str) -> dict[str, torch.Tensor]:
        """The official-keyed tensors of "dit", "vae" or "t5", checked against the model's names and shapes."""
        from wan_export.model import component_factory

        raw = {"dit": self._raw_dit, "vae": self._raw_vae, "t5": self._raw_t5}[part]()
        source = {"dit": lambda: self._dit_source(self._dit_files()), "vae": self._vae_source,
                  "t5": self._t5_source}[part]()
        display = None
        if self.layout == "diffusers":  # name keys as the file stores them
            display = {"dit": lambda key: dit_keys.rename(key, True),
                       "vae": _single(vae_keys.official_to_diffusers),
                       "t5": _single(lambda sd: t5_keys.official_to_hf(sd, tied=False))}[part]
        expected = tensors.expected_shapes(component_factory(part, self.model_config()))
        tensors.check_state_dict(expected, tensors.shapes_of(raw), str(source), display)
        return raw

    def dit_state_dict(self) -> dict[str, torch.Tensor]:
        return self.state_dict("dit")

    def vae_state_dict(self) -> dict[str, torch.Tensor]:
        return self.state_dict("vae")

    def t5_state_dict(self) -> dict[str, torch.Tensor]:
        return self.state_dict("t5")


def _single(convert):
    """A key map over state dicts as a map of one (official) key to the name stored in the file."""
    return lambda key: next(iter(convert({key: None})))


def _convert(convert, raw: dict, source: Path) -> dict:
    try:
        return convert(raw)
    except ValueError as exc:
        raise WanError(f"{source}: {exc}") from None


def _infer(infer, source: Path):
    try:
        return infer()
    except KeyError as exc:
        raise WanError(f"{source}: checkpoint does not match the model; missing: {exc.args[0]}") from None
    except ValueError as exc:
        raise WanError(f"{source}: {exc}") from None


def open_checkpoint(ckpt_dir: str | Path) -> Checkpoint:
    root = Path(ckpt_dir)
    if not root.is_dir():
        raise WanError(f"checkpoint folder {root} does not exist")
    return Checkpoint(root=root, layout=detect_layout(root))
