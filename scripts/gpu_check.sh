#!/usr/bin/env bash
# GPU check of the TensorRT paths: install the TensorRT wheels given, build and run engines, time the full-size
# DiT against the PyTorch reference, and write a markdown report. Every stage is logged; a failed stage is
# recorded in the report and the script goes on (stages that need it are marked skipped). Exit status 0 when the
# report was written, whatever the stages did; read the report.
#
#   scripts/gpu_check.sh [--quick] [--ort] WHEELS_DIR REPORT.md [WORK_DIR]
#
# --ort       the ONNX Runtime CUDA check instead (docs/onnxruntime_cuda.md; an H100/H200 without internet or
#             TensorRT): WHEELS_DIR holds onnxruntime-gpu's parts (scripts/onnxruntime_gpu_wheel.sh fetch), CUDA 13
#             cuBLAS/cuDNN come from the machine's PyTorch. Stages by value, each row written as it finishes:
#             ort_imports, ort_provider (every tiny component's session really on CUDA, kept outputs in device
#             memory), ort_tiny_generate (CUDA vs CPU provider), ort_dit_720p_build + ort_dit_720p_bench (the bf16
#             DiT against the PyTorch bf16 reference: ms per step, cosine), ort_decode_720p (31 latent frames:
#             seconds, peak device memory), ort_generate_480p / ort_generate_720p (whole folders, --memory stage,
#             GEN_STEPS steps, default 50: seconds per stage and peak device memory). With --quick they share
#             QUICK_SECONDS; what does not fit is reported "not run (out of time)".
# --quick     fits 10 minutes on a fresh GPU machine, wheel installs included (QUICK_SECONDS, default 570, is the
#             whole budget; a stage gets what is left, one that would start with under 30 s left is not run):
#             the stages by value, env, wheels, imports, probe, then tiny_build, tiny_generate, tiny_check, then
#             dit_720p_build + dit_720p_bench (the full-size DiT against the PyTorch bf16 reference); it stops at
#             the first failure (its row carries the library's own error line). On a GPU TensorRT-RTX has no target
#             for (an H100/H200, SM90) it runs ref_720p (the PyTorch bf16 reference step, batch 2, alone) and
#             ort_cuda (the tiny engines through onnxruntime-gpu's CUDA provider, when its wheel is in WHEELS_DIR)
#             instead of the TensorRT-RTX stages.
# WHEELS_DIR  wheels for the GPU machine's Python (3.12 on the lent machines), installed with
#             `pip install --no-index --no-deps --target WORK_DIR/site`: tensorrt-rtx-cu13-libs and
#             tensorrt-rtx-cu13-bindings (1.7.1.116), and/or full TensorRT (tensorrt-cu13, tensorrt-cu13-libs,
#             tensorrt-cu13-bindings); plus what the machine lacks of the project's needs (polygraphy, ftfy,
#             wcwidth, imageio-ffmpeg: the env stage lists what is missing). A wheel over a transfer limit may
#             come split: NAME.whl.part-aa, NAME.whl.part-ab, ... are joined back before installing.
# REPORT.md   the report to write (its folder is created).
# WORK_DIR    scratch space for logs, engines and the site folder (default: a new temporary folder).
#
# Environment: PYTHON (default python3), STAGES (comma list to run only some, e.g. "env,wheels,tiny_build"),
# SIZES (default "480p 720p": full-size random-weight DiT builds), STAGE_TIMEOUT seconds (default 3600),
# BENCH_ITERS (default 5), KEEP_WORK=1 to keep WORK_DIR's engines.
#
# Stages: env, wheels, imports, probe, tiny_build, tiny_generate, tiny_check, tests, then per size in SIZES:
# dit_SIZE_build, dit_SIZE_bench; then trt_* versions of tiny/dit when full TensorRT is installed. TensorRT-RTX
# has no SM90 target (H100/H200): there its stages fail with that one line; full TensorRT needs its wheels from
# NVIDIA's index, which the lent machines cannot reach. The tiny engines are built --strict-fp32 (the comparison
# with ONNX Runtime uses fp32 limits); tiny_tf32_check builds the VAE engines with TF32 (the default) and checks
# them at the TF32 tolerance. Each stage's row is appended to the report as the stage finishes. TensorRT-RTX runs
# with eager kernel specialization (WAN_RT_TRT_SPECIALIZATION=eager), so no timed call runs a fallback kernel.
set -euo pipefail

