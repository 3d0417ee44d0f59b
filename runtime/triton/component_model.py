"""Triton python-backend model for one engine of the manifest (text_encoder, dit, vae_encoder, vae_decoder_first,
vae_decoder_step), run with wan-rt's backend for it (ONNX Runtime for the CPU server; TensorRT where installed).

Copied by `wan-export triton --platform python` into REPOSITORY/<component>/1/model.py. Its inputs and outputs are
the manifest's, with the same names, dtypes and shapes; the request is validated against the built ranges first,
so a shape outside them is answered with one clear error line. The `wan_video` model calls these through BLS when
the repository was written with --bls; a client (e.g. C++) can drive them one by one the same way.

Parameters: `component`, `engines` (absolute, or relative to the repository folder; $WAN_RT_ENGINES overrides it),
`wan_rt_path` (the folder holding the wan_rt package), `verify` ("true": sha256 of the engine files at load).
"""
import json
import sys

import numpy as np
import triton_python_backend_utils as pb_utils


def _runtime_on_path(args) -> None:  # the stub environment may lack wan_rt: `wan_rt_path` names its folder
    path = json.loads(args["model_config"]).get("parameters", {}).get("wan_rt_path", {}).get("string_value", "")
    if path and path not in sys.path:
        sys.path.insert(0, path)


class TritonPythonModel:
    def initialize(self, args):
        _runtime_on_path(args)
        from wan_rt.backends import open_runner
        from wan_rt.errors import WanError
        from wan_rt.manifest import load_manifest
        from wan_rt.triton_models import model_context

        self.WanError = WanError
        context = model_context(args)
        self.name = context.name
        component = context.parameters.get("component") or self.name
        try:
            manifest = load_manifest(context.engines, verify=context.verify)
            self.component = manifest.component(component)
            self.runner = open_runner(manifest, component)
            self.runner.__enter__()
        except WanError as exc:
            raise pb_utils.TritonModelException(f"{self.name}: {exc}") from None
        self.output_names = [tensor.name for tensor in self.component.outputs]

    def execute(self, requests):
        from wan_rt.triton_models import answer_each

        return answer_each(pb_utils, self.name, requests, self._run)

    def _run(self, request):
        from wan_rt.finite import all_finite, check_finite

        feeds = {}
        for tensor in self.component.inputs:
            value = pb_utils.get_input_tensor_by_name(request, tensor.name)
            if value is None:
                raise self.WanError(f"{self.name}: input {tensor.name} is missing")
            feeds[tensor.name] = value.as_numpy()
            if not all_finite(feeds[tensor.name]):  # NaN in, NaN out: refuse the request instead
                raise self.WanError(f"{self.name}: input {tensor.name} holds NaN or Inf values")
        outputs = self.runner.run(feeds)
        check_finite(list(outputs.values()), self.component.name, "in the Triton component model")
        requested = request.requested_output_names() or self.output_names
        return pb_utils.InferenceResponse(
            output_tensors=[pb_utils.Tensor(name, np.ascontiguousarray(outputs[name])) for name in requested
                            if name in outputs])

    def finalize(self):
        runner, self.runner = getattr(self, "runner", None), None
        if runner is not None:
            runner.__exit__(None, None, None)
