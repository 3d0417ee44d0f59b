"""A video job: what the queue stores, OpenAI's `size` / `seconds` mapped onto the engines, the `Video` object.

The mapping rule (docs/serving.md):
- `size` "WxH": each side rounded down to the engines' multiple (32 for the Wan2.2 profiles), so OpenAI's
  "1280x720" runs as 1280x704 on the 720p engines and "720x1280" as 704x1280; the engines' default size when
  omitted. For image-to-video it is the area bound, as `wan-rt generate --size`.
- `seconds`: seconds x fps frames, rounded to the nearest 4n+1 frame count (OpenAI's "4" at 24 fps: 97 frames);
  the `frames` extra field gives the count directly (not both); the engines' default frame count when omitted.
The job echoes what runs: `size` as the engines' WxH, `seconds` as frames / fps.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from wan_rt.errors import WanError
from wan_rt.shapes import TEMPORAL_STRIDE, ShapeLimits, parse_size

STATES = ("queued", "in_progress", "completed", "failed")
TERMINAL = ("completed", "failed")


def map_size(text: str | None, limits: ShapeLimits) -> tuple[int, int]:
    """(width, height) the engines run for OpenAI's `size` (checked against the engines later, by the Pipeline)."""
    if text is None:
        return tuple(limits.default_size)
    if not isinstance(text, str):
        raise WanError(f"size must be a string WIDTHxHEIGHT, e.g. \"1280x720\", got {json.dumps(text)}")
    width, height = parse_size(text)
    return width // limits.multiple * limits.multiple or width, height // limits.multiple * limits.multiple or height


def frames_for_seconds(seconds: float, fps: float) -> int:
    """The nearest 4n+1 frame count to `seconds` x `fps` (at least 1)."""
    return max(0, round((seconds * fps - 1) / TEMPORAL_STRIDE)) * TEMPORAL_STRIDE + 1


def seconds_text(frames: int, fps: float) -> str:
    """A frame count as OpenAI's `seconds` string: "4.042" for 97 frames at 24 fps."""
    return f"{frames / fps:.3f}".rstrip("0").rstrip(".")


@dataclass
class Job:
    id: str
    owner: str  # who may see it: a hash of the API key ("" when the server takes no keys)
    prompt: str
    model: str
    size: str  # what runs, "WxH"
    seconds: str  # what runs: frames / fps
    params: dict  # the GenerationRequest's fields (JSON values, no image): what the worker runs
    image: bytes | None = None  # image-to-video: the uploaded first frame, as uploaded
    status: str = "queued"
    progress: int = 0
    created_at: float = 0.0
    started_at: float | None = None
    completed_at: float | None = None
    error_code: str | None = None
    error_message: str | None = None
    worker: str | None = None  # who holds the lease
    attempt: int = 0  # claims so far; the lease token is (worker, attempt)
    lease_until: float | None = None
    output: str | None = None  # file names under the outputs folder
    thumbnail: str | None = None
    timings: dict = field(default_factory=dict)  # seconds per stage (text, image, denoise, decode, write)

    def video_object(self) -> dict:
        """The OpenAI `Video` object (and the project's extras: frames, seed, attempts)."""
        return {
            "id": self.id, "object": "video", "model": self.model, "status": self.status,
            "progress": self.progress, "created_at": int(self.created_at),
            "completed_at": int(self.completed_at) if self.completed_at is not None else None,
            "expires_at": None, "prompt": self.prompt, "seconds": self.seconds, "size": self.size,
            "remixed_from_video_id": None,
            "error": {"code": self.error_code, "message": self.error_message} if self.error_message else None,
            "frames": self.params.get("frames"), "seed": self.params.get("seed"), "attempts": self.attempt,
        }

    def params_json(self) -> str:
        return json.dumps(self.params)

    def timings_json(self) -> str:
        return json.dumps(self.timings)
