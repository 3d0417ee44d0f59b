"""Triton python-backend model `wan_video`: the whole wan-rt host loop behind one request.

Copied by `wan-export triton` into REPOSITORY/wan_video/1/model.py. No torch: it imports `wan_rt`, found through
the model's `wan_rt_path` parameter (the folder holding the wan_rt package; added to sys.path here) or the stub
environment named by EXECUTION_ENV_PATH.

Inputs (all but `prompt` optional; a missing one takes the manifest's default):
  prompt, negative_prompt, solver: TYPE_STRING [1]      image: TYPE_UINT8 [H, W, 3] (image-to-video)
  width, height, frames, steps, fps: TYPE_INT32 [1]     seed: TYPE_INT64 [1]     guide_scale, shift: TYPE_FP32 [1]
  cache: TYPE_STRING [1] (none | magcache | teacache | easycache)   cache_threshold: TYPE_FP32 [1]
  decoder: TYPE_STRING [1] (full | tiny: the TAEHV decoder, when the engines have it)
Outputs: video TYPE_UINT8 [F, H, W, 3], mp4 TYPE_STRING [1] (the H.264 file's bytes), seed_used TYPE_INT64 [1].
Only the requested outputs are made (no MP4 encode when only `video` is asked for).

Parameters: `engines` (absolute, or relative to the repository folder; $WAN_RT_ENGINES overrides it), `bls`
("true": the engines run in the component models, called through BLS, instead of in this process),
`component_models` (JSON: component -> model name), `verify` ("true": sha256 of the engine files at load).

A bad request (size outside the engines' range, frames not 4n+1, unknown solver, ...) is answered with a Triton
error carrying wan-rt's one-line message; the model keeps serving.
"""
import json
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

log = logging.getLogger("wan_rt.triton")

OUTPUTS = ("video", "mp4", "seed_used")
INT_INPUTS = ("width", "height", "frames", "steps", "fps", "seed")
FLOAT_INPUTS = ("guide_scale", "shift", "cache_threshold")


def _runtime_on_path(args) -> None:  # the stub environment may lack wan_rt: `wan_rt_path` names its folder
    path = json.loads(args["model_config"]).get("parameters", {}).get("wan_rt_path", {}).get("string_value", "")
    if path and path not in sys.path:
        sys.path.insert(0, path)


