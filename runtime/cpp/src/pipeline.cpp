#include "wanrt/pipeline.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <fstream>
#include <iomanip>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

namespace wanrt {

using json = nlohmann::json;

namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// latent[:, index:index+1] of [C, F, H, W] as [1, C, 1, H, W] (or copy `frame` [C, 1, H, W] into it).
Tensor latent_frame(const Tensor& latents, int64_t index, const std::string& name) {
    const auto& s = latents.shape;
    Tensor out(name, DType::Float32, {1, s[0], 1, s[2], s[3]});
    const int64_t plane = s[2] * s[3];
    const float* src = latents.data<float>();
    float* dst = out.data<float>();
    for (int64_t c = 0; c < s[0]; ++c)
        std::memcpy(dst + c * plane, src + (c * s[1] + index) * plane, static_cast<std::size_t>(plane) * sizeof(float));
    return out;
}

void pin_first_frame(Tensor& latent, const Tensor& first_frame) {
    const auto& s = latent.shape;
    const int64_t plane = s[2] * s[3];
    float* dst = latent.data<float>();
    const float* src = first_frame.data<float>();
    for (int64_t c = 0; c < s[0]; ++c)
        std::memcpy(dst + c * s[1] * plane, src + c * plane, static_cast<std::size_t>(plane) * sizeof(float));
}

// Drop a leading batch axis of 1 ([1, ...] -> [...]), keeping the bytes.
Tensor squeeze0(Tensor t, const std::string& what) {
    if (t.shape.empty() || t.shape[0] != 1) throw Error(what + ": expected batch 1, got " + shape_str(t.shape));
    t.shape.erase(t.shape.begin());
    return t;
}

std::vector<int64_t> ids_row(const json& rows, std::size_t row, std::size_t length, const std::string& what,
                             const std::string& path) {
    if (!rows.is_array() || rows.size() != 2 || !rows[row].is_array() || rows[row].size() != length)
        throw Error(path + ": " + what + " must be 2 rows (prompt, negative prompt) of " + std::to_string(length) +
                    " token ids; write the file with wan-rt tokenize");
    return rows[row].get<std::vector<int64_t>>();
}

}  // namespace

// ------------------------------------------------------------------------------------------------ token file
PromptTokens read_token_file(const std::string& path, const Manifest& manifest) {
    std::ifstream in(path);
    if (!in) throw Error("cannot read token file " + path + "; write one with wan-rt tokenize");
    json data;
    try {
        data = json::parse(in);
    } catch (const json::parse_error& e) {
        throw Error(path + ": not a token file (invalid JSON: " + std::string(e.what()) + ")");
    }
    if (!data.is_object() || data.value("format", std::string()) != "wan-rt-tokens")
        throw Error(path + ": not a token file (format must be \"wan-rt-tokens\"); write one with wan-rt tokenize");
    if (data.value("format_version", 0) != 1)
        throw Error(path + ": token file version " + data.value("format_version", json(nullptr)).dump() +
                    ", this wan-rt-cpp reads version 1; write it again with wan-rt tokenize");
    std::size_t text_len = static_cast<std::size_t>(manifest.model.text_len);
    if (data.value("text_len", 0) != manifest.model.text_len)
        throw Error(path + ": ids padded to " + data.value("text_len", json(nullptr)).dump() + " tokens, these engines take " +
                    std::to_string(text_len) + "; write it again with wan-rt tokenize --engines " + manifest.root);
    PromptTokens t;
    try {
        t.ids = ids_row(data.at("input_ids"), 0, text_len, "input_ids", path);
        t.negative_ids = ids_row(data.at("input_ids"), 1, text_len, "input_ids", path);
        t.mask = ids_row(data.at("attention_mask"), 0, text_len, "attention_mask", path);
        t.negative_mask = ids_row(data.at("attention_mask"), 1, text_len, "attention_mask", path);
        t.prompt = data.value("prompt", std::string());
        t.negative_prompt = data.value("negative_prompt", std::string());
        t.tokenizer_sha256 = data.value("tokenizer_sha256", std::string());
    } catch (const json::exception& e) {
        throw Error(path + ": malformed token file (" + std::string(e.what()) + "); write it again with wan-rt tokenize");
    }
    auto it = manifest.tokenizer_files.find(manifest.tokenizer_dir + "/tokenizer.json");
    if (!t.tokenizer_sha256.empty() && it != manifest.tokenizer_files.end() && it->second != t.tokenizer_sha256)
        throw Error(path + ": the ids were made with another tokenizer than these engines'; write them again with "
                    "wan-rt tokenize --engines " + manifest.root);
    return t;
}

