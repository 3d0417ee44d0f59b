"""`wan-export triton`: a Triton model repository over an engines folder.

    REPO/
      README.md                 how to start the server and call it (written for this repository)
      wan_repository.json       what was written (engines, platform, BLS, python environment)
      wan_video/                python backend: the wan-rt host loop (prompt [+ image] -> video, mp4)
        config.pbtxt  1/model.py  [engines/ with --copy-engines]
      text_encoder/ dit/ vae_encoder/ vae_decoder_first/ vae_decoder_step/   one model per engine
        config.pbtxt  1/model.py (python) | 1/<engine files> (onnxruntime, tensorrt)

Platforms of the component models: `python` (ONNX Runtime / TensorRT through wan-rt inside the python backend:
what the CPU server bundled with nvidia-pytriton can run), `onnxruntime` (onnxruntime_onnx) and `tensorrt`
(tensorrt_plan) for servers built from Triton's full container. With BLS the wan_video model calls the component
models instead of running the engines itself.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from wan_export.triton.config import PLATFORMS, check_config, component_config, pipeline_config
from wan_rt.errors import WanError
from wan_rt.manifest import VERIFIED_CACHE, load_manifest

log = logging.getLogger("wan_export")

PIPELINE_MODEL = "wan_video"
REPOSITORY_RECORD = "wan_repository.json"
MODEL_CODE = Path(__file__).resolve().parents[2] / "runtime" / "triton"  # runtime/triton in the project
PIPELINE_CODE = "pipeline_model.py"
COMPONENT_CODE = "component_model.py"
COPIED_ENGINES = f"{PIPELINE_MODEL}/engines"  # relative to the repository folder
ENGINE_BACKENDS = {"onnxruntime": ("onnxruntime",), "tensorrt": ("tensorrt",)}  # platform -> manifest backends


@dataclass
class RepositoryOptions:
    platform: str = "python"  # python | onnxruntime | tensorrt
    bls: bool | None = None  # default: False for python, True for the native platforms
    instances: int = 1
    copy_engines: bool = False
    python_env: str | None = "default"  # EXECUTION_ENV_PATH of the python models: "default", a folder, or None
    runtime_path: str | None = None  # folder holding wan_rt, as the server sees it (default: this one)
    verify: bool = True  # sha256 of the engine files when a model loads
    force: bool = False  # replace an existing repository written by wan-export triton

    def resolved_bls(self) -> bool:
        return self.bls if self.bls is not None else self.platform != "python"


def _runtime_folder() -> Path:
    import wan_rt

    return Path(wan_rt.__file__).resolve().parent.parent


def _python_env(options: RepositoryOptions) -> str | None:
    if options.python_env in (None, "", "none"):
        return None
    from wan_rt.serve import ensure_stub_env

    if options.python_env == "default":
        return str(ensure_stub_env())
    env = Path(options.python_env).absolute()
    if not (env / "bin" / "activate").is_file():
        raise WanError(f"python environment {env} has no bin/activate: give a virtual environment (or make one "
                       f"with python -m wan_rt.serve --prepare-env --env {env})")
    return str(env)


def _link_or_copy(source: Path, target: Path, copy: bool) -> None:
    """An absolute symlink to the engine file, or (copy) a hard link to the copied file, else a real copy."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if not copy:
        os.symlink(source, target)
        return
    try:
        os.link(source, target)  # same file system: no second copy of a large engine
    except OSError:
        shutil.copy2(source, target)


def _copy_engines(engines: Path, target: Path) -> None:
    def ignore(folder, names):
        return [n for n in names if n == VERIFIED_CACHE or ".partial-" in n or n.startswith(".")]

    shutil.copytree(engines, target, ignore=ignore, symlinks=False)


