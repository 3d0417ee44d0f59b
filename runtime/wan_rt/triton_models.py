"""Helpers shared by the Triton python-backend models in runtime/triton/ (imported once wan_rt is on the path)."""
from __future__ import annotations

import json
import locale
import logging
import os
import traceback
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("wan_rt.triton")


def engines_path(parameters: dict, model_directory: str) -> Path:
    """The engines folder a model serves: $WAN_RT_ENGINES, else its `engines` parameter (relative to the repository)."""
    override = os.environ.get("WAN_RT_ENGINES")
    path = Path(override or parameters.get("engines", ""))
    if not path.is_absolute():  # relative to the repository folder (the parent of this model's folder)
        path = Path(model_directory).parent / path
    return path


def use_utf8_locale() -> None:
    """Text files default to UTF-8 like everywhere else in wan-rt: the stub's interpreter takes the server's locale,
    often C (ASCII) in containers and services, where the manifest's non-ASCII negative prompt would not load."""
    if locale.getpreferredencoding(False).lower().replace("-", "") == "utf8":
        return
    for name in ("C.UTF-8", "C.utf8", "en_US.UTF-8"):
        try:
            locale.setlocale(locale.LC_CTYPE, name)
            return
        except locale.Error:
            continue


def error_response(pb_utils, message: str, code: str = "INVALID_ARG"):
    """An error answer: INVALID_ARG (HTTP 400) for a refused request, INTERNAL (500) for a bug."""
    code = getattr(pb_utils.TritonError, code, None)
    error = pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)
    return pb_utils.InferenceResponse(output_tensors=[], error=error)


@dataclass(frozen=True)
class ModelContext:
    """What a Triton model's `initialize` args say, read once: name, string parameters, engines folder."""

    name: str
    parameters: dict
    engines: Path
    verify: bool  # sha256 of the engine files at load


def model_context(args: dict) -> ModelContext:
    """Read the model config Triton hands to `initialize` and switch to a UTF-8 locale."""
    config = json.loads(args["model_config"])
    parameters = {key: value.get("string_value", "") for key, value in config.get("parameters", {}).items()}
    use_utf8_locale()
    return ModelContext(name=args["model_name"], parameters=parameters,
                        engines=engines_path(parameters, args["model_repository"]),
                        verify=parameters.get("verify", "true") == "true")


def answer_each(pb_utils, model_name: str, requests, answer) -> list:
    """`answer(request)` for each request; a WanError becomes an INVALID_ARG answer with its line, anything else an
    INTERNAL one with the trace in the server log. Either way the model keeps serving."""
    from wan_rt.errors import WanError

    responses = []
    for request in requests:
        try:
            responses.append(answer(request))
        except WanError as exc:
            responses.append(error_response(pb_utils, str(exc)))
        except Exception as exc:  # noqa: BLE001 (a bug, not a bad request)
            log.error("%s: %s", model_name, traceback.format_exc())
            responses.append(error_response(pb_utils, f"internal error: {type(exc).__name__}: {exc}", "INTERNAL"))
    return responses
