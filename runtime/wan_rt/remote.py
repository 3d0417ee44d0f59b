"""Runners that forward a component call elsewhere, and the host loop over them.

`ForwardingRunner` validates feeds against the manifest like every backend runner, then hands them to a function:
a BLS call to a component model inside Triton (the `wan_video` model with --bls), or an HTTP call to a server's
component models from a client (`http_call`). `RunnerPipeline` is the unchanged `Pipeline` host loop over them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from wan_rt.backends.base import check_feeds
from wan_rt.errors import WanError
from wan_rt.manifest import ComponentInfo
from wan_rt.pipeline import Pipeline
from wan_rt.serve import INSTALL_HINT


class ForwardingRunner:
    """A runner for `Pipeline`: `run(feeds)` checks the feeds against the manifest, then returns
    `call(feeds, output_names)` (a BLS request to a component model, an HTTP request to a server, ...)."""

    def __init__(self, component: ComponentInfo, call: Callable[[dict, list], dict]):
        self.component = component
        self.call = call
        self.output_names = [tensor.name for tensor in component.outputs]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def run(self, feeds: dict[str, np.ndarray], keep=()) -> dict[str, np.ndarray]:
        """`keep` is accepted for the Runner API and has no effect: every tensor crosses to the component model."""
        check_feeds(self.component, feeds)
        outputs = self.call(feeds, self.output_names)
        missing = [name for name in self.output_names if name not in outputs]
        if missing:
            raise WanError(f"{self.component.name}: the call returned no {missing}; the component model does not "
                           f"match the manifest")
        return outputs

    def to_device(self, array: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(array)  # the component model is the device; feeds go with each call

    def preflight(self) -> None:
        pass


class RunnerPipeline(Pipeline):
    """The `Pipeline` host loop (text, denoise, streaming decode) over runners from `make_runner(component)`
    instead of engines opened here. The engines folder still provides the manifest and the tokenizer."""

    def __init__(self, engines: str | Path, make_runner: Callable[[ComponentInfo], object], verify: bool = True,
                 show_progress: bool = False):
        # the component models hold the engines (a server keeps them open): nothing to stage here
        super().__init__(engines, verify=verify, show_progress=show_progress, memory="keep")
        self._make_runner = make_runner
        self._forwarding = {}

    def runner(self, name: str):
        if name not in self._forwarding:
            self._forwarding[name] = self._make_runner(self.manifest.component(name))
        return self._forwarding[name]


def http_call(url: str, model_name: str, client=None) -> Callable[[dict, list], dict]:
    """A `ForwardingRunner` call to a component model over KServe v2 HTTP (needs tritonclient[http])."""
    try:
        import tritonclient.http as httpclient
        from tritonclient.utils import InferenceServerException, np_to_triton_dtype
    except ImportError:
        raise WanError(f"tritonclient is not installed: {INSTALL_HINT}") from None
    client = client or httpclient.InferenceServerClient(url.split("://", 1)[-1])

    def call(feeds: dict, output_names: list) -> dict:
        inputs = []
        for name, array in feeds.items():
            tensor = httpclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(np.ascontiguousarray(array), binary_data=True)
            inputs.append(tensor)
        outputs = [httpclient.InferRequestedOutput(name, binary_data=True) for name in output_names]
        try:
            result = client.infer(model_name, inputs, outputs=outputs)
        except InferenceServerException as exc:
            raise WanError(f"{model_name}: {exc.message()}") from None
        return {name: result.as_numpy(name) for name in output_names}

    return call
