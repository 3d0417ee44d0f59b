#include "wanrt/tokens.h"

#include <cmath>

#include "wanrt/tensor.h"

namespace wanrt {

Grid token_grid(const std::vector<int64_t>& s) {
    if (s.size() != 4) throw Error("latent shape " + shape_str(s) + " is not [C, F, H, W]");
    if (s[2] % kPatch[1] || s[3] % kPatch[2])
        throw Error("latent shape " + shape_str(s) + ": height and width must be even (2x2 patches)");
    return {s[1] / kPatch[0], s[2] / kPatch[1], s[3] / kPatch[2]};
}

int64_t num_tokens(const Grid& g) { return g[0] * g[1] * g[2]; }

void patchify_into(const float* latent, const std::vector<int64_t>& shape, float* out) {
    Grid g = token_grid(shape);
    const int64_t C = shape[0], H = shape[2], W = shape[3];
    const int64_t pt = kPatch[0], ph = kPatch[1], pw = kPatch[2];
    // out[f, h, w, c, a, b, d] = latent[c, f*pt + a, h*ph + b, w*pw + d]
    for (int64_t f = 0; f < g[0]; ++f)
        for (int64_t h = 0; h < g[1]; ++h)
            for (int64_t w = 0; w < g[2]; ++w)
                for (int64_t c = 0; c < C; ++c)
                    for (int64_t a = 0; a < pt; ++a)
                        for (int64_t b = 0; b < ph; ++b)
                            for (int64_t d = 0; d < pw; ++d)
                                *out++ = latent[((c * shape[1] + f * pt + a) * H + h * ph + b) * W + w * pw + d];
}

std::vector<float> patchify(const float* latent, const std::vector<int64_t>& shape) {
    std::vector<float> out(static_cast<std::size_t>(numel(shape)));
    patchify_into(latent, shape, out.data());
    return out;
}

void unpatchify_into(const float* tokens, const Grid& g, int64_t C, float* latent) {
    const int64_t pt = kPatch[0], ph = kPatch[1], pw = kPatch[2];
    const int64_t F = g[0] * pt, H = g[1] * ph, W = g[2] * pw;
    // tokens[f, h, w, a, b, d, c] -> latent[c, f*pt + a, h*ph + b, w*pw + d]
    for (int64_t f = 0; f < g[0]; ++f)
        for (int64_t h = 0; h < g[1]; ++h)
            for (int64_t w = 0; w < g[2]; ++w)
                for (int64_t a = 0; a < pt; ++a)
                    for (int64_t b = 0; b < ph; ++b)
                        for (int64_t d = 0; d < pw; ++d)
                            for (int64_t c = 0; c < C; ++c)
                                latent[((c * F + f * pt + a) * H + h * ph + b) * W + w * pw + d] = *tokens++;
}

std::vector<float> unpatchify(const float* tokens, const Grid& g, int64_t channels) {
    std::vector<float> out(static_cast<std::size_t>(num_tokens(g) * kPatch[0] * kPatch[1] * kPatch[2] * channels));
    unpatchify_into(tokens, g, channels, out.data());
    return out;
}

std::array<int64_t, 3> rope_axis_pairs(int64_t head_dim) {
    int64_t pairs = head_dim / 2;
    return {pairs - 2 * (pairs / 3), pairs / 3, pairs / 3};
}

RopeTables rope_tables(const Grid& grid, int64_t head_dim) {
    // Per axis: inv_freq[j] = 1 / theta^((2j) / axis_dim), angle = position * inv_freq[j], in float64
    // (numpy: 1.0 / np.power(theta, arange(0, axis_dim, 2) / axis_dim); np.outer(arange(n), inv_freq)).
    auto pairs = rope_axis_pairs(head_dim);
    std::array<std::vector<double>, 3> inv_freq;
    for (int axis = 0; axis < 3; ++axis) {
        double axis_dim = static_cast<double>(2 * pairs[axis]);
        for (int64_t j = 0; j < pairs[axis]; ++j)
            inv_freq[axis].push_back(1.0 / std::pow(kRopeTheta, static_cast<double>(2 * j) / axis_dim));
    }
    const int64_t half = pairs[0] + pairs[1] + pairs[2];
    RopeTables t;
    t.cos.resize(static_cast<std::size_t>(num_tokens(grid) * half));
    t.sin.resize(t.cos.size());
    std::size_t k = 0;
    for (int64_t f = 0; f < grid[0]; ++f)
        for (int64_t h = 0; h < grid[1]; ++h)
            for (int64_t w = 0; w < grid[2]; ++w) {
                const int64_t position[3] = {f, h, w};
                for (int axis = 0; axis < 3; ++axis)
                    for (double freq : inv_freq[axis]) {
                        double angle = static_cast<double>(position[axis]) * freq;
                        t.cos[k] = static_cast<float>(std::cos(angle));
                        t.sin[k] = static_cast<float>(std::sin(angle));
                        ++k;
                    }
            }
    return t;
}

std::vector<float> frame_timesteps(const Grid& g, double timestep, double first_frame_timestep) {
    std::vector<float> values(static_cast<std::size_t>(g[0]), static_cast<float>(timestep));
    if (first_frame_timestep >= 0.0 && !values.empty()) values[0] = static_cast<float>(first_frame_timestep);
    return values;
}

std::vector<float> token_timesteps(const Grid& g, double timestep, double first_frame_timestep) {
    const std::vector<float> frames = frame_timesteps(g, timestep, first_frame_timestep);
    std::vector<float> values;
    values.reserve(static_cast<std::size_t>(num_tokens(g)));
    for (float value : frames) values.insert(values.end(), static_cast<std::size_t>(g[1] * g[2]), value);
    return values;
}

}  // namespace wanrt
