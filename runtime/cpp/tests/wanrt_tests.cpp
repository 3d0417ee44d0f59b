// wanrt_tests: a tiny assert harness (no test framework to install).
//   wanrt_tests unit              library checks that need no inputs
//   wanrt_tests golden [DIR]      replay what tests/test_cpp.py wrote from the numpy runtime (DIR or
//                                 $WANRT_GOLDEN_DIR; exit 77 = skipped without it): solver trajectories, sigma grids,
//                                 patchify/unpatchify, RoPE tables, per-frame and per-token timesteps, the guided I2V loop
//   wanrt_tests cli PATH          the wan-rt-cpp command's help and one-line errors
// Ends with "N passed, N failed"; exit 1 on any failure.
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <iostream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "wanrt/wanrt.h"

using json = nlohmann::json;
using namespace wanrt;

// ------------------------------------------------------------------------------------------------ harness
namespace {

struct Failure {
    std::string message;
};

struct Case {
    std::string group, name;
    std::function<void()> fn;
};

std::vector<Case>& registry() {
    static std::vector<Case> cases;
    return cases;
}

struct Registrar {
    Registrar(const char* group, const char* name, void (*fn)()) { registry().push_back({group, name, fn}); }
};

std::string where(const char* file, int line) { return std::string(file).substr(std::string(file).rfind('/') + 1) + ":" + std::to_string(line); }

#define TEST(group, name)                                                     \
    static void test_##group##_##name();                                      \
    static Registrar registrar_##group##_##name(#group, #name, test_##group##_##name); \
    static void test_##group##_##name()

#define CHECK(cond)                                                                      \
    do {                                                                                 \
        if (!(cond)) throw Failure{where(__FILE__, __LINE__) + ": CHECK(" #cond ") failed"}; \
    } while (0)

#define CHECK_MSG(cond, msg)                                                                         \
    do {                                                                                             \
        if (!(cond)) {                                                                               \
            std::ostringstream s_;                                                                   \
            s_ << where(__FILE__, __LINE__) << ": " << msg;                                          \
            throw Failure{s_.str()};                                                                 \
        }                                                                                            \
    } while (0)

// expr must throw wanrt::Error whose message contains `needle`.
#define CHECK_ERROR(expr, needle)                                                                            \
    do {                                                                                                     \
        bool thrown_ = false;                                                                                \
        try {                                                                                                \
            expr;                                                                                            \
        } catch (const wanrt::Error& e_) {                                                                   \
            thrown_ = true;                                                                                  \
            CHECK_MSG(std::string(e_.what()).find(needle) != std::string::npos,                              \
                      "error '" << e_.what() << "' lacks '" << needle << "'");                              \
            CHECK_MSG(std::string(e_.what()).find('\n') == std::string::npos, "error is not one line");     \
        }                                                                                                    \
        CHECK_MSG(thrown_, #expr " did not throw wanrt::Error");                                             \
    } while (0)

std::vector<std::string>& temp_dirs() {
    static std::vector<std::string> dirs;
    return dirs;
}

std::string temp_dir() {
    const char* base = std::getenv("TMPDIR");
    std::string pattern = std::string(base && *base ? base : "/tmp") + "/wanrt_tests.XXXXXX";
    char* dir = ::mkdtemp(pattern.data());
    if (!dir) throw Failure{"mkdtemp failed"};
    temp_dirs().push_back(dir);
    return dir;
}

void remove_temp_dirs() {
    for (const auto& dir : temp_dirs()) std::system(("rm -rf '" + dir + "'").c_str());
}

void write_file(const std::string& path, const std::string& text) {
    std::ofstream out(path, std::ios::binary);
    out << text;
}

double max_rel_error(const float* actual, const float* expected, std::size_t n) {
    double diff = 0, scale = 0;
    for (std::size_t i = 0; i < n; ++i) {
        diff = std::max(diff, std::fabs(static_cast<double>(actual[i]) - expected[i]));
        scale = std::max(scale, std::fabs(static_cast<double>(expected[i])));
    }
    if (std::isnan(diff)) return std::numeric_limits<double>::infinity();
    return diff / std::max(scale, 1e-30);
}

std::size_t count_different(const float* a, const float* b, std::size_t n) {
    std::size_t count = 0;
    for (std::size_t i = 0; i < n; ++i) count += std::memcmp(&a[i], &b[i], sizeof(float)) != 0;
    return count;
}

}  // namespace

// ------------------------------------------------------------------------------------------------ unit
TEST(unit, dtypes_and_npy_round_trip) {
    CHECK(dtype_from_name("float32") == DType::Float32);
    CHECK(std::string(kserve_datatype(DType::Int64)) == "INT64");
    CHECK(dtype_from_kserve("FP16") == DType::Float16);
    CHECK_ERROR(dtype_from_name("complex64"), "unknown tensor dtype");
    std::string dir = temp_dir();
    for (std::vector<int64_t> shape : {std::vector<int64_t>{2, 3, 4}, std::vector<int64_t>{5}, std::vector<int64_t>{}}) {
        std::vector<float> values(static_cast<std::size_t>(numel(shape)));
        for (std::size_t i = 0; i < values.size(); ++i) values[i] = 0.5f * static_cast<float>(i) - 3.0f;
        Tensor t = Tensor::of<float>("x", shape, values.data());
        write_npy(dir + "/x.npy", t);
        Tensor back = read_npy(dir + "/x.npy", "x");
        CHECK(back.shape == shape && back.dtype == DType::Float32 && back.bytes == t.bytes);
    }
    Tensor ids("ids", DType::Int64, {2, 2});
    ids.data<int64_t>()[3] = -7;
    write_npy(dir + "/i.npy", ids);
    CHECK(read_npy(dir + "/i.npy").data<int64_t>()[3] == -7);
    write_file(dir + "/bad.npy", "not numpy");
    CHECK_ERROR(read_npy(dir + "/bad.npy"), "not a .npy file");
    CHECK_ERROR(read_npy(dir + "/none.npy"), "cannot read");
    CHECK_ERROR(find_tensor(std::vector<Tensor>{ids}, "velocity"), "no tensor named velocity (have: ids)");
}

TEST(unit, sha256) {
    CHECK(sha256_hex("abc", 3) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    std::string dir = temp_dir();
    write_file(dir + "/f", "abc");
    CHECK(sha256_file(dir + "/f") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    write_file(dir + "/empty", "");
    CHECK(sha256_file(dir + "/empty") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

namespace {

json tiny_manifest(const std::string& digest) {
    json tensor = {{"name", "x"}, {"dtype", "float32"}, {"shape", {"batch", "tokens*2", 4}}};
    json component = {{"backend", "onnxruntime"}, {"precision", "fp32"}, {"file", "dit.onnx"},
                      {"files", {{"dit.onnx", digest}}}, {"inputs", {tensor}},
                      {"outputs", {{{"name", "y"}, {"dtype", "float32"}, {"shape", {"batch", 4}}}}},
                      {"dims", {{"batch", {1, 2, 2}}, {"tokens", {2, 3, 5}}}}};
    return {{"format", "wan-deploy-engines"}, {"format_version", 1},
            {"model", {{"name", "t"}, {"dit", {{"dim", 128}, {"num_heads", 2}, {"text_len", 8}}}, {"vae", {{"z_dim", 48}}}}},
            {"sampling", {{"steps", 4}, {"shift", 5.0}, {"guide_scale", 5.0}, {"solver", "unipc"}, {"negative_prompt", "bad"}}},
            {"limits", {{"width", {64, 192}}, {"height", {64, 192}}, {"max_area", 24576}, {"multiple", 32},
                        {"frames", {1, 17}}, {"batch", {1, 2}}, {"default_size", {160, 96}}, {"default_frames", 9}}},
            {"tokenizer", {{"dir", "tokenizer"}, {"files", json::object()}}},
            {"components", {{"dit", component}}}};
}

}  // namespace

TEST(unit, manifest_loading_and_errors) {
    std::string dir = temp_dir();
    write_file(dir + "/dit.onnx", "abc");
    const std::string good = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    write_file(dir + "/manifest.json", tiny_manifest(good).dump());
    Manifest m = load_manifest(dir);
    CHECK(m.model.head_dim() == 64 && m.model.text_len == 8 && m.sampling.negative_prompt == "bad");
    CHECK(m.component("dit").max_dim("tokens") == 5);
    CHECK(m.path("dit") == dir + "/dit.onnx");
    struct stat st;
    CHECK(::stat((dir + "/.verified.json").c_str(), &st) == 0);  // the cache shared with the Python runtime
    CHECK(load_manifest(dir + "/manifest.json").root == dir);
    CHECK_ERROR(m.component("vae_encoder"), "has no vae_encoder engine");
    CHECK_ERROR(load_manifest(dir + "/nope"), "does not exist");

    auto with = [&](const json& data) {
        write_file(dir + "/manifest.json", data.dump());
        ::unlink((dir + "/.verified.json").c_str());
    };
    json bad = tiny_manifest(good);
    bad["format"] = "other";
    with(bad);
    CHECK_ERROR(load_manifest(dir), "not a wan-deploy manifest");
    bad = tiny_manifest(good);
    bad["format_version"] = 2;
    with(bad);
    CHECK_ERROR(load_manifest(dir), "manifest format version 2 but this wan-rt-cpp reads version 1");
    bad = tiny_manifest(good);
    bad.erase("sampling");
    with(bad);
    CHECK_ERROR(load_manifest(dir), "manifest is incomplete");
    bad = tiny_manifest(std::string(64, '0'));
    with(bad);
    CHECK_ERROR(load_manifest(dir), "dit.onnx does not match its sha256");
    CHECK(load_manifest(dir, false).root == dir);  // verify=false skips hashing
    bad = tiny_manifest(good);
    bad["components"]["dit"]["files"]["missing.bin"] = good;
    with(bad);
    CHECK_ERROR(load_manifest(dir), "missing file missing.bin");
    bad = tiny_manifest(good);
    bad["limits"]["default_frames"] = 8;
    with(bad);
    CHECK_ERROR(load_manifest(dir), "frame count 8 is not 4n+1");
    write_file(dir + "/manifest.json", "{not json");
    CHECK_ERROR(load_manifest(dir), "invalid JSON");
}

TEST(unit, check_feeds) {
    std::string dir = temp_dir();
    write_file(dir + "/dit.onnx", "abc");
    write_file(dir + "/manifest.json", tiny_manifest("").dump());
    Manifest m = load_manifest(dir, false);
    const ComponentInfo& c = m.component("dit");
    check_feeds(c, {Tensor("x", DType::Float32, {2, 6, 4})});
    CHECK_ERROR(check_feeds(c, {}), "inputs do not match the engine (missing [x], unexpected [])");
    CHECK_ERROR(check_feeds(c, {Tensor("x", DType::Float32, {2, 6, 4}), Tensor("z", DType::Float32, {1})}),
                "unexpected [z]");
    CHECK_ERROR(check_feeds(c, {Tensor("x", DType::Int64, {2, 6, 4})}), "input x is int64, the engine takes float32");
    CHECK_ERROR(check_feeds(c, {Tensor("x", DType::Float32, {2, 6})}), "the engine takes [batch, tokens*2, 4]");
    CHECK_ERROR(check_feeds(c, {Tensor("x", DType::Float32, {3, 6, 4})}), "outside the range the engine was built for (1..2)");
    CHECK_ERROR(check_feeds(c, {Tensor("x", DType::Float32, {2, 7, 4})}), "not a multiple of 2");
    CHECK_ERROR(check_feeds(c, {Tensor("x", DType::Float32, {2, 6, 5})}), "axis 2 is 5, the engine takes 4");
}

TEST(unit, shape_limits) {
    ShapeLimits l;
    l.width = {64, 192};
    l.height = {64, 192};
    l.max_area = 24576;
    l.multiple = 32;
    l.frames = {1, 17};
    l.check_size(160, 96);
    l.check_frames(9);
    CHECK_ERROR(l.check_size(100, 96), "size 100x96 is not a multiple of 32; e.g. 96x96");
    CHECK_ERROR(l.check_size(192, 192), "area <= 24576");
    CHECK_ERROR(l.check_frames(8), "frame count 8 is not 4n+1 (e.g. 5 or 9)");
    CHECK_ERROR(l.check_frames(21), "outside what these engines were built for (1..17)");
    CHECK(latent_frames(121) == 31 && latent_frames(1) == 1);
}

TEST(unit, scheduler_grids_and_errors) {
    auto unipc = make_scheduler("unipc", 50, 5.0);
    CHECK(unipc->timesteps().front() == 999 && unipc->timesteps().back() == 92);  // official default grid
    CHECK(unipc->sigmas().size() == 51 && unipc->sigmas().back() == 0.0f);
    auto dpm = make_scheduler("dpm++", 50, 5.0);
    CHECK(dpm->timesteps().front() == 1000 && dpm->sigmas().front() == 1.0f);
    CHECK_ERROR(make_scheduler("ddim", 10, 5.0), "unknown scheduler 'ddim'");
    CHECK_ERROR(make_scheduler("unipc", 0, 5.0), "steps must be an integer >= 1");
    CHECK_ERROR(make_scheduler("euler", 10, 0.0), "shift must be a finite number > 0");
    CHECK_ERROR(make_scheduler("dpm++", 10, std::nan("")), "shift must be a finite number > 0");
    auto euler = make_scheduler("euler", 1, 1.0);
    std::vector<float> x = {1, 2, 3}, v = {0.5f, 0.5f, 0.5f};
    euler->step(v.data(), x.data(), x.data(), 3);
    CHECK(euler->done());
    CHECK_ERROR(euler->step(v.data(), x.data(), x.data(), 3), "step called more than steps=1 times");
    CHECK_ERROR(euler->timestep(), "all 1 steps are done");
    auto two = make_scheduler("unipc", 2, 1.0);
    two->step(v.data(), x.data(), x.data(), 3);
    CHECK_ERROR(two->step(v.data(), x.data(), x.data(), 2), "sample size changed from 3 to 2");
}

TEST(unit, patchify_round_trip_and_timesteps) {
    std::vector<int64_t> shape = {3, 2, 4, 6};
    std::vector<float> latent(static_cast<std::size_t>(numel(shape)));
    for (std::size_t i = 0; i < latent.size(); ++i) latent[i] = static_cast<float>(i);
    std::vector<float> tokens = patchify(latent.data(), shape);
    Grid g = token_grid(shape);
    CHECK(g == (Grid{2, 2, 3}) && num_tokens(g) == 12);
    // token 0 holds (c, pt, ph, pw) = latent[c, 0, 0..1, 0..1]
    CHECK(tokens[0] == latent[0] && tokens[1] == latent[1] && tokens[2] == latent[6] && tokens[4] == latent[48]);
    // unpatchify expects (pt, ph, pw, c) channel order: transpose per token before the round trip
    std::vector<float> head(tokens.size());
    for (int64_t l = 0; l < 12; ++l)
        for (int64_t c = 0; c < 3; ++c)
            for (int64_t p = 0; p < 4; ++p) head[static_cast<std::size_t>(l * 12 + p * 3 + c)] = tokens[static_cast<std::size_t>(l * 12 + c * 4 + p)];
    CHECK(unpatchify(head.data(), g, 3) == latent);
    CHECK_ERROR(token_grid({3, 2, 5, 6}), "must be even");
    std::vector<float> t = token_timesteps(g, 999.0, 0.0);
    CHECK(t[5] == 0.0f && t[6] == 999.0f && t.size() == 12);
    CHECK(token_timesteps(g, 500.0)[0] == 500.0f);
    std::vector<float> f = frame_timesteps(g, 999.0, 0.0);
    CHECK(f.size() == 2 && f[0] == 0.0f && f[1] == 999.0f);
    auto pairs = rope_axis_pairs(128);
    CHECK(pairs[0] == 22 && pairs[1] == 21 && pairs[2] == 21);
    RopeTables r = rope_tables(g, 128);
    CHECK(r.cos.size() == 12 * 64 && r.cos[0] == 1.0f && r.sin[0] == 0.0f);
}

TEST(unit, frames_and_noise) {
    std::vector<float> px = {-1.0f, 1.0f, 0.0f, std::nanf(""), 2.0f, -3.0f};
    Tensor pixels = Tensor::of<float>("pixels", {3, 1, 1, 2}, px.data());
    std::vector<uint8_t> out = to_uint8_frames(pixels);  // [1, 1, 2, 3]
    CHECK(out[0] == 0 && out[3] == 255 && out[1] == 127 && out[4] == 0 && out[2] == 255 && out[5] == 0);
    Tensor a = gaussian_noise({4, 5, 6}, 7), b = gaussian_noise({4, 5, 6}, 7), c = gaussian_noise({4, 5, 6}, 8);
    CHECK(a.bytes == b.bytes && a.bytes != c.bytes);
    Tensor big = gaussian_noise({100000}, 1);
    double sum = 0, sq = 0;
    for (int64_t i = 0; i < big.numel(); ++i) sum += big.data<float>()[i], sq += big.data<float>()[i] * big.data<float>()[i];
    CHECK(std::fabs(sum / 1e5) < 0.02 && std::fabs(sq / 1e5 - 1.0) < 0.02);
}

TEST(unit, token_file) {
    std::string dir = temp_dir();
    write_file(dir + "/dit.onnx", "abc");
    json manifest = tiny_manifest("");
    manifest["tokenizer"]["files"]["tokenizer/tokenizer.json"] = "feed";
    write_file(dir + "/manifest.json", manifest.dump());
    Manifest m = load_manifest(dir, false);
    json tokens = {{"format", "wan-rt-tokens"}, {"format_version", 1}, {"text_len", 8}, {"tokenizer_sha256", "feed"},
                   {"prompt", "a fox"}, {"negative_prompt", "bad"},
                   {"input_ids", {{5, 6, 1, 0, 0, 0, 0, 0}, {7, 1, 0, 0, 0, 0, 0, 0}}},
                   {"attention_mask", {{1, 1, 1, 0, 0, 0, 0, 0}, {1, 1, 0, 0, 0, 0, 0, 0}}}};
    write_file(dir + "/t.json", tokens.dump());
    PromptTokens t = read_token_file(dir + "/t.json", m);
    CHECK(t.ids[1] == 6 && t.negative_ids[0] == 7 && t.negative_mask[1] == 1 && t.prompt == "a fox");
    json bad = tokens;
    bad["tokenizer_sha256"] = "beef";
    write_file(dir + "/t.json", bad.dump());
    CHECK_ERROR(read_token_file(dir + "/t.json", m), "made with another tokenizer");
    bad = tokens;
    bad["text_len"] = 512;
    write_file(dir + "/t.json", bad.dump());
    CHECK_ERROR(read_token_file(dir + "/t.json", m), "ids padded to 512 tokens, these engines take 8");
    bad = tokens;
    bad["input_ids"][1] = {1, 2};
    write_file(dir + "/t.json", bad.dump());
    CHECK_ERROR(read_token_file(dir + "/t.json", m), "input_ids must be 2 rows");
    write_file(dir + "/t.json", "[]");
    CHECK_ERROR(read_token_file(dir + "/t.json", m), "not a token file");
}

TEST(unit, triton_unreachable) {
    TritonOptions options;
    options.url = "http://127.0.0.1:9";  // discard port: nothing listens
    options.timeout_s = 5;
    TritonBackend backend(options);
    CHECK_ERROR(backend.run("dit", {}), "cannot reach Triton at http://127.0.0.1:9");
}

// ------------------------------------------------------------------------------------------------ golden
namespace {

std::string g_golden;
std::vector<std::string> g_parity;  // "PARITY ..." lines for the summary

Tensor load(const std::string& file) { return read_npy(g_golden + "/" + file, file); }

// The model of the solver trajectories (same float32 operations as tests/test_cpp.py): cond = 0.8*x + noise,
// uncond = 0.6*x + noise2.
void fake_model(const std::vector<float>& x, const Tensor& noise, float scale, std::vector<float>& out) {
    const float* n = noise.data<float>();
    for (std::size_t i = 0; i < x.size(); ++i) out[i] = scale * x[i] + n[i];
}

// A DiT stand-in whose output depends on every input (same float32 operations as FakeDiT in tests/test_cpp.py).
class FakeDiT : public Backend {
public:
    std::vector<Tensor> run(const std::string& component, const std::vector<Tensor>& in) override {
        CHECK(component == "dit");
        const Tensor& tokens = find_tensor(in, "tokens");
        const Tensor& steps = find_tensor(in, "timesteps");
        const Tensor& context = find_tensor(in, "context");
        const Tensor& cos = find_tensor(in, "rope_cos");
        const Tensor& sin = find_tensor(in, "rope_sin");
        const int64_t B = tokens.shape[0], L = tokens.shape[1], K = tokens.shape[2];
        const int64_t T = context.shape[1], D = context.shape[2], H = cos.shape[1], G = steps.shape[1];
        Tensor v("velocity", DType::Float32, tokens.shape);
        for (int64_t b = 0; b < B; ++b)
            for (int64_t l = 0; l < L; ++l)
                for (int64_t k = 0; k < K; ++k) {
                    float x = tokens.data<float>()[(b * L + l) * K + k] * 0.8f;
                    x = x + steps.data<float>()[b * G + l / (L / G)] * 0.001f;
                    x = x + context.data<float>()[(b * T + l % T) * D + k % D];
                    x = x + cos.data<float>()[l * H + k % H] * 0.5f;
                    x = x - sin.data<float>()[l * H + k % H] * 0.25f;
                    v.data<float>()[(b * L + l) * K + k] = x;
                }
        calls++;
        return {std::move(v)};
    }
    std::string describe() const override { return "fake dit"; }
    int calls = 0;
};

}  // namespace

TEST(golden, scheduler_trajectories) {
    json cases = json::parse(std::ifstream(g_golden + "/cases.json"));
    double worst = 0;
    std::size_t values = 0, differ = 0;
    int count = 0;
    for (const auto& c : cases.at("schedulers")) {
        auto sched = make_scheduler(c["solver"], c["steps"], c["shift"]);
        CHECK_MSG(sched->timesteps() == c["timesteps"].get<std::vector<int64_t>>(), c["id"] << ": timesteps differ");
        Tensor sigmas = load(c["sigmas"]);
        CHECK_MSG(std::memcmp(sigmas.data<float>(), sched->sigmas().data(), sigmas.bytes.size()) == 0,
                  c["id"] << ": sigmas differ");
        Tensor x0 = load(c["x"]), noise = load(c["noise"]), noise2 = load(c["noise2"]), expected = load(c["trajectory"]);
        const bool guided = !c["guide"].is_null();
        const bool i2v = c["i2v"].get<bool>();
        std::vector<float> x(x0.data<float>(), x0.data<float>() + x0.numel()), cond(x.size()), uncond(x.size());
        std::vector<float> z0;
        if (i2v) {
            Tensor z = load(c["z0"]);
            z0.assign(z.data<float>(), z.data<float>() + z.numel());
        }
        const int64_t plane = x0.shape[2] * x0.shape[3], F = x0.shape[1];
        double err = 0;
        for (int i = 0; i < sched->steps(); ++i) {
            fake_model(x, noise, 0.8f, cond);
            if (guided) {
                fake_model(x, noise2, 0.6f, uncond);
                sched->step_cfg(cond.data(), uncond.data(), c["guide"].get<double>(), x.data(), x.data(), x.size());
            } else {
                sched->step(cond.data(), x.data(), x.data(), x.size());
            }
            if (i2v)
                for (int64_t ch = 0; ch < x0.shape[0]; ++ch)
                    std::memcpy(&x[static_cast<std::size_t>(ch * F * plane)], &z0[static_cast<std::size_t>(ch * plane)],
                                static_cast<std::size_t>(plane) * sizeof(float));
            const float* want = expected.data<float>() + static_cast<int64_t>(i) * x0.numel();
            err = std::max(err, max_rel_error(x.data(), want, x.size()));
            differ += count_different(x.data(), want, x.size());
            values += x.size();
        }
        worst = std::max(worst, err);
        CHECK_MSG(err <= 1e-6, c["id"].get<std::string>() << ": max relative error " << err << " > 1e-6");
        ++count;
    }
    std::ostringstream s;
    s << "PARITY schedulers: " << count << " trajectories, max relative error " << worst << ", " << differ << " of "
      << values << " values not bit-identical";
    g_parity.push_back(s.str());
}

TEST(golden, token_tables) {
    json cases = json::parse(std::ifstream(g_golden + "/cases.json"));
    double worst_rope = 0;
    std::size_t rope_values = 0, rope_differ = 0;
    for (const auto& c : cases.at("rope")) {
        Grid g = c["grid"].get<Grid>();
        RopeTables r = rope_tables(g, c["head_dim"].get<int64_t>());
        Tensor cos = load(c["cos"]), sin = load(c["sin"]);
        CHECK(static_cast<int64_t>(r.cos.size()) == cos.numel());
        for (auto [mine, theirs] : {std::pair{&r.cos, &cos}, std::pair{&r.sin, &sin}}) {
            worst_rope = std::max(worst_rope, max_rel_error(mine->data(), theirs->data<float>(), mine->size()));
            rope_differ += count_different(mine->data(), theirs->data<float>(), mine->size());
            rope_values += mine->size();
        }
    }
    CHECK_MSG(worst_rope <= 1e-6, "RoPE tables: max relative error " << worst_rope);
    std::size_t patch_values = 0;
    for (const auto& c : cases.at("patchify")) {
        Tensor latent = load(c["latent"]), tokens = load(c["tokens"]), head = load(c["head"]), unpatched = load(c["unpatched"]);
        std::vector<float> mine = patchify(latent.data<float>(), latent.shape);
        CHECK_MSG(std::memcmp(mine.data(), tokens.data<float>(), tokens.bytes.size()) == 0, "patchify differs");
        std::vector<float> back = unpatchify(head.data<float>(), token_grid(latent.shape), latent.shape[0]);
        CHECK_MSG(std::memcmp(back.data(), unpatched.data<float>(), unpatched.bytes.size()) == 0, "unpatchify differs");
        patch_values += mine.size() + back.size();
    }
    for (const auto& c : cases.at("token_timesteps")) {
        const double first = c["first"].is_null() ? -1.0 : c["first"].get<double>();
        Tensor want = load(c["values"]), want_frames = load(c["frame_values"]);
        std::vector<float> mine = token_timesteps(c["grid"].get<Grid>(), c["t"].get<double>(), first);
        std::vector<float> frames = frame_timesteps(c["grid"].get<Grid>(), c["t"].get<double>(), first);
        CHECK_MSG(mine.size() * sizeof(float) == want.bytes.size() &&
                  std::memcmp(mine.data(), want.data<float>(), want.bytes.size()) == 0, "token timesteps differ");
        CHECK_MSG(frames.size() * sizeof(float) == want_frames.bytes.size() &&
                  std::memcmp(frames.data(), want_frames.data<float>(), want_frames.bytes.size()) == 0,
                  "frame timesteps differ");
    }
    std::ostringstream s;
    s << "PARITY tokens: patchify/unpatchify bit-identical (" << patch_values << " values), RoPE max relative error "
      << worst_rope << ", " << rope_differ << " of " << rope_values << " values not bit-identical";
    g_parity.push_back(s.str());
}

TEST(golden, guided_loop_with_fake_dit) {
    json cases = json::parse(std::ifstream(g_golden + "/cases.json"));
    double worst = 0;
    int count = 0;
    for (const auto& c : cases.at("denoise")) {
        ComponentInfo dit;
        dit.name = "dit";
        int64_t batch = c["batch_max"].get<int64_t>();
        dit.dims["batch"] = {1, batch, batch};
        Tensor latent = load(c["latent"]), context = load(c["context"]), context_null = load(c["context_null"]);
        Tensor expected = load(c["result"]);
        std::optional<Tensor> first;
        if (!c["first_frame"].is_null()) first = load(c["first_frame"]);
        FakeDiT fake;
        DiTStep step(fake, dit, latent.shape, context, context_null, c["head_dim"].get<int64_t>(), latent.shape[0],
                     c["guide"].get<double>());
        auto sched = make_scheduler(c["solver"], c["steps"], c["shift"]);
        Tensor out = denoise(step, *sched, latent, first ? &*first : nullptr);
        int per_step = !step.guided() ? 1 : (step.batched() ? 1 : 2);
        CHECK_MSG(fake.calls == per_step * c["steps"].get<int>(), c["id"] << ": " << fake.calls << " DiT calls");
        double err = max_rel_error(out.data<float>(), expected.data<float>(), static_cast<std::size_t>(expected.numel()));
        worst = std::max(worst, err);
        CHECK_MSG(err <= 1e-6, c["id"].get<std::string>() << ": max relative error " << err);
        ++count;
    }
    std::ostringstream s;
    s << "PARITY denoise loop (fake DiT: CFG batched/unbatched/off, I2V re-pin): " << count << " cases, max relative error "
      << worst;
    g_parity.push_back(s.str());
}

// ------------------------------------------------------------------------------------------------ cli
namespace {
std::string g_cli;

struct Run {
    int code;
    std::string out;
};

Run run_cli(const std::string& args) {
    std::string command = "'" + g_cli + "' " + args + " 2>&1";
    FILE* pipe = ::popen(command.c_str(), "r");
    std::string out;
    char buffer[4096];
    while (std::size_t n = std::fread(buffer, 1, sizeof buffer, pipe)) out.append(buffer, n);
    int status = ::pclose(pipe);
    return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

void expect_error(const std::string& args, const std::string& needle) {
    Run r = run_cli(args);
    CHECK_MSG(r.code == 2, "wan-rt-cpp " << args << ": exit " << r.code << ", output " << r.out);
    CHECK_MSG(r.out.rfind("error: ", 0) == 0 && r.out.find('\n') == r.out.size() - 1,
              "wan-rt-cpp " << args << ": not one error line: " << r.out);
    CHECK_MSG(r.out.find(needle) != std::string::npos, "wan-rt-cpp " << args << ": '" << r.out << "' lacks '" << needle << "'");
}
}  // namespace

TEST(cli, help_and_errors) {
    Run help = run_cli("--help");
    CHECK(help.code == 0 && help.out.find("--token-ids") != std::string::npos);
    expect_error("", "no command");
    expect_error("frobnicate", "unknown command 'frobnicate'");
    expect_error("check --manifest /nonexistent/engines", "engines folder /nonexistent/engines does not exist");
    expect_error("generate --manifest /x --prompt 'a fox'", "wan-rt tokenize");
    expect_error("generate --manifest /x", "exactly one backend");
    expect_error("generate --bogus 1", "unknown option --bogus");
    expect_error("generate --triton-url http://127.0.0.1:9 --manifest /nonexistent", "does not exist");
}

// ------------------------------------------------------------------------------------------------ main
int main(int argc, char** argv) {
    if (argc < 2) {
        std::cerr << "usage: wanrt_tests unit | golden [DIR] | cli PATH_TO_wan-rt-cpp\n";
        return 2;
    }
    std::string group = argv[1];
    if (group == "golden") {
        const char* env = std::getenv("WANRT_GOLDEN_DIR");
        g_golden = argc > 2 ? argv[2] : (env ? env : "");
        if (g_golden.empty()) {
            std::cout << "golden: skipped, WANRT_GOLDEN_DIR is not set (tests/test_cpp.py writes the golden files from "
                         "the numpy runtime and runs this with it)\n";
            return 77;
        }
    }
    if (group == "cli") {
        if (argc < 3) {
            std::cerr << "usage: wanrt_tests cli PATH_TO_wan-rt-cpp\n";
            return 2;
        }
        g_cli = argv[2];
    }
    int passed = 0, failed = 0;
    for (const auto& c : registry()) {
        if (c.group != group) continue;
        try {
            c.fn();
            std::cout << "ok   " << c.group << "." << c.name << "\n";
            ++passed;
        } catch (const Failure& f) {
            std::cout << "FAIL " << c.group << "." << c.name << ": " << f.message << "\n";
            ++failed;
        } catch (const std::exception& e) {
            std::cout << "FAIL " << c.group << "." << c.name << ": exception: " << e.what() << "\n";
            ++failed;
        }
    }
    remove_temp_dirs();
    for (const auto& line : g_parity) std::cout << line << "\n";
    if (passed + failed == 0) {
        std::cerr << "no tests in group '" << group << "'\n";
        return 2;
    }
    std::cout << passed << " passed, " << failed << " failed\n";
    return failed ? 1 : 0;
}
