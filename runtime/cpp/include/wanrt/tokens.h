// Host-side token math, a port of runtime/wan_rt/tokens.py: patchify, unpatchify, RoPE tables, per-token
// timesteps. Latents are the official layout [C, F, H, W] (no batch axis), float32, C order.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

namespace wanrt {

inline constexpr std::array<int, 3> kPatch = {1, 2, 2};  // (frames, height, width) of one DiT patch
inline constexpr double kRopeTheta = 10000.0;

using Grid = std::array<int64_t, 3>;  // (frames, rows, cols) of the token grid

Grid token_grid(const std::vector<int64_t>& latent_shape);  // latent [C, F, H, W]
int64_t num_tokens(const Grid& grid);

// [C, F, H, W] -> [F*H/2*W/2, C*1*2*2], channels ordered (c, pt, ph, pw) like the patch-embedding weight.
std::vector<float> patchify(const float* latent, const std::vector<int64_t>& latent_shape);
void patchify_into(const float* latent, const std::vector<int64_t>& latent_shape, float* tokens);
// [L, pt*ph*pw*C] head output (channels ordered (pt, ph, pw, c)) -> [C, F, H, W]; reads the first F*H*W/4 tokens.
std::vector<float> unpatchify(const float* tokens, const Grid& grid, int64_t channels);
void unpatchify_into(const float* tokens, const Grid& grid, int64_t channels, float* latent);

std::array<int64_t, 3> rope_axis_pairs(int64_t head_dim);  // (22, 21, 21) for head_dim 128

struct RopeTables {
    std::vector<float> cos, sin;  // [L, head_dim/2] each, computed in float64 and rounded to float32
};
RopeTables rope_tables(const Grid& grid, int64_t head_dim);

// [F] float32, one per latent frame: `timestep` everywhere, `first_frame_timestep` (when >= 0) on frame 0 (I2V).
std::vector<float> frame_timesteps(const Grid& grid, double timestep, double first_frame_timestep = -1.0);
// [L] float32, one per token (the official form; engines folders made before per-frame timesteps): each
// frame's value on its h * w tokens.
std::vector<float> token_timesteps(const Grid& grid, double timestep, double first_frame_timestep = -1.0);

}  // namespace wanrt
