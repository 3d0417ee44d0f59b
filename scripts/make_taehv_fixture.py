"""Record the TAEHV parity fixture from the upstream code (run once; the test never fetches anything).

    python scripts/make_taehv_fixture.py PATH/TO/upstream/taehv.py [--out tests/fixtures/taehv]

For each decoder variant (taew2_2, taew2_2_super) it makes full-size seeded random weights with this repo's
`random_state` (so the test can make them again: they are too large to commit, their sha256 is recorded
instead), saves them as a weights-only `.pth` named like the upstream file (upstream picks patch size 2, 48 latent
channels and the variant from the file name), loads them with upstream's own `TAEHV(checkpoint_path=...)` and
records its `decode_video` of a small seeded latent, both in parallel and in frame-by-frame mode. Upstream's code
is imported from the given path; nothing of it is copied into this repository.
"""
from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "runtime"))

from wan_export.checkpoints.taehv_file import random_state, state_sha256  # noqa: E402
from wan_export.model.taehv import WIDTHS, TinyVAEConfig  # noqa: E402

SEED = 7
LATENT_SHAPE = (1, 48, 3, 2, 3)  # [B, C, F, h, w]: 3 latent frames -> 9 frames of 32x48


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("taehv_py", type=Path, help="upstream madebyollin/taehv taehv.py")
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures/taehv"))
    args = parser.parse_args()
    spec = importlib.util.spec_from_file_location("upstream_taehv", args.taehv_py)
    upstream = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(upstream)
    try:
        commit = subprocess.run(["git", "-C", str(args.taehv_py.parent), "rev-parse", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
        commit = "unknown"
    latent = torch.from_numpy(np.random.default_rng(SEED).standard_normal(LATENT_SHAPE).astype(np.float32))
    args.out.mkdir(parents=True, exist_ok=True)
    for variant, file_name in (("base", "taew2_2.pth"), ("super", "taew2_2_super.pth")):
        state = random_state(TinyVAEConfig(variant, 48, WIDTHS[variant], 2), SEED)
        torch.manual_seed(SEED)  # upstream's file also holds the encoder, which the decode does not use
        encoder = upstream.TAEHV(checkpoint_path=None, patch_size=2, latent_channels=48).encoder.state_dict()
        stored = {**{f"encoder.{k}": v for k, v in encoder.items()}, **state}
        # as upstream's released files: the first TGrow stored with time stride 2 (upstream keeps the last half)
        tgrow = "decoder.7.conv.weight"
        stored[tgrow] = torch.cat([torch.randn_like(state[tgrow]), state[tgrow]])
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / file_name
            torch.save(stored, path)
            model = upstream.TAEHV(checkpoint_path=str(path)).eval()
        with torch.no_grad():
            ntchw = latent.transpose(1, 2)
            parallel = model.decode_video(ntchw, parallel=True, show_progress_bar=False)
            sequential = model.decode_video(ntchw, parallel=False, show_progress_bar=False)
        np.savez_compressed(
            args.out / f"{variant}.npz", latent=latent.numpy(),
            parallel=parallel.numpy(), sequential=sequential.numpy(), seed=np.int64(SEED),
            weights_sha256=np.str_(state_sha256(state)), upstream_commit=np.str_(commit))
        print(f"{variant}: upstream {file_name} decode {tuple(parallel.shape)} -> {args.out / (variant + '.npz')}")


if __name__ == "__main__":
    main()