// ------------------------------------------------------------------------------------------------ noise
Tensor gaussian_noise(const std::vector<int64_t>& shape, uint64_t seed) {
    Tensor t("noise", DType::Float32, shape);
    std::mt19937_64 engine(seed);
    float* out = t.data<float>();
    const int64_t n = t.numel();
    const double two_pi = 6.283185307179586476925286766559;
    for (int64_t i = 0; i < n; i += 2) {
        // uniform in (0, 1]: 53 random bits
        double u1 = (static_cast<double>(engine() >> 11) + 1.0) * (1.0 / 9007199254740992.0);
        double u2 = static_cast<double>(engine() >> 11) * (1.0 / 9007199254740992.0);
        double r = std::sqrt(-2.0 * std::log(u1));
        out[i] = static_cast<float>(r * std::cos(two_pi * u2));
        if (i + 1 < n) out[i + 1] = static_cast<float>(r * std::sin(two_pi * u2));
    }
    return t;
}

// ------------------------------------------------------------------------------------------------ checked backend
std::vector<Tensor> CheckedBackend::run(const std::string& name, const std::vector<Tensor>& inputs) {
    const ComponentInfo& component = manifest_.component(name);
    check_feeds(component, inputs);
    std::vector<Tensor> outputs = inner_.run(name, inputs);
    for (const auto& want : component.outputs) {
        const Tensor& got = find_tensor(outputs, want.name);
        if (got.dtype != want.dtype || got.shape.size() != want.shape.size() ||
            got.bytes.size() != static_cast<std::size_t>(got.numel()) * dtype_size(got.dtype))
            throw Error(name + ": output " + got.describe() + " does not match the manifest's " + want.name + " " +
                        dtype_name(want.dtype) + " of rank " + std::to_string(want.shape.size()) +
                        "; the backend serves other engines than " + manifest_.root);
    }
    return outputs;
}

// ------------------------------------------------------------------------------------------------ DiT
DiTStep::DiTStep(Backend& backend, const ComponentInfo& dit, const std::vector<int64_t>& latent_shape,
                 const Tensor& context, const Tensor& context_null, int64_t head_dim, int64_t out_channels,
                 double guide_scale)
    : backend_(backend), component_(dit.name), latent_shape_(latent_shape), grid_(token_grid(latent_shape)),
      out_channels_(out_channels), guide_scale_(guide_scale) {
    guided_ = guide_scale != 1.0;  // g = 1 is the conditional prediction alone: skip the second pass
    batched_ = guided_ && dit.max_dim("batch") >= 2;
    for (const auto& input : dit.inputs)
        if (input.name == "timesteps")
            per_frame_timesteps_ = input.shape.size() == 2 && input.shape[1].dim == "frames";
    const int64_t L = num_tokens(grid_);
    const int64_t width = numel(latent_shape) / L;  // channels per token
    RopeTables rope = rope_tables(grid_, head_dim);
    const int64_t half = static_cast<int64_t>(rope.cos.size()) / L;
    Tensor cos = Tensor::of<float>("rope_cos", {L, half}, rope.cos.data());
    Tensor sin = Tensor::of<float>("rope_sin", {L, half}, rope.sin.data());
    std::vector<Tensor> contexts;
    if (batched_) {
        Tensor both("context", DType::Float32, context.shape);
        both.shape[0] = 2;
        both.bytes = context.bytes;
        both.bytes.insert(both.bytes.end(), context_null.bytes.begin(), context_null.bytes.end());
        contexts.push_back(std::move(both));
    } else {
        contexts.push_back(context);
        if (guided_) contexts.push_back(context_null);
    }
    for (auto& ctx : contexts) {
        ctx.name = "context";
        int64_t batch = ctx.shape[0];
        std::vector<Tensor> feeds;
        feeds.emplace_back("tokens", DType::Float32, std::vector<int64_t>{batch, L, width});
        feeds.emplace_back("timesteps", DType::Float32, std::vector<int64_t>{batch, per_frame_timesteps_ ? grid_[0] : L});
        feeds.push_back(std::move(ctx));
        feeds.push_back(cos);
        feeds.push_back(sin);
        feeds_.push_back(std::move(feeds));
    }
}

