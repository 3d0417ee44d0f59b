"""`wan-export`: build engines folders, check them against the PyTorch reference, write random checkpoints."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from wan_rt.cli_support import run_cli, setup_logging, verbose_option
from wan_rt.errors import WanError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """Export Wan2.2 TI2V-5B to ONNX / TensorRT engines and check them."""


@main.command()
@click.option("--profile", "profile_name", default="tiny", show_default=True,
              help="Profile name (profiles/*.toml) or a .toml file.")
@click.option("--ckpt-dir", type=click.Path(path_type=Path), default=None,
              help="Checkpoint folder (official or diffusers layout). Without it: seeded random weights.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Engines folder to write.")
@click.option("--backend", type=click.Choice(["onnxruntime", "tensorrt", "tensorrt-rtx"]), default=None,
              help="Override the profile's backend.")
@click.option("--only", multiple=True, help="Build only these components (repeatable).")
@click.option("--timing-cache", type=click.Path(path_type=Path), default=None, help="TensorRT timing cache file.")
@click.option("--opt-level", type=click.IntRange(0, 5), default=None, help="TensorRT builder optimization level.")
@click.option("--workspace-gb", type=click.FloatRange(min=0.1), default=None,
              help="TensorRT workspace limit in GiB (default: the library's, which can exceed the build host).")
@click.option("--sm", "compute_capabilities", multiple=True,
              help="TensorRT-RTX target compute capability, e.g. 89 or SM89 or CURRENT (repeatable).")
@click.option("--strict-fp32", is_flag=True,
              help="TensorRT fp32 engines (the VAE) without TF32: slower, for accuracy studies (default: TF32 allowed).")
@click.option("--weight-streaming", is_flag=True,
              help="TensorRT engines whose weights can stream from host memory (wan-rt generate --gpu-memory-budget).")
@click.option("--refittable", is_flag=True,
              help="TensorRT engines whose weights wan-export refit can replace later (new LoRAs, no rebuild).")
@click.option("--external-data-threshold", type=int, default=None,
              help="Bytes of weights above which ONNX weights go to external data (default 2 GB).")
@click.option("--sp", type=click.IntRange(min=1), default=None,
              help="Also export the DiT as sequence-parallel segments for N ranks (wan-rt generate --sp N).")
@click.option("--sp-only", is_flag=True, help="With --sp: the segments instead of the whole dit graph.")
@click.option("--lora", "loras", multiple=True, metavar="FILE[:SCALE]",
              help="Merge a LoRA into the DiT weights before export (repeatable; diffusers/PEFT, original/ComfyUI "
                   "or musubi/kohya keys; scale default 1).")
@click.option("--onnx-from", type=click.Path(path_type=Path), default=None,
              help="Build from the ONNX graphs of this engines folder (same weights and profile) instead of exporting.")
@click.option("--precision", "precision_text", default=None, metavar="P|COMPONENT=P,...",
              help="Override the profile's precision: fp32|bf16|fp16 for all, or e.g. dit=bf16,text_encoder=bf16.")
@click.option("--place", "placements", multiple=True, metavar="text_encoder=cpu",
              help="Run a component on ONNX Runtime on the CPU beside the GPU engines (the official t5_cpu).")
@click.option("--tiny-vae", "tiny_vae", default=None, metavar="FILE|random|none",
              help="Also export TAEHV's tiny streaming decoder (wan-rt generate --decoder tiny): taew2_2.pth / "
                   "taew2_2_super.pth or .safetensors from madebyollin/taehv, 'random' for seeded random weights, "
                   "'none' to skip the profile's.")
@verbose_option
def build(profile_name, ckpt_dir, out, backend, only, timing_cache, opt_level, workspace_gb, compute_capabilities,
          strict_fp32, weight_streaming, refittable, external_data_threshold, sp, sp_only, loras, onnx_from,
          tiny_vae, precision_text, placements, verbose):
    """Export every component of a profile into an engines folder with manifest.json."""
    setup_logging(verbose)

    def work():
        from wan_export.build import BuildOptions
        from wan_export.build import build as run_build
        from wan_export.onnx_export import PROTOBUF_LIMIT
        from wan_export.profiles import load_profile
        from wan_export.weights import weight_source

        profile = load_profile(profile_name)
        if precision_text or placements:
            from wan_export.precision import override_profile

            profile = override_profile(profile, precision_text, placements)
        source = weight_source(ckpt_dir, profile.model_preset, profile.seed, profile.sampling)
        if tiny_vae not in (None, "none"):  # else the profile's [model] tiny_vae, unless "none"
            from wan_export.checkpoints.taehv_file import with_tiny_vae

            source = with_tiny_vae(source, tiny_vae, profile.seed)
        if loras:
            from wan_export.lora import parse_lora, with_loras

            source = with_loras(source, [parse_lora(text) for text in loras])
        targets = tuple(c.upper() if c.upper().startswith("SM") or c.upper() == "CURRENT" else f"SM{c}"
                        for c in compute_capabilities)
        options = BuildOptions(
            backend=backend or profile.backend, only=tuple(only), timing_cache=timing_cache,
            optimization_level=opt_level, compute_capabilities=targets,
            workspace_bytes=int(workspace_gb * 2**30) if workspace_gb else None,
            external_data_threshold=external_data_threshold or PROTOBUF_LIMIT, sp=sp or 0, sp_only=sp_only,
            strict_fp32=strict_fp32, weight_streaming=weight_streaming, refittable=refittable, onnx_from=onnx_from,
            no_profile_tiny_vae=tiny_vae == "none")
        if sp_only and not sp:
            raise WanError("--sp-only needs --sp N")
        folder = run_build(profile, source, out, options)
        click.echo(f"engines written to {folder}")

    run_cli(work)


@main.command()
@click.option("--engines", type=click.Path(path_type=Path), required=True, help="Engines folder to check.")
@click.option("--ckpt-dir", type=click.Path(path_type=Path), default=None,
              help="Checkpoint the engines were built from (default: the random weights the manifest names).")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None, help="Write results as JSON.")
@click.option("--only", multiple=True, metavar="COMPONENT",
              help="Check only this component (repeatable), e.g. --only dit after a refit; default: all.")
@verbose_option
def check(engines, ckpt_dir, json_path, only, verbose):
    """Compare every engine with the PyTorch reference (polygraphy) across the profile's shapes."""
    setup_logging(verbose)

    def work():
        from wan_export.check import check_engines

        report = check_engines(engines, ckpt_dir, json_path, tuple(only))
        click.echo(report.table())
        if not report.passed:
            raise WanError(f"check failed: {report.failures()}")

    run_cli(work)


