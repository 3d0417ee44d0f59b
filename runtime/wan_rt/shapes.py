"""The video shapes a set of engines accepts, and the checks that turn a bad request into one clear line.

Written by the exporter from a build profile into manifest.json; read back by the runtime.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from wan_rt.errors import WanError

TEMPORAL_STRIDE = 4  # pixel frames per latent frame (after the first)
SPATIAL_STRIDE = 16  # pixels per latent cell
TOKEN_STRIDE = 32  # pixels per DiT token side (VAE 16 x patch 2)


def latent_frames(frames: int) -> int:
    return (frames - 1) // TEMPORAL_STRIDE + 1


def parse_size(text: str) -> tuple[int, int]:
    """'1280x704' -> (1280, 704) as (width, height); also accepts the official '1280*704'."""
    for sep in ("x", "*", "X"):
        if sep in text:
            parts = text.split(sep)
            if len(parts) == 2 and all(p.strip().isdigit() for p in parts):
                return int(parts[0]), int(parts[1])
    raise WanError(f"size {text!r} is not WIDTHxHEIGHT, e.g. 1280x704")


@dataclass(frozen=True)
class ShapeLimits:
    width: tuple[int, int]
    height: tuple[int, int]
    max_area: int
    multiple: int
    frames: tuple[int, int]
    batch: tuple[int, int]
    default_size: tuple[int, int]  # (width, height): the optimization point and the default request
    default_frames: int

    def __post_init__(self):
        for name in ("width", "height"):
            low, high = getattr(self, name)
            if low % self.multiple or high % self.multiple or low > high:
                raise WanError(f"profile {name} range {low}..{high} must be multiples of {self.multiple}, min <= max")
        if self.multiple % TOKEN_STRIDE:
            raise WanError(f"profile multiple {self.multiple} must be a multiple of {TOKEN_STRIDE}")
        for frames in self.frames:
            if (frames - 1) % TEMPORAL_STRIDE:
                raise WanError(f"profile frame count {frames} is not 4n+1")
        self.check_size(*self.default_size)
        self.check_frames(self.default_frames)

    # -- requests ---------------------------------------------------------------------------------------
    def check_size(self, width: int, height: int) -> None:
        if width % self.multiple or height % self.multiple:
            raise WanError(f"size {width}x{height} is not a multiple of {self.multiple}; "
                           f"e.g. {width // self.multiple * self.multiple}x{height // self.multiple * self.multiple}")
        if not (self.width[0] <= width <= self.width[1] and self.height[0] <= height <= self.height[1]) \
                or width * height > self.max_area:
            raise WanError(
                f"size {width}x{height} is outside what these engines were built for: width {self.width[0]}..{self.width[1]}, "
                f"height {self.height[0]}..{self.height[1]}, area <= {self.max_area}; pick a size in range or rebuild "
                f"with a profile that covers it")

    def check_frames(self, frames: int) -> None:
        if frames < 1 or (frames - 1) % TEMPORAL_STRIDE:
            raise WanError(f"frame count {frames} is not 4n+1 (e.g. {max(1, (frames - 1) // 4 * 4 + 1)} or "
                           f"{(max(frames, 1) - 1 + 3) // 4 * 4 + 1})")
        if not self.frames[0] <= frames <= self.frames[1]:
            raise WanError(f"frame count {frames} is outside what these engines were built for "
                           f"({self.frames[0]}..{self.frames[1]}); rebuild with a profile that covers it")

    # -- derived engine dimensions ------------------------------------------------------------------------
    def _smallest_area(self) -> int:
        return self.width[0] * self.height[0]

    def _largest_area(self) -> int:
        area = min(self.max_area, self.width[1] * self.height[1])
        return area // (self.multiple * self.multiple) * self.multiple * self.multiple

    def token_range(self) -> tuple[int, int]:
        low = latent_frames(self.frames[0]) * self._smallest_area() // TOKEN_STRIDE**2
        high = latent_frames(self.frames[1]) * self._largest_area() // TOKEN_STRIDE**2
        return low, high

    def default_tokens(self) -> int:
        width, height = self.default_size
        return latent_frames(self.default_frames) * (width // TOKEN_STRIDE) * (height // TOKEN_STRIDE)

    def latent_height_range(self) -> tuple[int, int]:
        return self.height[0] // SPATIAL_STRIDE, self.height[1] // SPATIAL_STRIDE

    def latent_width_range(self) -> tuple[int, int]:
        return self.width[0] // SPATIAL_STRIDE, self.width[1] // SPATIAL_STRIDE

    def extreme_sizes(self) -> list[tuple[int, int]]:
        """Smallest and largest allowed (width, height), for checks across the range."""
        smallest = (self.width[0], self.height[0])
        side = self.multiple
        largest = max(
            ((w, h) for w in range(self.width[0], self.width[1] + 1, side)
             for h in range(self.height[0], self.height[1] + 1, side) if w * h <= self.max_area),
            key=lambda wh: (wh[0] * wh[1], wh[0]))
        return [smallest, largest]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ShapeLimits":
        try:
            return cls(
                width=tuple(data["width"]), height=tuple(data["height"]), max_area=int(data["max_area"]),
                multiple=int(data["multiple"]), frames=tuple(data["frames"]), batch=tuple(data["batch"]),
                default_size=tuple(data["default_size"]), default_frames=int(data["default_frames"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise WanError(f"shape limits are incomplete or malformed ({exc!r})") from None
