"""A POST /v1/videos body checked into a job, before anything is stored.

The fields are OpenAI's (`prompt`, `model`, `size`, `seconds`, `input_reference`) and the project's extras, named
and typed as in `wan-rt generate --requests` (wan_rt.requests_file.FIELDS: one parser for both). The checks against
the engines are `Pipeline.prepare`'s own (wan_rt.request_checks, the shape limits, the solver and step cache), run
on the API's engine-less Pipeline: a refused request gets exactly the line `wan-rt generate` prints after "error: ".
"""
from __future__ import annotations

import base64
import binascii
import math
import os
import secrets
import tempfile
import time
from pathlib import Path

from wan_rt.errors import WanError
from wan_rt.request_checks import check_number
from wan_rt.requests_file import FIELDS
from wan_rt.service.jobs import Job, frames_for_seconds, map_size, seconds_text

# the project's options a client may set (no server paths: image, noise, out, save_latents)
EXTRA_FIELDS = ("negative_prompt", "frames", "steps", "shift", "guide_scale", "solver", "timesteps",
                "warp_timesteps", "seed", "fps", "cache", "cache_threshold", "decoder")
OPENAI_FIELDS = ("prompt", "model", "size", "seconds", "input_reference")
_FORM_INTEGERS = ("frames", "steps", "seed", "fps")
_FORM_NUMBERS = ("shift", "guide_scale", "cache_threshold")


class RequestError(Exception):
    """A refused request: HTTP status, one-line message, the field it is about."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str = "invalid_request"):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def _from_form(name: str, value):
    """Multipart fields arrive as text: the numbers and flags of the JSON form."""
    if not isinstance(value, str):
        return value
    try:
        if name in _FORM_INTEGERS:
            return int(value)
        if name in _FORM_NUMBERS:
            return float(value)  # "nan" stays NaN: refused below with the CLI's line
    except ValueError:
        raise RequestError(400, f"field {name!r} must be a {'whole ' if name in _FORM_INTEGERS else ''}number, "
                                f"got {value!r}", name) from None
    if name == "warp_timesteps" and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return value


def decode_data_url(url: str) -> bytes:
    """`input_reference.image_url` as a base64 data URL (the server fetches no URLs)."""
    if not url.startswith("data:") or ";base64," not in url:
        raise RequestError(400, "input_reference image_url must be a base64 data URL (data:image/png;base64,...); "
                                "this server fetches no URLs: upload the image file as input_reference instead",
                           "input_reference")
    try:
        return base64.b64decode(url.split(";base64,", 1)[1], validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(400, "input_reference image_url is not valid base64", "input_reference") from None


def build_job(body: dict, image: bytes | None, pipeline, owner: str, model_name: str, from_form: bool,
              scratch: Path) -> Job:
    """The job for `body` (field -> value) and the uploaded image, checked as `wan-rt generate` checks its
    options; RequestError (400) otherwise. `pipeline`: a Pipeline over the served engines (none opened)."""
    unknown = sorted(set(body) - set(OPENAI_FIELDS) - set(EXTRA_FIELDS))
    if unknown:
        raise RequestError(400, f"unknown field {unknown[0]!r}; fields are {', '.join(OPENAI_FIELDS + EXTRA_FIELDS)}",
                           unknown[0])
    if body.get("prompt") is None:
        raise RequestError(400, "prompt is required: say what the video shows", "prompt")
    model = body.get("model") or model_name
    if model != model_name:
        raise RequestError(400, f"model {model!r} is not served here; this server serves {model_name!r} (or omit "
                                f"model)", "model", "model_not_found")
    values = {}
    for name in ("prompt", *EXTRA_FIELDS):
        value = body.get(name)
        if value is None:
            continue
        value = _from_form(name, value) if from_form else value
        try:
            values[name] = FIELDS[name](value, name)
        except ValueError as exc:
            raise RequestError(400, f"field {name!r} {exc}", name) from None
    limits, sampling = pipeline.manifest.limits, pipeline.manifest.sampling
    try:
        size = map_size(body.get("size"), limits)
    except WanError as exc:
        raise RequestError(400, str(exc), "size") from None
    fps = values.get("fps", sampling["fps"])
    prefix = ""
    if body.get("seconds") is not None:
        if "frames" in values:
            raise RequestError(400, "give seconds or frames, not both", "seconds")
        text = body["seconds"]
        try:
            seconds = check_number("seconds", float(text) if isinstance(text, str) else text, above=0.0)
        except ValueError:
            raise RequestError(400, f"seconds must be a number, got {text!r}", "seconds") from None
        except WanError as exc:
            raise RequestError(400, str(exc), "seconds") from None
        if not math.isfinite(seconds * fps) or seconds * fps > 1e6:
            raise RequestError(400, f"seconds {text} is far longer than any engines can run", "seconds")
        values["frames"] = frames_for_seconds(seconds, fps)
        prefix = f"seconds {text} at {fps:g} fps is {values['frames']} frames: "
    values.setdefault("frames", limits.default_frames)
    if values.get("seed") is None or values["seed"] < 0:  # drawn here: a job that runs again runs the same video
        values["seed"] = secrets.randbelow(2**31)
    params = {**values, "size": list(size)}
    params.pop("prompt")
    check_runnable(pipeline, values["prompt"], params, image, scratch, prefix)
    return Job(id="video_" + secrets.token_hex(12), owner=owner, prompt=values["prompt"], model=model,
               size=f"{size[0]}x{size[1]}", seconds=seconds_text(values["frames"], fps), params=params, image=image,
               created_at=time.time())


def make_request(prompt: str, params: dict, image_path: Path | None):
    """The GenerationRequest a job runs."""
    from wan_rt.pipeline import GenerationRequest

    fields = dict(params)
    fields["size"] = tuple(fields["size"])
    return GenerationRequest(prompt=prompt, image=image_path, **fields)


def check_runnable(pipeline, prompt: str, params: dict, image: bytes | None, scratch: Path, prefix: str = ""):
    """`Pipeline.prepare` on the request (the image through a scratch file): the CLI's checks and lines."""
    image_path = None
    try:
        if image is not None:
            handle, name = tempfile.mkstemp(dir=scratch, prefix=".upload-")
            with os.fdopen(handle, "wb") as file:
                file.write(image)
            image_path = Path(name)
        request = make_request(prompt, params, image_path)
        try:
            pipeline.prepare(request)
        except WanError as exc:
            message = str(exc)
            if image_path is not None:  # name the upload, not the scratch file
                message = message.replace(repr(str(image_path)), "input_reference").replace(str(image_path),
                                                                                          "input_reference")
            raise RequestError(400, prefix + message) from None
    finally:
        if image_path is not None:
            image_path.unlink(missing_ok=True)