def write_repository(engines: str | Path, out: str | Path, options: RepositoryOptions | None = None) -> Path:
    options = options or RepositoryOptions()
    if options.platform not in PLATFORMS:
        raise WanError(f"unknown platform {options.platform!r}: choose one of {', '.join(PLATFORMS)}")
    if options.instances < 1:
        raise WanError(f"--instances must be at least 1, got {options.instances}")
    engines = Path(engines).absolute()
    manifest = load_manifest(engines, verify=True)
    if options.platform != "python":
        wrong = {name: c.backend for name, c in manifest.components.items()
                 if c.backend not in ENGINE_BACKENDS[options.platform]}
        if wrong:
            hint = ("TensorRT-RTX engines run only through wan-rt: use --platform python"
                    if "tensorrt-rtx" in wrong.values() else
                    f"build the engines with wan-export build --backend {options.platform}, or use --platform python")
            raise WanError(f"--platform {options.platform} serves {options.platform} engines, but {engines} has "
                           f"{sorted(set(wrong.values()))} ({', '.join(sorted(wrong))}); {hint}")
    for code in (PIPELINE_CODE, COMPONENT_CODE):
        if not (MODEL_CODE / code).is_file():
            raise WanError(f"{MODEL_CODE / code} is missing: wan-export triton runs from a wan-deploy checkout "
                           f"(runtime/triton holds the python-backend model code)")
    out = Path(out).absolute()
    if out.exists() and any(out.iterdir()):
        if not (out / REPOSITORY_RECORD).is_file():
            raise WanError(f"{out} exists and is not a repository written by wan-export triton; choose another "
                           f"--out or remove it")
        if not options.force:
            raise WanError(f"{out} already holds a repository; pass --force to replace it")
    bls = options.resolved_bls()
    python_env = _python_env(options)
    runtime_path = options.runtime_path or str(_runtime_folder())

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp's 0700 would hide the repository from a server run as another user
    try:
        engines_param = str(engines)
        engines_for_links = engines
        if options.copy_engines:
            _copy_engines(engines, staging / COPIED_ENGINES)
            engines_param = COPIED_ENGINES  # relative: resolved against the repository folder by the models
            engines_for_links = staging / COPIED_ENGINES
        common = {"engines": engines_param, "wan_rt_path": runtime_path, "verify": "true" if options.verify else "false"}
        python_params = dict(common)
        if python_env is not None:
            python_params["EXECUTION_ENV_PATH"] = python_env

        configs = {}
        for name, component in manifest.components.items():
            folder = staging / name / "1"
            folder.mkdir(parents=True)
            if options.platform == "python":
                shutil.copy2(MODEL_CODE / COMPONENT_CODE, folder / "model.py")
                config = component_config(component, "python", options.instances,
                                          {**python_params, "component": name})
            else:
                files = [component.file] if options.platform == "tensorrt" else sorted(component.files)
                for relative in files:
                    _link_or_copy(engines_for_links / relative, folder / relative, options.copy_engines)
                config = component_config(component, options.platform, options.instances, {"component": name},
                                          default_model_filename=component.file)
            configs[name] = config

        pipeline_folder = staging / PIPELINE_MODEL / "1"
        pipeline_folder.mkdir(parents=True, exist_ok=True)
        shutil.copy2(MODEL_CODE / PIPELINE_CODE, pipeline_folder / "model.py")
        configs[PIPELINE_MODEL] = pipeline_config(
            PIPELINE_MODEL, options.instances,
            {**python_params, "bls": "true" if bls else "false",
             "component_models": json.dumps({name: name for name in manifest.components})},
            manifest.limits, manifest.sampling)

        for name, config in configs.items():
            text = config.render()
            check_config(text, f"{name}/config.pbtxt")
            (staging / name / "config.pbtxt").write_text(text)

        record = {
            "format": "wan-deploy-triton", "format_version": 1, "engines": str(engines),
            "engines_copied": options.copy_engines, "platform": options.platform, "bls": bls,
            "instances": options.instances, "python_env": python_env, "wan_rt_path": runtime_path,
            "models": sorted(configs), "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        }
        (staging / REPOSITORY_RECORD).write_text(json.dumps(record, indent=2) + "\n")
        (staging / "README.md").write_text(_readme(out, record, manifest))
        if out.exists():
            backup = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(backup)
            staging.rename(out)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("Triton repository %s: %s (platform %s%s)", out, ", ".join(sorted(configs)), options.platform,
             ", BLS" if bls else "")
    return out


def _readme(out: Path, record: dict, manifest) -> str:
    limits = manifest.limits
    native = record["platform"] != "python"
    stub = record["python"]
    lines = [
        f"# Triton model repository: Wan2.2 TI2V ({manifest.model['name']})",
        "",
        f"Written by `wan-export triton` from `{record['engines']}`"
        + (" (copied into `wan_video/engines`)" if record["engines_copied"] else " (referenced by absolute path)")
        + f". Component models: platform `{record['platform']}`; the `wan_video` pipeline model "
        + ("calls them through BLS." if record["bls"] else "runs the engines itself (python backend)."),
        "",
        "## Start the server",
        "",
    ]
    if not native:
        lines += [
            "CPU, with the tritonserver that `nvidia-pytriton==0.7.0` bundles (in the environment where wan-deploy "
            "and `requirements/triton.txt` are installed):",
            "",
            "```",
            f"wan-rt serve --repository {out} --http-port 8000",
            "```",
            "",
            "or the plain binary (what `wan-rt serve` runs):",
            "",
            "```",
            "S=$(python -c 'import importlib.util as u,os;print(os.path.dirname(u.find_spec(\"pytriton\").origin))')"
            "/tritonserver",
            f"cp $S/python_backend_stubs/{stub}/triton_python_backend_stub $S/backends/python/",
            f"$S/bin/tritonserver --model-repository={out} --backend-directory=$S/backends \\",
            "    --http-address=127.0.0.1 --http-port=8000 --allow-grpc=false --allow-metrics=false \\",
            "    --disable-auto-complete-config",
            "```",
            "",
            "How the python models find their code: each config names `wan_rt_path` "
            f"(`{record['wan_rt_path']}`, added to `sys.path`) and "
            + (f"`EXECUTION_ENV_PATH` = `{record['python_env']}`, a small virtual environment with numpy 1.26 (the "
               "bundled python-backend stub is built against numpy 1.x) that sees the wan-deploy environment's "
               "packages; remake it with `python -m wan_rt.serve --prepare-env`."
               if record["python_env"] else
               "no `EXECUTION_ENV_PATH`: the server's own python needs numpy, onnxruntime, tokenizers, ftfy, pillow, "
               "imageio-ffmpeg and tqdm."),
            "",
        ]
    else:
        lines += [
            "Triton's full container (its TensorRT / ONNX Runtime must match the engines' versions; see "
            "`docs/triton.md`):",
            "",
            "```",
            "docker run --rm --gpus all --shm-size 4g -p 8000:8000 \\",
            f"    -v {out}:/models -v {record['wan_rt_path']}:{record['wan_rt_path']}:ro \\",
            "    nvcr.io/nvidia/tritonserver:24.10-py3 \\",
            "    bash -c 'pip install onnxruntime tokenizers ftfy pillow imageio-ffmpeg tqdm && "
            "tritonserver --model-repository=/models'",
            "```",
            "",
            "Mount the engines folder at the same path too unless the repository was written with --copy-engines.",
            "",
        ]
    lines += [
        "`--engines DIR` of `wan-rt serve` (or the environment variable WAN_RT_ENGINES) points the python models at "
        "another engines folder.",
        "",
        "## Call it",
        "",
        f"`wan_video`: `prompt` (string) and optional `negative_prompt`, `image` (uint8 [H, W, 3]), `seed` (int64), "
        f"`steps`, `width`, `height`, `frames`, `fps` (int32), `guide_scale`, `shift` (fp32), `solver` (string), "
        f"each of shape [1]; outputs `video` (uint8 [F, H, W, 3]), `mp4` (bytes), `seed_used`. These engines take "
        f"width {limits.width[0]}..{limits.width[1]}, height {limits.height[0]}..{limits.height[1]} (multiples of "
        f"{limits.multiple}, area <= {limits.max_area}), frames 4n+1 in {limits.frames[0]}..{limits.frames[1]}.",
        "",
        "```python",
        "import numpy as np, tritonclient.http as http",
        "client = http.InferenceServerClient('127.0.0.1:8000')",
        "prompt = http.InferInput('prompt', [1], 'BYTES'); prompt.set_data_from_numpy(np.array([b'a fox'], object))",
        "seed = http.InferInput('seed', [1], 'INT64'); seed.set_data_from_numpy(np.array([1], np.int64))",
        "result = client.infer('wan_video', [prompt, seed])",
        "open('out.mp4', 'wb').write(result.as_numpy('mp4')[0]); frames = result.as_numpy('video')",
        "```",
        "",
        "The component models (" + ", ".join(f"`{n}`" for n in manifest.components) + ") take the manifest's "
        "tensors by name; their config.pbtxt lists dtypes and dims (-1: dynamic, ranges in the `wan_dims` "
        "parameter). `wan_rt.remote.RunnerPipeline` with `http_call` runs the host loop on a client over them.",
        "",
    ]
    return "\n".join(lines)