usage() { sed -n '2,40p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
QUICK=0 ORT=0
while [[ ${1:-} == --quick || ${1:-} == --ort ]]; do
  if [[ $1 == --quick ]]; then QUICK=1; else ORT=1; fi
  shift
done
[[ $# -ge 2 && $# -le 3 ]] || usage
WHEELS=$(cd "$1" 2>/dev/null && pwd) || { echo "no wheels folder $1" >&2; exit 2; }
REPORT=$2
REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=${3:-$(mktemp -d /tmp/wan-gpu-check.XXXXXX)}
mkdir -p "$WORK" "$(dirname "$REPORT")"
REPORT=$(cd "$(dirname "$REPORT")" && pwd)/$(basename "$REPORT")  # rows are appended after the cd below
WORK=$(cd "$WORK" && pwd)
LOGS=$WORK/logs
mkdir -p "$LOGS"
PYTHON=${PYTHON:-python3}
SIZES=${SIZES-480p 720p}  # SIZES="" builds no full-size DiT
QUICK_SECONDS=${QUICK_SECONDS:-570}
SCRIPT_START=$(date +%s)
STAGE_TIMEOUT=${STAGE_TIMEOUT:-3600}
BENCH_ITERS=${BENCH_ITERS:-5}
STAGES=${STAGES:-}
MAIN_LOG=$LOGS/gpu_check.log

# The project without installing it: links to the two packages only (the repo's runtime/ folder also holds
# other top-level folders, e.g. runtime/triton, that must not shadow installed packages like `triton`).
PYPATH=$WORK/pypath
mkdir -p "$PYPATH"
ln -sfn "$REPO/wan_export" "$PYPATH/wan_export"
ln -sfn "$REPO/runtime/wan_rt" "$PYPATH/wan_rt"
export PYTHONPATH="$WORK/site:$PYPATH${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 WAN_RT_TRT_CACHE="$WORK/rtx-runtime-cache"
export WAN_RT_TRT_SPECIALIZATION=${WAN_RT_TRT_SPECIALIZATION:-eager}
cd "$REPO"

declare -A STATUS=()
DETAILS=()
STOPPED=""  # quick mode: the stage whose failure stopped the run

log() { echo "[$(date +%T)] $*" | tee -a "$MAIN_LOG" >&2; }
wanted() { [[ -z $STAGES || ",$STAGES," == *",$1,"* ]]; }
ok() { [[ ${STATUS[$1]:-} == ok ]]; }

row() { echo "$1" >>"$REPORT"; }  # a stage's row, appended to the report at once

# stage NAME NEEDS COMMAND...: runs COMMAND (a function or program) with its output in logs/NAME.log; appends
# ok / FAILED (rc) / skipped and the time to the report; never stops the script (quick mode: a failure makes the
# later stages "not run"). NEEDS: stages that must be ok ("-" for none, comma separated).
stage() {
  local name=$1 needs=$2 rc=0 start secs missing="" dep left
  shift 2
  if ! wanted "$name"; then return 0; fi
  if [[ -n $STOPPED ]]; then
    STATUS[$name]=skipped
    row "| $name | not run (stopped after $STOPPED failed) | - | |"
    return 0
  fi
  if [[ $QUICK == 1 ]]; then  # the 10-minute budget: a stage gets what is left of it
    left=$(( QUICK_SECONDS - ($(date +%s) - SCRIPT_START) ))
    if (( left < 30 )); then
      STATUS[$name]=skipped
      row "| $name | not run (out of time: ${QUICK_SECONDS} s budget) | - | |"
      log "--- $name: not run (out of time)"
      return 0
    fi
    STAGE_TIMEOUT=$left
  fi
  if [[ $needs != - ]]; then  # a needed stage left out by STAGES counts as done (its output may be in WORK_DIR)
    for dep in ${needs//,/ }; do
      if [[ $dep == rtx || $dep == trt || $dep == gpu ]] || wanted "$dep"; then ok "$dep" || missing+="${missing:+, }$dep"; fi
    done
  fi
  if [[ -n $missing ]]; then
    STATUS[$name]=skipped
    row "| $name | skipped (needs $missing) | - | |"
    log "--- $name: skipped (needs $missing)"
    return 0
  fi
  log ">>> $name: $*"
  start=$(date +%s)
  set +e
  ( set -euo pipefail; "$@" ) >"$LOGS/$name.log" 2>&1
  rc=$?
  set -e
  secs=$(( $(date +%s) - start ))
  if [[ $rc -eq 0 ]]; then
    STATUS[$name]=ok
    row "| $name | ok | ${secs} s | |"
    log "<<< $name: ok in ${secs} s"
  else
    STATUS[$name]=failed
    local last
    last=$(grep -E '^(error:|E |FAILED|[A-Za-z.]*(Error|Exception))' "$LOGS/$name.log" | tail -n 1 | cut -c1-300 | tr '|' '/' || true)
    local why="exit $rc"
    if [[ $rc -eq 124 ]]; then why+=", timed out after ${STAGE_TIMEOUT} s"; fi
    row "| $name | FAILED ($why) | ${secs} s | ${last} |"
    DETAILS+=("### $name: FAILED (exit $rc)" "" '```' "$(tail -n 40 "$LOGS/$name.log")" '```' "")
    log "<<< $name: FAILED (exit $rc) in ${secs} s; log $LOGS/$name.log"
    if [[ $QUICK == 1 ]]; then STOPPED=$name; fi
  fi
  return 0
}

py() { timeout "$STAGE_TIMEOUT" "$PYTHON" "$@"; }
wan_export() { py -m wan_export.cli "$@"; }
wan_rt() { py -m wan_rt.cli "$@"; }

# --- stages ------------------------------------------------------------------------------------------------
env_info() {
  nvidia-smi || true
  nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv || true
  "$PYTHON" - <<'EOF'
import platform, sys
print("python", sys.version.split()[0], platform.platform())
try:
    import torch
    print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        print("gpu", p.name, f"SM{p.major}{p.minor}", f"{p.total_memory / 2**30:.1f} GiB")
except Exception as exc:
    print("torch: not usable:", exc)
for name in ("cuda.bindings", "cupy", "onnx", "onnxruntime", "onnxscript", "polygraphy", "tokenizers", "ftfy",
             "imageio_ffmpeg", "safetensors", "click", "tqdm"):
    try:
        module = __import__(name, fromlist=["_"])
        print(name, getattr(module, "__version__", "present"))
    except Exception as exc:
        print(name, "MISSING", type(exc).__name__)
EOF
}

install_wheels() {
  local joined=$WORK/wheels-joined part base
  mkdir -p "$joined" "$WORK/site"
  for part in "$WHEELS"/*.whl.part-aa; do
    [[ -e $part ]] || continue
    base=$(basename "${part%.part-aa}")
    cat "${part%-aa}"-* >"$joined/$base"
    echo "joined $base from $(ls "${part%-aa}"-* | wc -l) parts"
  done
  shopt -s nullglob
  local wheels=("$WHEELS"/*.whl "$joined"/*.whl)
  shopt -u nullglob
  [[ ${#wheels[@]} -gt 0 ]] || { echo "error: no wheels in $WHEELS"; return 1; }
  printf '%s\n' "${wheels[@]}"
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" \
    "${wheels[@]}"
}

check_imports() {
  "$PYTHON" - "$@" <<'EOF'
import importlib
import sys
need = ["numpy", "torch", "onnx", "onnxscript", "onnxruntime", "polygraphy", "tokenizers", "ftfy", "click", "tqdm",
        "safetensors", "PIL", "imageio", "wan_export.cli", "wan_rt.cli", *sys.argv[1:]]
missing = []
for name in need:
    try:
        importlib.import_module(name)
    except Exception as exc:
        missing.append(f"{name} ({type(exc).__name__}: {exc})")
if missing:
    raise SystemExit("error: missing Python modules, add their wheels: " + "; ".join(missing))
print("all project modules import")
EOF
}

probe_libraries() {
  "$PYTHON" - <<'EOF'
import importlib
from wan_rt.backends.trt import gpu_info
print("gpu (driver probe):", gpu_info())
found = False
for backend, module in (("tensorrt-rtx", "tensorrt_rtx_bindings"), ("tensorrt", "tensorrt")):
    try:
        trt = importlib.import_module(module)
    except Exception as exc:
        print(f"{backend}: not installed ({type(exc).__name__}: {exc})")
        continue
    found = True
    print(f"{backend}: {trt.__version__}")
    if hasattr(trt, "ComputeCapability"):
        print(f"{backend} compute capability targets:", [n for n in trt.ComputeCapability.__members__ if n != "NONE"])
if not found:
    raise SystemExit("error: neither tensorrt_rtx_bindings nor tensorrt imports")
EOF
}

have_module() { "$PYTHON" -c "import $1" >/dev/null 2>&1; }

tiny_build() {  # $1 backend, $2 out
  local extra=(--strict-fp32)  # compared with ONNX Runtime at fp32 limits below
  if [[ $1 == tensorrt-rtx ]]; then extra+=(--sm CURRENT); fi
  if [[ $1 == tensorrt ]]; then extra+=(--timing-cache "$WORK/timing.cache"); fi
  wan_export build --profile tiny --backend "$1" "${extra[@]}" --out "$2"
  "$PYTHON" -c "
import json, sys
m = json.load(open('$2/manifest.json'))
for name, c in m['components'].items():
    t = c['target']
    print(name, c['backend'], c['precision'], t.get('library'), t.get('version'), t.get('compute_capabilities'),
          t.get('gpu'), t.get('gpu_compute_capability'))
"
}

tiny_generate() {  # $1 engines: TensorRT generate + ONNX Runtime reference on the same graphs, compared
  local engines=$1 tag
  tag=$(basename "$engines")
  wan_export build --profile tiny --backend onnxruntime --out "$WORK/tiny-ort" 2>&1 | tail -n 3
  wan_rt generate --engines "$engines" --prompt "a red fox trots through fresh snow" --seed 3 \
    --save-latents "$WORK/$tag-latents.npy" --out "$WORK/$tag-t2v.npy"
  wan_rt generate --engines "$WORK/tiny-ort" --prompt "a red fox trots through fresh snow" --seed 3 \
    --save-latents "$WORK/ort-latents.npy" --out "$WORK/ort-t2v.npy"
  "$PYTHON" - "$WORK/$tag-latents.npy" "$WORK/ort-latents.npy" "$WORK/$tag-t2v.npy" "$WORK/ort-t2v.npy" <<'EOF'
import sys
import numpy as np
a, b, fa, fb = (np.load(p) for p in sys.argv[1:])
rel = float(np.linalg.norm(a - b) / np.linalg.norm(b))
diff = np.abs(fa.astype(int) - fb.astype(int))
print(f"latents rel L2 error vs ONNX Runtime: {rel:.2e}; frames |diff| mean {diff.mean():.3f} max {diff.max()} (uint8)")
if rel > 5e-3 or diff.mean() >= 0.5 or diff.max() > 8:  # the limits of tests/test_trt_engines.py (fp32 engines)
    raise SystemExit(f"error: TensorRT result differs from ONNX Runtime (rel {rel:.2e}, frames max {diff.max()})")
EOF
}

tiny_check() { wan_export check --engines "$1" --json "$WORK/$(basename "$1")-check.json"; }

tiny_tf32_check() {  # $1 backend: the VAE engines with TF32 (the build default), checked at the TF32 tolerance
  local extra=()
  if [[ $1 == tensorrt-rtx ]]; then extra=(--sm CURRENT); fi
  wan_export build --profile tiny --backend "$1" "${extra[@]}" --only vae_encoder --only vae_decoder_first \
    --only vae_decoder_step --out "$WORK/tiny-tf32-$1"
  wan_export check --engines "$WORK/tiny-tf32-$1" --json "$WORK/tiny-tf32-$1-check.json"
}

reference_step() {  # $1 WxH: the PyTorch bf16 reference alone, one guided step (batch 2), random 5B weights
  py benchmarks/bench_dit_gpu.py --size "$1" --frames 121 --batch 2 --iters "$BENCH_ITERS" \
    --markdown "$WORK/bench-reference.md" --json "$WORK/bench-reference.json"
  if grep -q "not run" "$WORK/bench-reference.md"; then
    echo "error: $(grep 'not run' "$WORK/bench-reference.md" | head -n 1)"
    return 1
  fi
}

ort_cuda() {  # the tiny engines through onnxruntime-gpu's CUDA provider, against its CPU provider
  "$PYTHON" -c "
import onnxruntime as ort
providers = ort.get_available_providers()
print('onnxruntime', ort.__version__, providers)
if 'CUDAExecutionProvider' not in providers:
    raise SystemExit('error: onnxruntime ' + ort.__version__ + ' has no CUDAExecutionProvider here (add the '
                     'onnxruntime-gpu wheel to the wheels folder)')
"
  wan_export build --profile tiny --backend onnxruntime --out "$WORK/tiny-ort" 2>&1 | tail -n 3
  local run
  for run in CUDA CPU; do
    WAN_RT_ORT_PROVIDERS=${run}ExecutionProvider wan_rt generate --engines "$WORK/tiny-ort" \
      --prompt "a red fox trots through fresh snow" --seed 3 --save-latents "$WORK/ort-$run-latents.npy" \
      --out "$WORK/ort-$run-t2v.npy"
  done
  "$PYTHON" - "$WORK/ort-CUDA-latents.npy" "$WORK/ort-CPU-latents.npy" <<'EOF'
import sys
import numpy as np
a, b = (np.load(p) for p in sys.argv[1:])
rel = float(np.linalg.norm(a - b) / np.linalg.norm(b))
print(f"ONNX Runtime CUDA vs CPU provider: latents rel L2 error {rel:.2e}")
if rel > 5e-3:
    raise SystemExit(f"error: the CUDA provider's latents differ from the CPU provider's (rel {rel:.2e})")
EOF
}

run_tests() {
  py -m pytest -q -p no:cacheprovider tests/test_trt_build.py tests/test_trt_engines.py -rs
}

dit_build() {  # $1 size profile, $2 backend, $3 out
  local extra=()
  if [[ $2 == tensorrt-rtx ]]; then extra=(--sm CURRENT); fi
  if [[ $2 == tensorrt ]]; then extra=(--timing-cache "$WORK/timing.cache"); fi
  wan_export build --profile "$1" --only dit --backend "$2" "${extra[@]}" --out "$3"
  ls -la "$3"
}

dit_bench() {  # $1 engines, $2 size WxH, $3 tag
  py benchmarks/bench_dit_gpu.py --engines "$1" --size "$2" --frames 121 --batch 1 --iters "$BENCH_ITERS" \
    --markdown "$WORK/bench-$3.md" --json "$WORK/bench-$3.json"
  if grep -q "not run" "$WORK/bench-$3.md"; then
    echo "error: $(grep 'not run' "$WORK/bench-$3.md" | head -n 1)"
    return 1
  fi
}

check_ort_imports() {  # --ort: the project's modules and onnxruntime-gpu with its CUDA provider
  check_imports || return 1
  "$PYTHON" - <<'EOF'
import onnxruntime as ort
from wan_rt.backends import ort_providers
from wan_rt.errors import WanError
try:
    ort_providers.check_runtime_packages(ort_providers.installed_runtime_packages())
    ort_providers.check_attention_kernel(ort.__version__)
except WanError as exc:
    raise SystemExit(f"error: {exc}") from None
print("onnxruntime", ort.__version__, ort.get_available_providers(), "from", ort.__file__)
EOF
}

ort_provider() {  # every component of the tiny folder on CUDA, kept outputs in device memory
  wan_export build --profile tiny --backend onnxruntime --out "$WORK/tiny-ort" 2>&1 | tail -n 3
  py benchmarks/ort_cuda_check.py proof "$WORK/tiny-ort"
}

ort_folder() {  # $1 profile, $2 out, $3...: --only components (none: all)
  local profile=$1 out=$2
  shift 2
  wan_export build --profile "$profile" "$@" --out "$out"
  ls -la "$out"
}

ort_decode() {  # $1 engines, $2 WxH
  py benchmarks/ort_cuda_check.py decode "$1" --latent-frames 31 --size "$2"
}

ort_generate() {  # $1 engines, $2 WxH
  py benchmarks/ort_cuda_check.py generate "$1" --size "$2" --frames 121 --steps "${GEN_STEPS:-50}" \
    --memory stage --out "$WORK/$(basename "$1").mp4"
}

ort_stages() {  # --ort: ONNX Runtime CUDA, by value
  stage ort_imports wheels check_ort_imports
  stage ort_provider ort_imports ort_provider
  stage ort_tiny_generate ort_provider ort_cuda
  stage ort_dit_720p_build ort_provider ort_folder 720p-ort "$WORK/ort-dit-720p" --only dit
  stage ort_dit_720p_bench ort_dit_720p_build dit_bench "$WORK/ort-dit-720p" 1280x704 720p-ort
  stage ort_decode_720p_build ort_provider ort_folder 720p-ort "$WORK/ort-vae-720p" --only vae_decoder_first \
    --only vae_decoder_step
  stage ort_decode_720p ort_decode_720p_build ort_decode "$WORK/ort-vae-720p" 1280x704
  local size
  for size in 480p 720p; do
    stage "ort_generate_${size}_build" ort_provider ort_folder "$size-ort" "$WORK/ort-$size"
    stage "ort_generate_${size}" "ort_generate_${size}_build" ort_generate "$WORK/ort-$size" "$(size_of "$size")"
  done
}

size_of() { case $1 in 480p) echo 832x480 ;; 720p) echo 1280x704 ;; *) grep -m1 default_size "profiles/$1.toml" | cut -d'"' -f2 ;; esac; }

# --- run ---------------------------------------------------------------------------------------------------
STARTED=$(date -u +%Y-%m-%dT%H:%M:%SZ)
log "gpu_check: repo $REPO, work $WORK, report $REPORT$([[ $QUICK == 1 ]] && echo ", quick: ${QUICK_SECONDS} s")"
{  # the report's head; each stage appends its row as it finishes, the sections after the table come at the end
  echo "# wan-deploy GPU check$([[ $QUICK == 1 ]] && echo " (quick, ${QUICK_SECONDS} s budget)")"
  echo
  echo "- started $STARTED on $(hostname); work folder $WORK (logs in logs/)"
  echo "- commit: $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$REPO" status --porcelain 2>/dev/null | grep -q . && echo ' (with local changes)')"
  echo "- wheels: $(ls "$WHEELS" | sed 's/\.part-[a-z]*$//' | sort -u | tr '\n' ' ')"
  echo
  echo "## Stages (each row written when its stage finished)"
  echo
  echo "| stage | result | time | last error line |"
  echo "| --- | --- | --- | --- |"
} >"$REPORT"
stage env - env_info
stage wheels - install_wheels
RTX=0 TRT=0 NO_RTX_TARGET=""  # set again by the TensorRT block below
if [[ $ORT == 1 ]]; then ort_stages; fi
if [[ $ORT == 0 ]]; then  # the TensorRT stages (the block ends before the report)
stage imports wheels check_imports cuda.bindings.runtime
stage probe imports probe_libraries

# Pseudo-stages the library stages need: "rtx" / "trt" are ok when that library imports, "gpu" when the CUDA
# driver shows a GPU (a --sm CURRENT build without one would only fail after the whole export).
RTX=0 TRT=0
if "$PYTHON" -c "from wan_rt.backends.trt import gpu_info; raise SystemExit(gpu_info() is None)" 2>/dev/null; then
  STATUS[gpu]=ok
fi
if have_module tensorrt_rtx_bindings; then RTX=1; STATUS[rtx]=ok; fi
if have_module tensorrt; then TRT=1; STATUS[trt]=ok; fi
# A GPU TensorRT-RTX has no target for (H100/H200: SM90), from the library's own ComputeCapability enum
NO_RTX_TARGET=""
if [[ $RTX == 1 && ${STATUS[gpu]:-} == ok ]]; then
  NO_RTX_TARGET=$("$PYTHON" -c "
import tensorrt_rtx_bindings as t
from wan_rt.backends.trt import gpu_info, rtx_targets
cc = gpu_info()[1]
print('' if cc in rtx_targets(t) else cc)" 2>/dev/null || true)
fi
no_rtx_row() {
  row "| $1 | not run (TensorRT-RTX has no target for this GPU, $NO_RTX_TARGET; full TensorRT's wheels come from NVIDIA's index) | - | |"
}
engine_gpu_stages() {  # the PyTorch reference and ONNX Runtime's CUDA provider, where no TensorRT-RTX engine runs
  stage ref_720p imports,gpu reference_step 1280x704
  stage ort_cuda imports ort_cuda
}

if [[ $QUICK == 1 ]]; then  # by value, stopping at the first failure, within QUICK_SECONDS
  if [[ -n $NO_RTX_TARGET ]]; then
    no_rtx_row "tiny_build, tiny_generate, tiny_check, dit_720p_build, dit_720p_bench"
    engine_gpu_stages
  else
    stage tiny_build imports,gpu,rtx tiny_build tensorrt-rtx "$WORK/tiny-rtx"
    stage tiny_generate tiny_build tiny_generate "$WORK/tiny-rtx"
    stage tiny_check tiny_build tiny_check "$WORK/tiny-rtx"
    stage dit_720p_build imports,gpu,rtx dit_build 720p tensorrt-rtx "$WORK/dit-720p-rtx"
    stage dit_720p_bench dit_720p_build dit_bench "$WORK/dit-720p-rtx" "$(size_of 720p)" "720p-rtx"
  fi
else
  if [[ -n $NO_RTX_TARGET ]]; then
    no_rtx_row "tiny_build, tiny_generate, tiny_check, tiny_tf32_check, dit_*"
    engine_gpu_stages
  else
    stage tiny_build imports,gpu,rtx tiny_build tensorrt-rtx "$WORK/tiny-rtx"
    stage tiny_generate tiny_build tiny_generate "$WORK/tiny-rtx"
    stage tiny_check tiny_build tiny_check "$WORK/tiny-rtx"
    stage tiny_tf32_check imports,gpu,rtx tiny_tf32_check tensorrt-rtx
  fi
  stage tests imports,rtx run_tests
  for size in $SIZES; do
    [[ -z $NO_RTX_TARGET ]] || break
    stage "dit_${size}_build" imports,gpu,rtx dit_build "$size" tensorrt-rtx "$WORK/dit-$size-rtx"
    stage "dit_${size}_bench" "dit_${size}_build" dit_bench "$WORK/dit-$size-rtx" "$(size_of "$size")" "$size-rtx"
    [[ ${KEEP_WORK:-0} == 1 ]] || rm -rf "$WORK/dit-$size-rtx"
  done
  stage trt_tiny_build imports,gpu,trt tiny_build tensorrt "$WORK/tiny-trt"
  stage trt_tiny_generate trt_tiny_build tiny_generate "$WORK/tiny-trt"
  stage trt_tiny_check trt_tiny_build tiny_check "$WORK/tiny-trt"
  stage trt_tiny_tf32_check imports,gpu,trt tiny_tf32_check tensorrt
  for size in $SIZES; do
    stage "trt_dit_${size}_build" imports,gpu,trt dit_build "$size" tensorrt "$WORK/dit-$size-trt"
    stage "trt_dit_${size}_bench" "trt_dit_${size}_build" dit_bench "$WORK/dit-$size-trt" "$(size_of "$size")" "$size-trt"
    [[ ${KEEP_WORK:-0} == 1 ]] || rm -rf "$WORK/dit-$size-trt"
  done
fi

fi  # ORT == 0

# --- report ------------------------------------------------------------------------------------------------
set +e  # the report is written whatever its greps find
{
  echo
  echo "## Run"
  echo
  echo "- finished $(date -u +%Y-%m-%dT%H:%M:%SZ) ($(( $(date +%s) - SCRIPT_START )) s)${STOPPED:+; stopped after $STOPPED failed}"
  echo "- GPU: $(nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -n 1 || echo 'nvidia-smi failed')"
  echo "- TensorRT-RTX: $([[ $RTX == 1 ]] && "$PYTHON" -c 'import tensorrt_rtx_bindings as t; print(t.__version__)' || echo 'not installed')${NO_RTX_TARGET:+ (no target for this GPU, $NO_RTX_TARGET)}"
  echo "- TensorRT: $([[ $TRT == 1 ]] && "$PYTHON" -c 'import tensorrt as t; print(t.__version__)' || echo 'not installed (its wheels come from NVIDIA'"'"'s index)')"
  echo "- kernel specialization (TensorRT-RTX): $WAN_RT_TRT_SPECIALIZATION"
  echo
  if [[ -f $LOGS/env.log ]]; then
    echo "## Environment"; echo; echo '```'; grep -v '^|' "$LOGS/env.log" | grep -v '^+' | tail -n 30; echo '```'; echo
  fi
  if [[ -f $LOGS/probe.log ]]; then
    echo "## Libraries"; echo; echo '```'; cat "$LOGS/probe.log"; echo '```'; echo
  fi
  for tag in tiny-rtx tiny-trt; do
    for name in tiny_build tiny_generate tiny_check tiny_tf32_check; do
      prefix=""; [[ $tag == tiny-trt ]] && prefix="trt_"
      log_file="$LOGS/$prefix$name.log"
      [[ -f $log_file ]] || continue
      echo "## $prefix$name ($tag)"; echo
      echo '```'
      case $name in
        tiny_build) grep -E 'engine loaded|built .*engine|^(text_encoder|dit|vae_)|error:' "$log_file" | tail -n 20 ;;
        tiny_generate) grep -E 'loaded|wrote|rel L2|error:' "$log_file" | tail -n 20 ;;
        tiny_check|tiny_tf32_check) grep -vE '^[0-9:]{8} ' "$log_file" | tail -n 40 ;;
      esac
      echo '```'; echo
    done
  done
  if [[ -f $LOGS/tests.log ]]; then
    echo "## Tests (tests/test_trt_build.py, tests/test_trt_engines.py)"; echo; echo '```'
    grep -E 'passed|failed|SKIPPED|FAILED|ERROR' "$LOGS/tests.log" | tail -n 30; echo '```'; echo
  fi
  for name in ort_imports ort_provider ort_dit_720p_bench ort_decode_720p ort_generate_480p ort_generate_720p; do
    [[ -f $LOGS/$name.log ]] || continue
    echo "## $name"; echo
    [[ $name == ort_dit_720p_bench && -f $WORK/bench-720p-ort.md ]] && { cat "$WORK/bench-720p-ort.md"; echo; }
    echo '```'; grep -E 'onnxruntime|providers|kept|copies|decode|generate|error:' "$LOGS/$name.log" | tail -n 16
    echo '```'; echo
  done
  for name in ref_720p ort_cuda ort_tiny_generate; do
    [[ -f $LOGS/$name.log ]] || continue
    echo "## $name"; echo
    if [[ $name == ref_720p && -f $WORK/bench-reference.md ]]; then cat "$WORK/bench-reference.md"; echo; fi
    echo '```'; grep -E 'onnxruntime|rel L2|wrote|error:' "$LOGS/$name.log" | tail -n 12; echo '```'; echo
  done
  for size in $(echo "$SIZES 720p" | tr ' ' '\n' | sort -u); do
    for tag in rtx trt; do
      prefix=""; [[ $tag == trt ]] && prefix="trt_"
      if [[ -f $LOGS/${prefix}dit_${size}_build.log ]]; then
        echo "## Full-size DiT, $size profile, $tag"; echo
        echo '```'; grep -E 'building|built|exported|done in|error:' "$LOGS/${prefix}dit_${size}_build.log" | tail -n 8; echo '```'; echo
        [[ -f $WORK/bench-$size-$tag.md ]] && { cat "$WORK/bench-$size-$tag.md"; echo; }
      fi
    done
  done
  echo "## Targets"
  echo
  echo "One DiT forward at 720p x 121 frames (27280 tokens) is ~5.2e14 FLOP. The engine should run it >= 1.5x"
  echo "faster than the PyTorch reference (bf16, SDPA, same GPU, same run) and at >= 60% of the GPU's measured"
  echo "bf16 matmul rate; the bench tables above say met / MISSED per size."
  echo
  if [[ ${#DETAILS[@]} -gt 0 ]]; then
    echo "## Failed stages: last lines of their logs"; echo
    printf '%s\n' "${DETAILS[@]}"
  fi
} >>"$REPORT"
log "report written to $REPORT"
exit 0
