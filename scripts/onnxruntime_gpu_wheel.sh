#!/usr/bin/env bash
# The onnxruntime-gpu wheel for a GPU machine without internet, in parts small enough to travel with the project.
#
#   scripts/onnxruntime_gpu_wheel.sh fetch OUT_DIR     # on a machine with the package index: download + split
#   scripts/onnxruntime_gpu_wheel.sh join  PARTS_DIR   # on the GPU machine: join + verify (prints the wheel's path)
#   scripts/onnxruntime_gpu_wheel.sh install PARTS_DIR SITE_DIR   # join + verify + pip install --target SITE_DIR
#
# fetch: `pip download` of onnxruntime-gpu $ORT_GPU_VERSION (default 1.31.1, built for CUDA 13: cuBLAS 13, cuDNN 9)
# for CPython $ORT_GPU_PYTHON (default 3.12) on manylinux x86_64, without dependencies (the GPU machine's PyTorch
# brings numpy, sympy, protobuf; CUDA, cuBLAS and cuDNN come from its nvidia-* packages through
# onnxruntime.preload_dlls()). The ~256 MB wheel is split into NAME.whl.part-aa, -ab, ... of at most $PART_MIB MiB
# (default 60), with NAME.whl.sha256 beside them; scripts/gpu_check.sh joins NAME.whl.part-* in its wheels folder
# the same way. join/install refuse parts whose joined sha256 differs (a part missing or cut short).
set -euo pipefail

ORT_GPU_VERSION=${ORT_GPU_VERSION:-1.31.1}
ORT_GPU_PYTHON=${ORT_GPU_PYTHON:-3.12}
PART_MIB=${PART_MIB:-60}
PYTHON=${PYTHON:-python3}

die() { echo "error: $*" >&2; exit 2; }

fetch() {  # $1 out dir
  local out=$1 download wheel
  mkdir -p "$out"
  download=$(mktemp -d)
  trap 'rm -rf "$download"' RETURN
  local abi="cp${ORT_GPU_PYTHON/./}"
  "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --implementation cp \
    --python-version "$ORT_GPU_PYTHON" --abi "$abi" --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    "onnxruntime-gpu==$ORT_GPU_VERSION" -d "$download" \
    || die "pip could not download onnxruntime-gpu==$ORT_GPU_VERSION for $abi manylinux x86_64 (is the package index reachable?)"
  wheel=$(ls "$download"/onnxruntime_gpu-*.whl | head -n 1)
  [[ -f $wheel ]] || die "no onnxruntime_gpu wheel in the download"
  split_wheel "$wheel" "$out"
}

split_wheel() {  # $1 wheel, $2 out dir: NAME.whl.part-aa ... and NAME.whl.sha256
  local wheel=$1 out=$2 name
  mkdir -p "$out"
  name=$(basename "$wheel")
  rm -f "$out/$name".part-*
  (cd "$(dirname "$wheel")" && sha256sum "$name") >"$out/$name.sha256"
  split -b "${PART_MIB}M" "$wheel" "$out/$name.part-"
  echo "$name: $(stat -c %s "$wheel") bytes in $(ls "$out/$name".part-* | wc -l) parts of at most $PART_MIB MiB in $out"
}

join_parts() {  # $1 parts dir; prints the joined wheel's path
  local dir=$1 first name joined
  first=$(ls "$dir"/onnxruntime_gpu-*.whl.part-aa 2>/dev/null | head -n 1)
  [[ -n $first ]] || die "no onnxruntime_gpu-*.whl.part-aa in $dir; run '$0 fetch DIR' where the package index is reachable"
  name=$(basename "${first%.part-aa}")
  joined=$(mktemp -d)/$name
  cat "$dir/$name".part-* >"$joined"
  if [[ -f $dir/$name.sha256 ]]; then
    (cd "$(dirname "$joined")" && sha256sum --quiet -c "$dir/$name.sha256") >&2 \
      || die "$name: the joined parts do not match $name.sha256 (a part is missing or damaged); fetch again"
  else
    echo "warning: no $name.sha256 beside the parts: joined without verification" >&2
  fi
  echo "$joined"
}

install() {  # $1 parts dir, $2 site dir
  local wheel
  wheel=$(join_parts "$1")
  mkdir -p "$2"
  "$PYTHON" -m pip install --quiet --no-index --no-deps --no-compile --upgrade --target "$2" "$wheel"
  echo "installed $(basename "$wheel") into $2 (put it first on PYTHONPATH; the CPU onnxruntime must not be installed too)"
}

case ${1:-} in
  fetch) [[ $# -eq 2 ]] || die "usage: $0 fetch OUT_DIR"; fetch "$2" ;;
  split) [[ $# -eq 3 ]] || die "usage: $0 split WHEEL OUT_DIR"; split_wheel "$2" "$3" ;;
  join) [[ $# -eq 2 ]] || die "usage: $0 join PARTS_DIR"; join_parts "$2" ;;
  install) [[ $# -eq 3 ]] || die "usage: $0 install PARTS_DIR SITE_DIR"; install "$2" "$3" ;;
  *) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
