"""Model configurations: the real Wan2.2 TI2V-5B numbers and a tiny one for tests and the demo.

Every size here can also be inferred from a checkpoint (see `wan_export.checkpoints`), so a scaled-down
checkpoint loads through exactly the same code as the real one.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

# Official `sample_neg_prompt` (wan/configs/shared_config.py), used when no negative prompt is given.
DEFAULT_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，丑陋的，"
    "残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，"
    "三条腿，背景人很多，倒着走"
)

# Per-channel latent statistics hard-coded in wan/modules/vae2_2.py (Wan2_2_VAE.__init__).
LATENTS_MEAN = (
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557, -0.1382, 0.0542, 0.2813, 0.0891,
    0.157, -0.0098, 0.0375, -0.1825, -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
    -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.123, -0.0313, -0.1649, 0.0117, 0.0723,
    -0.2839, -0.2083, -0.052, 0.3748, 0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667,
)
LATENTS_STD = (
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.499, 0.4818, 0.5013, 0.8158, 1.0344, 0.5894, 1.0901,
    0.6885, 0.6165, 0.8454, 0.4978, 0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093, 0.5709, 0.6065, 0.6415, 0.4944,
    0.5726, 1.2042, 0.5458, 1.6887, 0.3971, 1.06, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744,
)


@dataclass(frozen=True)
class DiTConfig:
    """WanModel(model_type='ti2v') constructor arguments (wan/modules/model.py)."""

    in_dim: int = 48  # latent channels = VAE z_dim
    out_dim: int = 48
    dim: int = 3072
    ffn_dim: int = 14336
    freq_dim: int = 256  # sinusoidal timestep embedding width
    text_dim: int = 4096  # = T5 model width
    num_heads: int = 24
    num_layers: int = 30
    patch_size: tuple[int, int, int] = (1, 2, 2)
    text_len: int = 512
    eps: float = 1e-6

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def patch_channels(self) -> int:
        """Width of one patchified input token: in_dim * pt * ph * pw (192 for the 5B model)."""
        return self.in_dim * self.patch_size[0] * self.patch_size[1] * self.patch_size[2]

    @property
    def out_patch_channels(self) -> int:
        return self.out_dim * self.patch_size[0] * self.patch_size[1] * self.patch_size[2]

    @property
    def rope_axis_pairs(self) -> tuple[int, int, int]:
        """Rotary pairs given to the (frame, height, width) axes: (22, 21, 21) for head_dim 128."""
        pairs = self.head_dim // 2
        spatial = pairs // 3
        return (pairs - 2 * spatial, spatial, spatial)


@dataclass(frozen=True)
class VAEConfig:
    """WanVAE_ (wan/modules/vae2_2.py) as built by Wan2_2_VAE."""

    z_dim: int = 48
    base_dim: int = 160  # encoder width (`dim`)
    decoder_base_dim: int = 256  # decoder width (`dec_dim`)
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2  # the decoder uses num_res_blocks + 1 per stage
    temporal_downsample: tuple[bool, ...] = (False, True, True)
    latents_mean: tuple[float, ...] = LATENTS_MEAN
    latents_std: tuple[float, ...] = LATENTS_STD

    @property
    def temporal_upsample(self) -> tuple[bool, ...]:
        return tuple(reversed(self.temporal_downsample))

    @property
    def temporal_stride(self) -> int:
        return 2 ** sum(self.temporal_downsample)

    @property
    def spatial_stride(self) -> int:
        """Pixels per latent cell: patchify 2 x one halving per down stage (16 for the official VAE)."""
        return 2 * 2 ** (len(self.dim_mult) - 1)


@dataclass(frozen=True)
class T5Config:
    """umT5 encoder (wan/modules/t5.py umt5_xxl, encoder only; HF UMT5EncoderModel)."""

    vocab_size: int = 256384
    dim: int = 4096
    dim_attn: int = 4096
    dim_ffn: int = 10240
    num_heads: int = 64
    num_layers: int = 24
    num_buckets: int = 32
    max_distance: int = 128
    text_len: int = 512
    eps: float = 1e-6

    @property
    def head_dim(self) -> int:
        return self.dim_attn // self.num_heads


@dataclass(frozen=True)
class SamplingDefaults:
    """wan/configs/wan_ti2v_5B.py sampling settings."""

    steps: int = 50
    shift: float = 5.0
    guide_scale: float = 5.0
    frames: int = 121
    fps: int = 24
    solver: str = "unipc"
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    max_area: int = 704 * 1280  # image-to-video output area


@dataclass(frozen=True)
class ModelConfig:
    name: str
    dit: DiTConfig = field(default_factory=DiTConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    t5: T5Config = field(default_factory=T5Config)
    sampling: SamplingDefaults = field(default_factory=SamplingDefaults)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        def build(kind, values):
            names = {f.name for f in dataclasses.fields(kind)}
            kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in names}
            return kind(**kwargs)

        return cls(
            name=data["name"],
            dit=build(DiTConfig, data.get("dit", {})),
            vae=build(VAEConfig, data.get("vae", {})),
            t5=build(T5Config, data.get("t5", {})),
            sampling=build(SamplingDefaults, data.get("sampling", {})),
        )


TI2V_5B = ModelConfig(name="ti2v-5b")

# Small enough that export, build and a whole generation run in seconds on 2 CPU cores. Same structure as
# the real model; only widths, depths and the vocabulary shrink. z_dim stays 48 (the DiT and the latent
# statistics depend on it).
TINY = ModelConfig(
    name="tiny",
    dit=DiTConfig(dim=128, ffn_dim=256, freq_dim=256, text_dim=128, num_heads=2, num_layers=2),
    vae=VAEConfig(base_dim=16, decoder_base_dim=32),
    t5=T5Config(vocab_size=1024, dim=128, dim_attn=128, dim_ffn=256, num_heads=2, num_layers=2),
    sampling=SamplingDefaults(steps=4, frames=9, fps=24, max_area=128 * 128),
)

PRESETS: dict[str, ModelConfig] = {config.name: config for config in (TI2V_5B, TINY)}


def preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}") from None
