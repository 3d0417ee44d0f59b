"""The denoising loop over the sequence-parallel segments, with the solver state sharded by tokens.

Every rank owns the same rows of everything: tokens [r*l, (r+1)*l) of the sequence padded to N*l (the official
seq_len rounded up to a multiple of N). Per step each rank
  1. feeds its rows of the latent (patchified: input token layout, channels (c, pt, ph, pw)), zero tokens for
     padding, the per-frame timesteps with the latent frame of each of its rows, and its rows of the RoPE
     tables (identity rotation for padding);
  2. runs embed -> 30 x [pre-attention -> all-to-all -> attention core (padded keys masked) -> all-to-all ->
     post-attention] -> head, for the guidance batch (cond + uncond);
  3. applies classifier-free guidance and the solver step to its rows only, and re-pins its rows of latent
     frame 0 for image-to-video.
The solver is elementwise with scalar coefficients, so advancing each rank's rows is exactly the official update
of the whole latent (same float32 operations per element) with 1/N of the host work and no per-step gather;
the rows are gathered once, at the end. Nothing but the two all-to-alls per block crosses ranks during the loop.
"""
from __future__ import annotations

import contextlib
import logging

import numpy as np
from tqdm import tqdm

from wan_rt import tokens
from wan_rt.backends import open_runner
from wan_rt.denoise import advance
from wan_rt.manifest import Manifest
from wan_rt.parallel.layout import BlockWeights, SPLayout
from wan_rt.schedulers import FlowScheduler

log = logging.getLogger("wan_rt")


def head_to_input_layout(v: np.ndarray, channels: int) -> np.ndarray:
    """Head output tokens [..., (pt, ph, pw, c)] -> input token layout [..., (c, pt, ph, pw)]: patchify(unpatchify)."""
    lead = v.shape[:-1]
    return np.ascontiguousarray(np.moveaxis(v.reshape(*lead, -1, channels), -1, -2).reshape(v.shape))


def input_to_latent(x: np.ndarray, grid: tuple[int, int, int], channels: int) -> np.ndarray:
    """Input-layout tokens [L, (c, pt, ph, pw)] -> latent [C, F, H, W] (the inverse of `tokens.patchify`)."""
    head_layout = np.moveaxis(x.reshape(x.shape[0], channels, -1), 1, 2).reshape(x.shape)
    return tokens.unpatchify(head_layout, grid, channels)


class SegmentEngines:
    """This rank's segment runners, the per-layer weights and the communicator: `forward` is one DiT call."""

    def __init__(self, manifest: Manifest, layout: SPLayout, comm):
        self.manifest, self.layout, self.comm = manifest, layout, comm
        self._stack = contextlib.ExitStack()
        self.runners = {role: self._stack.enter_context(open_runner(manifest, name))
                        for role, name in layout.segments.items()}
        self.weights = BlockWeights(manifest, layout)
        self.pre_name, self.post_name = layout.segments["pre_attention"], layout.segments["post_attention"]

    def close(self) -> None:
        self._stack.close()

    @property
    def max_batch(self) -> int:
        return self.runners["embed"].component.dims["batch"][2]

    def forward(self, token_input: np.ndarray, timesteps: np.ndarray, context: np.ndarray, rows: dict,
                key_count: int) -> np.ndarray:
        """This rank's tokens [B, l, P], timesteps [B, F] (per latent frame), context [B, 512, text_dim]
        -> velocity [B, l, P_out]. `rows`: this rank's `token_frames` [l] and RoPE rows (`rope_cos`, `rope_sin`).

        `key_count`: the real token count; padded keys are cut off before attention (the official k_lens)."""
        run = self.runners
        embedded = run["embed"].run({"tokens": token_input, "timesteps": timesteps, "context": context})
        x, time_mod, text = embedded["x"], embedded["time_mod"], embedded["context_emb"]
        token_frames = rows["token_frames"]
        for layer in range(self.layout.num_layers):
            qkv = run["pre_attention"].run({"x": x, "time_mod": time_mod, **rows,
                                            **self.weights.feeds(self.pre_name, layer)})
            q, k, v = self.comm.heads_to_tokens([qkv["q"], qkv["k"], qkv["v"]])
            attn = run["attention"].run({"q": q, "k": np.ascontiguousarray(k[:, :key_count]),
                                         "v": np.ascontiguousarray(v[:, :key_count])})["attn"]
            x = run["post_attention"].run({"x": x, "attn": self.comm.tokens_to_heads(attn), "time_mod": time_mod,
                                           "token_frames": token_frames, "context_emb": text,
                                           **self.weights.feeds(self.post_name, layer)})["x_out"]
        return run["head"].run({"x": x, "time_emb": embedded["time_emb"], "token_frames": token_frames})["velocity"]