@main.command()
@click.option("--engines", type=click.Path(path_type=Path), required=True, help="Engines folder to refit in place.")
@click.option("--lora", "loras", multiple=True, metavar="FILE[:SCALE]",
              help="LoRA to merge into the base DiT weights (repeatable; replaces the folder's LoRAs).")
@click.option("--ckpt-dir", type=click.Path(path_type=Path), default=None,
              help="New base checkpoint of the same shape (default: the folder's own base weights).")
@verbose_option
def refit(engines, loras, ckpt_dir, verbose):
    """Replace the DiT weights of an engines folder (LoRAs, new base) without rebuilding its engines."""
    setup_logging(verbose)

    def work():
        from wan_export.lora import parse_lora
        from wan_export.refit import refit as run_refit

        folder = run_refit(engines, [parse_lora(text) for text in loras], ckpt_dir)
        click.echo(f"engines refitted in {folder}")

    run_cli(work)


@main.command("random-checkpoint")
@click.option("--preset", "preset_name", default="tiny", show_default=True, help="Model preset (tiny, ti2v-5b).")
@click.option("--layout", type=click.Choice(["official", "diffusers", "turbo"]), default="official", show_default=True,
              help="turbo: official with the DiT as generator.pt (Wan2.2-TI2V-5B-Turbo's form).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), required=True)
@verbose_option
def random_checkpoint(preset_name, layout, seed, out, verbose):
    """Write a checkpoint of seeded random weights in the official or diffusers layout."""
    setup_logging(verbose)

    def work():
        from wan_export.checkpoints.writer import write_random_checkpoint
        from wan_export.config import preset

        folder = write_random_checkpoint(preset(preset_name), out, layout=layout, seed=seed)
        click.echo(f"{layout} checkpoint written to {folder}")

    run_cli(work)


@main.command()
@click.option("--engines", type=click.Path(path_type=Path), required=True, help="Engines folder (manifest.json).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Model repository folder to write.")
@click.option("--platform", type=click.Choice(["python", "onnxruntime", "tensorrt"]), default="python",
              show_default=True, help="Component models: python backend running wan-rt (CPU server bundled with "
                                      "nvidia-pytriton), or onnxruntime_onnx / tensorrt_plan (Triton's full container).")
@click.option("--bls/--no-bls", default=None,
              help="wan_video calls the component models through BLS. Default: on for onnxruntime/tensorrt.")
@click.option("--instances", type=click.IntRange(min=1), default=1, show_default=True, help="Instances per model.")
@click.option("--copy-engines", is_flag=True, help="Copy the engines into the repository (default: reference them).")
@click.option("--python-env", default="default", show_default=True,
              help="EXECUTION_ENV_PATH of the python models: 'default' (numpy-1 stub env, made if missing), a "
                   "virtual environment folder, or 'none' (the server's own python). 'none' by default for "
                   "onnxruntime/tensorrt.")
@click.option("--runtime-path", default=None, help="Folder holding wan_rt as the server sees it (default: this one).")
@click.option("--force", is_flag=True, help="Replace a repository written before.")
@verbose_option
def triton(engines, out, platform, bls, instances, copy_engines, python_env, runtime_path, force, verbose):
    """Write a Triton model repository: the wan_video pipeline model and one model per engine."""
    setup_logging(verbose)

    def work():
        from wan_export.triton import RepositoryOptions, write_repository

        env = python_env if platform == "python" or python_env != "default" else None
        folder = write_repository(engines, out, RepositoryOptions(
            platform=platform, bls=bls, instances=instances, copy_engines=copy_engines, python_env=env,
            runtime_path=runtime_path, force=force))
        click.echo(f"Triton model repository written to {folder} (start it: wan-rt serve --repository {folder}; "
                   f"see {folder / 'README.md'})")

    run_cli(work)


if __name__ == "__main__":
    sys.exit(main())