std::vector<float> DiTStep::timesteps(double t, double first_frame_t) const {
    return per_frame_timesteps_ ? frame_timesteps(grid_, t, first_frame_t) : token_timesteps(grid_, t, first_frame_t);
}

std::vector<std::vector<float>> DiTStep::velocities(const float* latent, const std::vector<float>& timesteps) {
    std::vector<float> token_input = patchify(latent, latent_shape_);
    std::vector<std::vector<float>> out;
    for (auto& feeds : feeds_) {
        Tensor& tokens = feeds[0];
        Tensor& steps = feeds[1];
        const int64_t batch = tokens.shape[0];
        for (int64_t b = 0; b < batch; ++b) {
            std::memcpy(tokens.data<float>() + b * static_cast<int64_t>(token_input.size()), token_input.data(),
                        token_input.size() * sizeof(float));
            std::memcpy(steps.data<float>() + b * static_cast<int64_t>(timesteps.size()), timesteps.data(),
                        timesteps.size() * sizeof(float));
        }
        std::vector<Tensor> outputs = backend_.run(component_, feeds);
        const Tensor& velocity = find_tensor(outputs, "velocity");
        if (velocity.shape.size() != 3 || velocity.shape[0] != batch || velocity.shape[1] < num_tokens(grid_))
            throw Error(component_ + ": velocity has shape " + shape_str(velocity.shape) + ", expected [" +
                        std::to_string(batch) + ", " + std::to_string(num_tokens(grid_)) + ", ...]");
        const int64_t per_batch = velocity.shape[1] * velocity.shape[2];
        for (int64_t b = 0; b < batch; ++b)
            out.push_back(unpatchify(velocity.data<float>() + b * per_batch, grid_, out_channels_));
    }
    return out;
}

Tensor denoise(DiTStep& step, FlowScheduler& scheduler, Tensor latent, const Tensor* first_frame,
               const StepCallback& on_step) {
    const std::size_t n = static_cast<std::size_t>(latent.numel());
    float* x = latent.data<float>();
    while (!scheduler.done()) {
        std::vector<float> timesteps = step.timesteps(static_cast<double>(scheduler.timestep()), first_frame ? 0.0 : -1.0);
        std::vector<std::vector<float>> v = step.velocities(x, timesteps);
        if (step.guided())
            scheduler.step_cfg(v[0].data(), v[1].data(), step.guide_scale(), x, x, n);
        else
            scheduler.step(v[0].data(), x, x, n);
        if (first_frame) pin_first_frame(latent, *first_frame);
        if (on_step) on_step(scheduler.step_index(), scheduler.steps());
    }
    return latent;
}

