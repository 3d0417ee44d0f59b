// Text-to-video and image-to-video over a Backend: the official WanTI2V loop, a port of runtime/wan_rt/
// {pipeline,denoise,vae_stream}.py. Text comes in as token ids (see PromptTokens): the umT5 tokenizer and the
// official prompt cleaning (ftfy) stay in Python (`wan-rt tokenize`).
#pragma once

#include <cstdio>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "wanrt/backend.h"
#include "wanrt/manifest.h"
#include "wanrt/schedulers.h"
#include "wanrt/tensor.h"
#include "wanrt/tokens.h"

namespace wanrt {

// Token ids of the prompt and the negative prompt, padded to text_len: the JSON file `wan-rt tokenize` writes
// ({"format": "wan-rt-tokens", "format_version": 1, "text_len": 512, "tokenizer_sha256": ...,
//   "prompt": ..., "negative_prompt": ..., "input_ids": [[...], [...]], "attention_mask": [[...], [...]]}).
struct PromptTokens {
    std::vector<int64_t> ids, mask;                    // prompt
    std::vector<int64_t> negative_ids, negative_mask;  // negative prompt
    std::string prompt, negative_prompt;               // the texts, for logs only
    std::string tokenizer_sha256;                      // sha256 of the tokenizer.json that made the ids
};
// Reads and checks a token file against the manifest (text length, tokenizer); Error with the fix otherwise.
PromptTokens read_token_file(const std::string& path, const Manifest& manifest);

struct GenerationRequest {
    PromptTokens tokens;
    int width = 0, height = 0, frames = 0;  // 0: the manifest's defaults (ignored size for image-to-video)
    int steps = 0;                          // 0: manifest default
    std::optional<double> shift, guide_scale;
    std::string solver;                     // empty: manifest default
    std::optional<Tensor> noise;            // float32 [z, F_latent, H/16, W/16]; else drawn from `seed`
    uint64_t seed = 0;
    std::optional<Tensor> image_pixels;     // float32 [3, 1, H, W] in [-1, 1]: image-to-video (wan-rt prepare-image)
};

// What a request resolves to against the engines (defaults filled in, everything validated).
struct GenerationPlan {
    int width = 0, height = 0, frames = 0;
    std::vector<int64_t> latent_shape;  // [z, F_latent, H/16, W/16]
    std::string solver;
    int steps = 0;
    double shift = 0, guide_scale = 0;
};
// Validates a request without running anything (size, frames, token ids, noise, solver); Error otherwise.
GenerationPlan plan_request(const Manifest& manifest, const GenerationRequest& request);

struct GenerationResult {
    Tensor latents;  // final latents [z, F_latent, h, w]
    int width = 0, height = 0, frames = 0;
    std::vector<std::pair<std::string, double>> timings;  // seconds per stage, in order
    std::string summary() const;
};

// Standard normal float32 noise from a 64-bit Mersenne Twister and Box-Muller: reproducible across platforms,
// not the numbers numpy draws for `wan-rt generate --seed` (pass --noise to both for comparable runs).
Tensor gaussian_noise(const std::vector<int64_t>& shape, uint64_t seed);

// One guided DiT evaluation per solver step, with the host-side inputs that stay the same over a request
// (RoPE tables, contexts) built once. Guidance runs as one batch-2 call when the engine takes batch 2.
class DiTStep {
public:
    DiTStep(Backend& backend, const ComponentInfo& dit, const std::vector<int64_t>& latent_shape,
            const Tensor& context, const Tensor& context_null, int64_t head_dim, int64_t out_channels,
            double guide_scale);
    bool guided() const { return guided_; }
    bool batched() const { return batched_; }
    double guide_scale() const { return guide_scale_; }
    const Grid& grid() const { return grid_; }
    // The engine's `timesteps` row for solver timestep `t` (`first_frame_t` >= 0: on latent frame 0, I2V):
    // one per latent frame, or one per token when the manifest declares the older per-token input.
    std::vector<float> timesteps(double t, double first_frame_t) const;
    // Velocities in latent layout [C, F, H, W]: {cond, uncond}, or {cond} when guidance is off (scale 1).
    std::vector<std::vector<float>> velocities(const float* latent, const std::vector<float>& timesteps);

private:
    Backend& backend_;
    std::string component_;
    std::vector<int64_t> latent_shape_;
    Grid grid_;
    int64_t out_channels_;
    double guide_scale_;
    bool guided_, batched_;
    bool per_frame_timesteps_ = true;
    std::vector<std::vector<Tensor>> feeds_;  // per call: tokens, timesteps, context, rope_cos, rope_sin
};

// Every solver step from `latent` (the initial noise, frame 0 already pinned for I2V); with `first_frame`
// ([z, 1, h, w]) latent frame 0's tokens are conditioned on t=0 and re-pinned after every step (official i2v).
using StepCallback = std::function<void(int step, int steps)>;
Tensor denoise(DiTStep& step, FlowScheduler& scheduler, Tensor latent, const Tensor* first_frame,
               const StepCallback& on_step = {});

// Decoded pixels, float32 [3, T, H, W] in [-1, 1] (T = 1 for the first latent frame, 4 after).
using FrameSink = std::function<void(const Tensor& pixels)>;

// Writes frames as uint8 [F, H, W, 3] .npy like `wan-rt generate --out x.npy` (the official save_video
// arithmetic: clamp, (x + 1) / 2 * 255 in float32, truncation); temp file renamed on close().
class NpyVideoWriter {
public:
    explicit NpyVideoWriter(std::string path);
    ~NpyVideoWriter();  // discards an unclosed file
    void write(const Tensor& pixels);
    void close();
    int frames() const { return frames_; }

private:
    std::string path_, tmp_;
    std::FILE* file_ = nullptr;
    int frames_ = 0, height_ = 0, width_ = 0;
};
std::vector<uint8_t> to_uint8_frames(const Tensor& pixels);  // [3, T, H, W] float32 -> [T, H, W, 3] uint8

struct PipelineOptions {
    std::function<void(const std::string&)> log;  // progress lines; none when empty
};

// The manifest and the backend must outlive the pipeline; one pipeline serves one thread.
class Pipeline {
public:
    Pipeline(const Manifest& manifest, Backend& backend, PipelineOptions options = {});

    // (context, context_null), each [1, text_len, text_dim].
    std::pair<Tensor, Tensor> encode_text(const PromptTokens& tokens);
    // [3, 1, H, W] in [-1, 1] -> normalized latent [z, 1, H/16, W/16].
    Tensor encode_image(const Tensor& pixels);
    // Validates the request and runs text encoding, optional image encoding and the denoising loop.
    GenerationResult generate(const GenerationRequest& request);
    // Streaming VAE decode, one latent frame per call with the caches carried; returns pixel frames written.
    int decode(const Tensor& latents, const FrameSink& sink);

private:
    void log(const std::string& line) const;
    const Manifest& manifest_;
    CheckedBackend backend_;
    PipelineOptions options_;
};

}  // namespace wanrt
