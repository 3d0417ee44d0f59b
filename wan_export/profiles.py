"""Build profiles (`profiles/*.toml`): which model, backend, per-component precision, and the shapes to accept."""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from wan_rt.errors import WanError
from wan_rt.shapes import ShapeLimits, parse_size

PROFILE_DIR = Path(__file__).resolve().parent.parent / "profiles"
BACKENDS = ("onnxruntime", "tensorrt", "tensorrt-rtx")
PRECISIONS = ("fp32", "bf16", "fp16")
PRECISION_KEYS = ("text_encoder", "dit", "vae_encoder", "vae_decoder")
DMD_SAMPLING_KEYS = ("timesteps", "warp_timesteps")  # [sampling] keys the model config has no field for


@dataclass(frozen=True)
class BuildProfile:
    name: str
    source: str  # the file it was read from
    model_preset: str
    seed: int
    backend: str
    precision: dict
    limits: ShapeLimits
    sampling: dict
    tiny_vae: str | None = None  # [model] tiny_vae: "random" (seeded, for the tiny profile) or a TAEHV file
    placement: dict = field(default_factory=dict)  # [placement] text_encoder = "cpu": the official t5_cpu

    def dmd_sampling(self) -> dict:
        """The dmd solver's sampling defaults (timestep list, warp) for the manifest; empty for other solvers."""
        return {key: self.sampling[key] for key in DMD_SAMPLING_KEYS if key in self.sampling}

    def to_dict(self) -> dict:
        data = {"name": self.name, "model_preset": self.model_preset, "seed": self.seed, "backend": self.backend,
                "precision": dict(self.precision), "shapes": self.limits.to_dict(), "sampling": dict(self.sampling)}
        if self.placement:
            data["placement"] = dict(self.placement)
        return data


def available_profiles() -> list[str]:
    return sorted(path.stem for path in PROFILE_DIR.glob("*.toml"))


def _resolve(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise WanError(f"profile file {path} does not exist")
        return path
    candidate = PROFILE_DIR / f"{name_or_path}.toml"
    if not candidate.is_file():
        raise WanError(f"unknown profile {name_or_path!r}; choose one of {available_profiles()} or give a .toml file")
    return candidate


def load_profile(name_or_path: str) -> BuildProfile:
    path = _resolve(name_or_path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise WanError(f"{path}: invalid TOML ({exc})") from None
    try:
        shapes = data["shapes"]
        limits = ShapeLimits(
            width=tuple(shapes["width"]), height=tuple(shapes["height"]), max_area=int(shapes["max_area"]),
            multiple=int(shapes.get("multiple", 32)), frames=tuple(shapes["frames"]),
            batch=tuple(shapes.get("batch", (1, 2))), default_size=parse_size(shapes["default_size"]),
            default_frames=int(shapes["default_frames"]))
        precision = {key: data.get("precision", {}).get(key, "fp32") for key in PRECISION_KEYS}
        backend = data.get("build", {}).get("backend", "onnxruntime")
        model = data["model"]
    except KeyError as exc:
        raise WanError(f"{path}: missing setting {exc.args[0]!r} (see profiles/tiny.toml for the full layout)") from None
    if backend not in BACKENDS:
        raise WanError(f"{path}: backend {backend!r} is not one of {BACKENDS}")
    for key, value in precision.items():
        if value not in PRECISIONS:
            raise WanError(f"{path}: precision.{key} = {value!r} is not one of {PRECISIONS}")
    if not 1 <= limits.batch[0] <= limits.batch[1] <= 2:
        raise WanError(f"{path}: batch range {limits.batch} must lie within 1..2")
    _check_sampling(path, data.get("sampling", {}))
    return BuildProfile(name=path.stem, source=str(path), model_preset=model.get("preset", "ti2v-5b"),
                        seed=int(model.get("seed", 0)), backend=backend, precision=precision, limits=limits,
                        sampling=dict(data.get("sampling", {})), tiny_vae=model.get("tiny_vae"),
                        placement=_placement(path, data.get("placement", {})))


def _placement(path: Path, placement: dict) -> dict:
    from wan_export.precision import check_placement

    return check_placement(placement, str(path))


def _check_sampling(path: Path, sampling: dict) -> None:
    """A profile's solver settings are refused at build time, not at the first generate."""
    from wan_rt.schedulers import SCHEDULERS
    from wan_rt.schedulers.dmd import check_timesteps

    solver = sampling.get("solver", "unipc")
    if solver not in SCHEDULERS:
        raise WanError(f"{path}: sampling.solver = {solver!r} is not one of {sorted(SCHEDULERS)}")
    if "timesteps" in sampling:
        if solver != "dmd":
            raise WanError(f"{path}: sampling.timesteps is for solver 'dmd' only (solver is {solver!r})")
        try:
            steps = check_timesteps(sampling["timesteps"])
        except WanError as exc:
            raise WanError(f"{path}: sampling.{exc}") from None
        if sampling.get("steps", len(steps)) != len(steps):
            raise WanError(f"{path}: sampling.steps = {sampling['steps']} but sampling.timesteps lists {len(steps)}")
    if not isinstance(sampling.get("warp_timesteps", True), bool):
        raise WanError(f"{path}: sampling.warp_timesteps must be true or false")