// ------------------------------------------------------------------------------------------------ frames
std::vector<uint8_t> to_uint8_frames(const Tensor& pixels) {
    if (pixels.shape.size() != 4 || pixels.shape[0] != 3)
        throw Error("frames must be float32 [3, T, H, W], got " + pixels.describe());
    const int64_t T = pixels.shape[1], plane = pixels.shape[2] * pixels.shape[3];
    std::vector<uint8_t> out(static_cast<std::size_t>(3 * T * plane));
    const float* src = pixels.data<float>();
    for (int64_t c = 0; c < 3; ++c)
        for (int64_t t = 0; t < T; ++t)
            for (int64_t p = 0; p < plane; ++p) {
                float x = src[(c * T + t) * plane + p];
                if (std::isnan(x)) x = -1.0f;
                x = x < -1.0f ? -1.0f : (x > 1.0f ? 1.0f : x);
                x += 1.0f;
                x /= 2.0f;
                x *= 255.0f;
                out[static_cast<std::size_t>((t * plane + p) * 3 + c)] = static_cast<uint8_t>(x);
            }
    return out;
}

namespace {
constexpr std::size_t kNpyHeader = 128;  // fixed size, rewritten with the frame count on close

std::string npy_video_header(int frames, int height, int width) {
    std::string dict = "{'descr': '|u1', 'fortran_order': False, 'shape': (" + std::to_string(frames) + ", " +
                       std::to_string(height) + ", " + std::to_string(width) + ", 3), }";
    dict.append(kNpyHeader - 10 - dict.size() - 1, ' ');
    dict += '\n';
    std::string header("\x93NUMPY\x01\x00", 8);
    header += static_cast<char>(dict.size() & 0xff);
    header += static_cast<char>(dict.size() >> 8);
    return header + dict;
}
}  // namespace

NpyVideoWriter::NpyVideoWriter(std::string path) : path_(std::move(path)) {
    tmp_ = path_ + ".partial-" + std::to_string(::getpid());
    file_ = std::fopen(tmp_.c_str(), "wb");
    if (!file_) throw Error("cannot write " + path_ + ": cannot create a file there (does the folder exist?)");
    std::string header = npy_video_header(0, 0, 0);
    std::fwrite(header.data(), 1, header.size(), file_);
}

NpyVideoWriter::~NpyVideoWriter() {
    if (file_) {
        std::fclose(file_);
        std::remove(tmp_.c_str());
    }
}

void NpyVideoWriter::write(const Tensor& pixels) {
    if (!file_) throw Error("cannot write " + path_ + ": already closed");
    std::vector<uint8_t> frames = to_uint8_frames(pixels);
    int height = static_cast<int>(pixels.shape[2]), width = static_cast<int>(pixels.shape[3]);
    if (frames_ && (height != height_ || width != width_))
        throw Error("frame size changed from " + std::to_string(width_) + "x" + std::to_string(height_));
    height_ = height;
    width_ = width;
    if (std::fwrite(frames.data(), 1, frames.size(), file_) != frames.size())
        throw Error("cannot write " + path_ + ": write failed (disk full?)");
    frames_ += static_cast<int>(pixels.shape[1]);
}

void NpyVideoWriter::close() {
    if (!file_) return;
    std::string header = npy_video_header(frames_, height_, width_);
    bool ok = std::fseek(file_, 0, SEEK_SET) == 0 && std::fwrite(header.data(), 1, header.size(), file_) == header.size();
    ok = std::fclose(file_) == 0 && ok;
    file_ = nullptr;
    if (!ok || std::rename(tmp_.c_str(), path_.c_str()) != 0) {
        std::remove(tmp_.c_str());
        throw Error("cannot write " + path_ + ": write or rename failed");
    }
}

// ------------------------------------------------------------------------------------------------ pipeline
std::string GenerationResult::summary() const {
    std::ostringstream s;
    s << frames << " frames " << width << "x" << height << ";";
    for (const auto& [stage, seconds] : timings) s << " " << stage << " " << std::fixed << std::setprecision(2) << seconds << "s";
    return s.str();
}

Pipeline::Pipeline(const Manifest& manifest, Backend& backend, PipelineOptions options)
    : manifest_(manifest), backend_(manifest, backend), options_(std::move(options)) {}

void Pipeline::log(const std::string& line) const {
    if (options_.log) options_.log(line);
}

