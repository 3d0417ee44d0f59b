"""Helpers shared by the Triton python-backend models in runtime/triton/ (imported once wan_rt is on the path)."""
from __future__ import annotations

import locale
import os
from pathlib import Path


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