class ShardedDenoiser:
    """One request's loop on this rank: `run` returns the whole final latent (gathered from every rank)."""

    def __init__(self, engines: SegmentEngines, latent_shape: tuple[int, ...], context: np.ndarray,
                 context_null: np.ndarray, guide_scale: float):
        self.engines = engines
        comm = engines.comm
        self.channels = latent_shape[0]
        self.grid = tokens.token_grid(latent_shape)
        self.length = tokens.num_tokens(latent_shape)
        self.local = -(-self.length // comm.size)  # tokens per rank
        self.padded = self.local * comm.size
        self.start = comm.rank * self.local
        self.real = max(0, min(self.local, self.length - self.start))  # this rank's rows that are real tokens
        self.guide_scale = guide_scale
        self.guided = guide_scale != 1.0
        pad = self.padded - self.length
        cos, sin = tokens.rope_tables(self.grid, engines.layout.head_dim)
        pairs = cos.shape[1]
        cos = np.concatenate([cos, np.ones((pad, pairs), np.float32)])  # padding: identity rotation, as official
        sin = np.concatenate([sin, np.zeros((pad, pairs), np.float32)])
        mine = slice(self.start, self.start + self.local)
        self.rows = {"token_frames": tokens.token_frames(self.grid, self.start, self.local),
                     "rope_cos": np.ascontiguousarray(cos[mine]), "rope_sin": np.ascontiguousarray(sin[mine])}
        batched = self.guided and engines.max_batch >= 2
        if batched:
            self.contexts = [np.concatenate([context, context_null])]
        else:
            self.contexts = [context, context_null] if self.guided else [context]
        self._input = np.zeros((self.local, self.channels * int(np.prod(tokens.PATCH))), np.float32)
        log.info("DiT: %d tokens over %d ranks (%d each, %d padding), guidance %s", self.length, comm.size,
                 self.local, pad, "off (guide scale 1)" if not self.guided else
                 "as one batch-2 call" if batched else "as two batch-1 calls")

    def predictions(self, x: np.ndarray, timesteps: np.ndarray) -> list[np.ndarray]:
        """[cond, uncond] (or [cond]) for this rank's real rows, input token layout."""
        self._input[: self.real] = x  # rows past `real` stay zero tokens (padding), as official
        outputs = []
        for context in self.contexts:
            batch = context.shape[0]
            velocity = self.engines.forward(np.repeat(self._input[None], batch, axis=0),
                                            np.repeat(timesteps[None], batch, axis=0), context, self.rows,
                                            self.length)
            outputs.extend(head_to_input_layout(velocity[:, : self.real], self.channels))
        return outputs

    def run(self, latent: np.ndarray, first_frame: np.ndarray | None, scheduler: FlowScheduler,
            show_progress: bool) -> np.ndarray:
        """The official loop (`wan_rt.denoise.denoise`) on this rank's rows; returns the whole final latent."""
        end = self.start + self.real
        x = np.ascontiguousarray(tokens.patchify(np.asarray(latent, np.float32))[self.start:end])
        pin = None
        if first_frame is not None:  # latent frame 0 = the first rows (tokens are frame-major)
            frame_tokens = tokens.patchify(np.asarray(first_frame, np.float32))
            stop = min(end, len(frame_tokens))
            if stop > self.start:
                pin = (slice(0, stop - self.start), frame_tokens[self.start:stop])
        for t in tqdm(scheduler.timesteps, desc="denoising", unit="step", disable=not show_progress or None,
                      leave=False):
            per_frame = tokens.frame_timesteps(self.grid, float(t), 0.0 if first_frame is not None else None)
            x = advance(scheduler, self.predictions(x, per_frame), self.guide_scale, x)
            if pin is not None:
                x[pin[0]] = pin[1]
        rows = np.zeros((1, self.local, x.shape[1]), np.float32)
        rows[0, : self.real] = x
        gathered = self.engines.comm.gather_tokens(rows)[0, : self.length]
        return input_to_latent(gathered, self.grid, self.channels)