std::pair<Tensor, Tensor> Pipeline::encode_text(const PromptTokens& t) {
    const ComponentInfo& text = manifest_.component("text_encoder");
    const int64_t len = static_cast<int64_t>(t.ids.size());
    if (text.max_dim("batch") >= 2) {
        Tensor ids("input_ids", DType::Int64, {2, len}), mask("attention_mask", DType::Int64, {2, len});
        std::memcpy(ids.data<int64_t>(), t.ids.data(), len * sizeof(int64_t));
        std::memcpy(ids.data<int64_t>() + len, t.negative_ids.data(), len * sizeof(int64_t));
        std::memcpy(mask.data<int64_t>(), t.mask.data(), len * sizeof(int64_t));
        std::memcpy(mask.data<int64_t>() + len, t.negative_mask.data(), len * sizeof(int64_t));
        std::vector<Tensor> in;
        in.push_back(std::move(ids));
        in.push_back(std::move(mask));
        Tensor context = find_tensor(backend_.run("text_encoder", in), "context");
        std::size_t half = context.bytes.size() / 2;
        Tensor cond("context", DType::Float32, {1, context.shape[1], context.shape[2]});
        Tensor uncond = cond;
        std::memcpy(cond.bytes.data(), context.bytes.data(), half);
        std::memcpy(uncond.bytes.data(), context.bytes.data() + half, half);
        return {std::move(cond), std::move(uncond)};
    }
    auto one = [&](const std::vector<int64_t>& ids, const std::vector<int64_t>& mask) {
        std::vector<Tensor> in;
        in.push_back(Tensor::of<int64_t>("input_ids", {1, len}, ids.data()));
        in.push_back(Tensor::of<int64_t>("attention_mask", {1, len}, mask.data()));
        return find_tensor(backend_.run("text_encoder", in), "context");
    };
    return {one(t.ids, t.mask), one(t.negative_ids, t.negative_mask)};
}

Tensor Pipeline::encode_image(const Tensor& pixels) {
    Tensor image = pixels;
    image.name = "image";
    image.shape.insert(image.shape.begin(), 1);
    std::vector<Tensor> in;
    in.push_back(std::move(image));
    return squeeze0(find_tensor(backend_.run("vae_encoder", in), "latent"), "vae_encoder latent");
}

GenerationPlan plan_request(const Manifest& manifest, const GenerationRequest& request) {
    const ShapeLimits& limits = manifest.limits;
    GenerationPlan plan;
    plan.frames = request.frames ? request.frames : limits.default_frames;
    limits.check_frames(plan.frames);
    if (request.image_pixels) {
        const Tensor& px = *request.image_pixels;
        if (px.dtype != DType::Float32 || px.shape.size() != 4 || px.shape[0] != 3 || px.shape[1] != 1)
            throw Error("image pixels are " + px.describe() + "; expected float32 [3, 1, H, W] in [-1, 1] "
                        "(write them with wan-rt prepare-image)");
        plan.height = static_cast<int>(px.shape[2]);
        plan.width = static_cast<int>(px.shape[3]);
    } else {
        plan.width = request.width ? request.width : limits.default_size[0];
        plan.height = request.height ? request.height : limits.default_size[1];
    }
    limits.check_size(plan.width, plan.height);
    const std::size_t text_len = static_cast<std::size_t>(manifest.model.text_len);
    if (request.tokens.ids.size() != text_len || request.tokens.mask.size() != text_len ||
        request.tokens.negative_ids.size() != text_len || request.tokens.negative_mask.size() != text_len)
        throw Error("the request needs token ids and masks of " + std::to_string(text_len) +
                    " tokens for the prompt and the negative prompt; read them with read_token_file");
    plan.latent_shape = {manifest.model.z_dim, latent_frames(plan.frames), plan.height / kSpatialStride,
                         plan.width / kSpatialStride};
    if (request.noise && (request.noise->dtype != DType::Float32 || request.noise->shape != plan.latent_shape))
        throw Error("noise is " + std::string(dtype_name(request.noise->dtype)) + " " + shape_str(request.noise->shape) +
                    "; this request needs float32 " + shape_str(plan.latent_shape) +
                    " ([channels, latent frames, height/16, width/16])");
    plan.solver = request.solver.empty() ? manifest.sampling.solver : request.solver;
    plan.steps = request.steps ? request.steps : manifest.sampling.steps;
    plan.shift = request.shift.value_or(manifest.sampling.shift);
    plan.guide_scale = request.guide_scale.value_or(manifest.sampling.guide_scale);
    make_scheduler(plan.solver, plan.steps, plan.shift);  // argument checks
    return plan;
}

