"""`wan-rt generate --requests FILE.jsonl`: many videos in one run, one JSON object per line.

Each line has the fields of `wan-rt generate`'s options, in snake case:

    {"prompt": "a fox in the snow", "out": "fox.mp4", "seed": 1}
    {"prompt": "the scene comes alive", "image": "in.png", "out": "i2v.mp4", "frames": 17, "steps": 30}

Fields: prompt and out (required), negative_prompt, image, size ("WxH"), frames, steps, shift, guide_scale,
solver, timesteps (list or "1000,757,522"), warp_timesteps, seed, noise (a .npy path), save_latents, fps, cache,
cache_threshold, decoder ("full" | "tiny"), preview_every, preview (default: out with .preview.mp4).
Blank lines and lines starting with # are skipped. Every line is checked before any work starts;
a bad one is one error naming its line number and field, and nothing runs. Relative paths are relative to the
current folder, as on the command line.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wan_rt.errors import WanError
from wan_rt.request_checks import check_request
from wan_rt.shapes import parse_size

SOLVERS = ("unipc", "dpm++", "euler", "dmd")
CACHES = ("none", "magcache", "teacache", "easycache")


@dataclass
class Job:
    """One line of the file: the request, where its video (and latents) go, and the line it came from."""
    line: int
    request: object  # wan_rt.pipeline.GenerationRequest
    out: Path
    save_latents: Path | None = None


def _string(value, name):
    if not isinstance(value, str):
        raise ValueError(f"must be a string, got {json.dumps(value)}")
    return value


def _text(value, name):
    text = _string(value, name)
    if not text.strip():
        raise ValueError("must not be empty")
    return text


def _integer(minimum):
    def parse(value, name):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be a whole number, got {json.dumps(value)}")
        if minimum is not None and value < minimum:
            raise ValueError(f"must be >= {minimum}, got {value}")
        return value
    return parse


def _number(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"must be a number, got {json.dumps(value)}")
    return float(value)


def _choice(options):
    def parse(value, name):
        if value not in options:
            raise ValueError(f"must be one of {', '.join(options)}, got {json.dumps(value)}")
        return value
    return parse


def _flag(value, name):
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {json.dumps(value)}")
    return value


def _path(value, name):
    return Path(_text(value, name))


def _existing_file(value, name):
    path = _path(value, name)
    if not path.is_file():
        raise ValueError(f"{path} does not exist")
    return path


def _output(value, name):
    path = _path(value, name)
    if not path.parent.is_dir():
        raise ValueError(f"folder {path.parent} does not exist")
    return path


def _size(value, name):
    try:
        return parse_size(_string(value, name))
    except WanError as exc:
        raise ValueError(str(exc)) from None


def _timesteps(value, name):
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise ValueError(f"must be a list of whole numbers or a string like \"1000,757,522\", got {json.dumps(value)}")
    try:
        return [int(item) if isinstance(item, str) else _integer(None)(item, name) for item in items]
    except ValueError:
        raise ValueError(f"must be whole numbers, got {json.dumps(value)}") from None


def _noise(value, name):
    path = _existing_file(value, name)
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None


# field -> parser; the request's fields and the two outputs
FIELDS = {
    "prompt": _text, "negative_prompt": _string, "image": _existing_file, "size": _size,
    "frames": _integer(1), "steps": _integer(1), "shift": _number, "guide_scale": _number,
    "solver": _choice(SOLVERS), "timesteps": _timesteps, "warp_timesteps": _flag, "seed": _integer(None),
    "noise": _noise, "fps": _integer(1), "cache": _choice(CACHES), "cache_threshold": _number,
    "decoder": _choice(("full", "tiny")), "preview_every": _integer(0), "preview": _output,
    "out": _output, "save_latents": _output,
}
REQUIRED = ("prompt", "out")


def _parse_line(number: int, text: str, make_request) -> Job:
    where = f"requests line {number}"
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise WanError(f"{where}: not a JSON object ({exc.msg} at column {exc.colno})") from None
    if not isinstance(data, dict):
        raise WanError(f"{where}: not a JSON object")
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise WanError(f"{where}: unknown field {unknown[0]!r}; fields are {', '.join(FIELDS)}")
    for name in REQUIRED:
        if data.get(name) is None:
            raise WanError(f"{where}: field {name!r} is required")
    values = {}
    for name, value in data.items():
        if value is None:
            continue
        try:
            values[name] = FIELDS[name](value, name)
        except ValueError as exc:
            raise WanError(f"{where}: field {name!r} {exc}") from None
    out, save_latents = values.pop("out"), values.pop("save_latents", None)
    if values.get("preview_every") and "preview" not in values:
        from wan_rt.preview import default_preview_path

        values["preview"] = default_preview_path(out)
    request = make_request(**values)
    try:
        check_request(request)
    except WanError as exc:
        raise WanError(f"{where}: {exc}") from None
    return Job(line=number, request=request, out=out, save_latents=save_latents)


def read_requests(source: str | Path, make_request) -> list[Job]:
    """Every job of the file ('-': standard input), each line checked; `make_request(**fields)` builds one."""
    if str(source) == "-":
        text = sys.stdin.read()
    else:
        try:
            text = Path(source).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise WanError(f"cannot read requests file {source}: {getattr(exc, 'strerror', None) or exc}") from None
    jobs = [_parse_line(number, line, make_request) for number, line in enumerate(text.splitlines(), 1)
            if line.strip() and not line.lstrip().startswith("#")]
    if not jobs:
        raise WanError(f"requests file {source} has no requests (one JSON object per line)")
    seen: dict[Path, int] = {}
    for job in jobs:
        for path in (job.out, job.save_latents):
            if path is None:
                continue
            key = path.resolve()
            if key in seen:
                raise WanError(f"requests line {job.line}: output {path} is also written by line {seen[key]}")
            seen[key] = job.line
    return jobs