class TritonPythonModel:
    def initialize(self, args):
        _runtime_on_path(args)
        from wan_rt.errors import WanError
        from wan_rt.pipeline import GenerationRequest, Pipeline
        from wan_rt.triton_models import model_context

        self.WanError = WanError
        self.GenerationRequest = GenerationRequest
        context = model_context(args)
        self.name, parameters = context.name, context.parameters
        engines, verify = context.engines, context.verify
        self.bls = parameters.get("bls", "false") == "true"
        try:
            if self.bls:
                from wan_rt.remote import ForwardingRunner, RunnerPipeline

                models = json.loads(parameters.get("component_models") or "{}")

                def make_runner(component):
                    return ForwardingRunner(component, _bls_call(models.get(component.name, component.name)))

                self.pipeline = RunnerPipeline(engines, make_runner, verify=verify, show_progress=False)
            else:
                # a server answers many requests: every engine stays open
                self.pipeline = Pipeline(engines, verify=verify, show_progress=False, memory="keep")
                for component in ("text_encoder", "dit", "dit_skip", "dit_time", "vae_encoder", "vae_decoder_first",
                                  "vae_decoder_step"):
                    if component in self.pipeline.manifest.components:
                        self.pipeline.runner(component)  # open every engine now: a broken one fails the load
        except WanError as exc:
            raise pb_utils.TritonModelException(f"{self.name}: {exc}") from None
        self.manifest = self.pipeline.manifest
        log.info("%s: engines %s (%s)", self.name, engines, "BLS to the component models" if self.bls else
                 "engines in this process")

    def execute(self, requests):
        from wan_rt.triton_models import answer_each

        return answer_each(pb_utils, self.name, requests, self._generate)

    def finalize(self):
        pipeline, self.pipeline = getattr(self, "pipeline", None), None
        if pipeline is not None:
            pipeline.close()

    # -- one request ------------------------------------------------------------------------------------------------
    def _input(self, request, name):
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        return None if tensor is None else tensor.as_numpy()

    def _scalar(self, request, name, kind):
        array = self._input(request, name)
        if array is None:
            return None
        if array.size != 1:
            raise self.WanError(f"input {name} must be one value, got shape {list(array.shape)}")
        value = array.reshape(-1)[0]
        if kind is str:
            if isinstance(value, bytes):
                try:
                    return value.decode("utf-8")
                except UnicodeDecodeError:
                    raise self.WanError(f"input {name} is not UTF-8 text") from None
            return str(value)
        return kind(value)

    def _generate(self, request):
        prompt = self._scalar(request, "prompt", str)
        if prompt is None:
            raise self.WanError("input prompt is required")
        values = {name: self._scalar(request, name, int) for name in INT_INPUTS}
        values.update({name: self._scalar(request, name, float) for name in FLOAT_INPUTS})
        width, height = values.pop("width"), values.pop("height")
        if (width is None) != (height is None):
            raise self.WanError("give both width and height, or neither (the engines' default size)")
        for name in ("width", "height", "frames", "steps", "fps"):
            value = width if name == "width" else height if name == "height" else values.get(name)
            if value is not None and value < 1:
                raise self.WanError(f"input {name} must be at least 1, got {value}")
        requested = set(request.requested_output_names()) or set(OUTPUTS)
        with tempfile.TemporaryDirectory(prefix="wan-video-") as tmp:
            image_path = self._image_file(request, Path(tmp))
            generation = self.GenerationRequest(
                prompt=prompt, negative_prompt=self._scalar(request, "negative_prompt", str), image=image_path,
                size=(width, height) if width is not None else None, frames=values["frames"], steps=values["steps"],
                shift=values["shift"], guide_scale=values["guide_scale"], solver=self._scalar(request, "solver", str),
                seed=values["seed"], fps=values["fps"], cache=self._scalar(request, "cache", str),
                cache_threshold=values["cache_threshold"], decoder=self._scalar(request, "decoder", str))
            frames_file = Path(tmp) / "video.npy"
            result = self.pipeline.generate(generation, frames_file)
            video = np.load(frames_file)
            outputs = []
            if "video" in requested:
                outputs.append(pb_utils.Tensor("video", video))
            if "mp4" in requested:
                from wan_rt.video import open_video_writer

                mp4 = Path(tmp) / "video.mp4"
                with open_video_writer(mp4, values["fps"] or self.manifest.sampling["fps"], result.width,
                                       result.height) as writer:
                    writer.write(video)
                outputs.append(pb_utils.Tensor("mp4", np.array([mp4.read_bytes()], dtype=np.object_)))
            if "seed_used" in requested:
                seed = -1 if result.seed is None else result.seed
                outputs.append(pb_utils.Tensor("seed_used", np.array([seed], dtype=np.int64)))
        log.info("%s: %s", self.name, result.summary())
        return pb_utils.InferenceResponse(output_tensors=outputs)

    def _image_file(self, request, folder: Path):
        """The `image` input as a PNG file for the pipeline's official preprocessing (None: text-to-video)."""
        array = self._input(request, "image")
        if array is None:
            return None
        if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8 or 0 in array.shape:
            raise self.WanError(f"input image must be uint8 RGB [height, width, 3], got {array.dtype} "
                                f"{list(array.shape)}")
        from PIL import Image

        path = folder / "image.png"
        Image.fromarray(np.ascontiguousarray(array), "RGB").save(path)
        return path


def _bls_call(model_name: str):
    """A `ForwardingRunner` call that runs a component model of this server through BLS."""
    from wan_rt.errors import WanError

    def call(feeds: dict, output_names: list) -> dict:
        inputs = [pb_utils.Tensor(name, np.ascontiguousarray(array)) for name, array in feeds.items()]
        response = pb_utils.InferenceRequest(model_name=model_name, requested_output_names=list(output_names),
                                             inputs=inputs).exec()
        if response.has_error():
            raise WanError(f"{model_name}: {response.error().message()}")
        outputs = {}
        for name in output_names:
            tensor = pb_utils.get_output_tensor_by_name(response, name)
            if tensor is not None:
                outputs[name] = tensor.as_numpy()
        return outputs

    return call