GenerationResult Pipeline::generate(const GenerationRequest& request) {
    const GenerationPlan plan = plan_request(manifest_, request);
    const std::vector<int64_t>& shape = plan.latent_shape;
    GenerationResult result;
    result.width = plan.width;
    result.height = plan.height;
    result.frames = plan.frames;
    Tensor noise = request.noise ? *request.noise : gaussian_noise(shape, request.seed);
    noise.name = "latent";
    auto scheduler = make_scheduler(plan.solver, plan.steps, plan.shift);
    const double guide = plan.guide_scale;
    {
        std::ostringstream s;
        s << (request.image_pixels ? "i2v " : "t2v ") << result.width << "x" << result.height << ", " << result.frames
          << " frames, " << plan.solver << " " << plan.steps << " steps, shift " << plan.shift << ", guide scale "
          << guide;
        log(s.str());
    }

    auto started = std::chrono::steady_clock::now();
    auto [context, context_null] = encode_text(request.tokens);
    result.timings.emplace_back("text", seconds_since(started));

    std::optional<Tensor> first_frame;
    if (request.image_pixels) {
        started = std::chrono::steady_clock::now();
        first_frame = encode_image(*request.image_pixels);
        std::vector<int64_t> want = {shape[0], 1, shape[2], shape[3]};
        if (first_frame->shape != want)
            throw Error("vae_encoder returned " + first_frame->describe() + ", expected " + shape_str(want));
        pin_first_frame(noise, *first_frame);
        result.timings.emplace_back("image", seconds_since(started));
    }

    started = std::chrono::steady_clock::now();
    DiTStep step(backend_, manifest_.component("dit"), shape, context, context_null, manifest_.model.head_dim(),
                 manifest_.model.out_dim, guide);
    result.latents = denoise(step, *scheduler, std::move(noise), first_frame ? &*first_frame : nullptr,
                             [this](int i, int n) { log("step " + std::to_string(i) + "/" + std::to_string(n)); });
    result.timings.emplace_back("denoise", seconds_since(started));
    return result;
}

int Pipeline::decode(const Tensor& latents, const FrameSink& sink) {
    if (latents.dtype != DType::Float32 || latents.shape.size() != 4)
        throw Error("latents must be float32 [C, F, H, W], got " + latents.describe());
    int frames = 0;
    std::vector<Tensor> caches;
    for (int64_t index = 0; index < latents.shape[1]; ++index) {
        std::vector<Tensor> feeds;
        feeds.push_back(latent_frame(latents, index, "latent"));
        for (auto& cache : caches) feeds.push_back(std::move(cache));
        caches.clear();
        std::vector<Tensor> outputs = backend_.run(index == 0 ? "vae_decoder_first" : "vae_decoder_step", feeds);
        Tensor pixels;
        for (auto& out : outputs) {
            if (out.name.rfind("cache_out.", 0) == 0) {
                out.name = "cache_in." + out.name.substr(10);
                caches.push_back(std::move(out));
            } else if (out.name == "pixels") {
                pixels = squeeze0(std::move(out), "decoder pixels");
            }
        }
        sink(pixels);
        frames += static_cast<int>(pixels.shape[1]);
        log("decoded latent frame " + std::to_string(index + 1) + "/" + std::to_string(latents.shape[1]));
    }
    return frames;
}

}  // namespace wanrt
