// wan-rt-cpp: generate from an engines folder's manifest over a Triton server (or TensorRT), no Python at run time.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "wanrt/wanrt.h"

namespace {

const char* kUsage = R"(wan-rt-cpp: run Wan2.2 TI2V-5B engines built by wan-export, from C++

usage:
  wan-rt-cpp check --manifest DIR [--no-verify]
  wan-rt-cpp generate --manifest DIR --triton-url URL --token-ids FILE [options]

  --manifest DIR        engines folder (or its manifest.json)
  --triton-url URL      tritonserver HTTP endpoint serving the repository of `wan-export triton`
  --tensorrt            run the engines in-process with TensorRT (when built with WANRT_WITH_TENSORRT)
  --token-ids FILE      prompt and negative prompt ids, JSON from `wan-rt tokenize` (wan-rt-cpp has no
                        umT5 tokenizer: the official prompt cleaning and tokenizer stay in Python)
  --image-pixels FILE   image-to-video: float32 [3, 1, H, W] .npy from `wan-rt prepare-image`
  --size WxH            text-to-video size (default: the profile's)
  --frames N            frame count, 4n+1 (default: the profile's)
  --steps N  --shift X  --guide-scale X  --solver unipc|dpm++|euler
  --noise FILE          initial noise .npy, float32 [48, (F-1)/4+1, H/16, W/16]
  --seed N              noise seed (mt19937_64; not numpy's numbers: use --noise for runs comparable with wan-rt)
  --save-latents FILE   write the final latents (.npy)
  --out FILE            decode and write frames as uint8 [F, H, W, 3] .npy
  --json-protocol       plain JSON tensors instead of the binary extension (slow; for debugging)
  --timeout S           per-request timeout in seconds (default 600)
  --verify/--no-verify  sha256 of the engine files (default: on for check and --tensorrt, off for Triton,
                        where the files live with the server)
  -v                    progress on stderr
)";

struct Args {
    std::string command;
    std::map<std::string, std::string> values;
    std::map<std::string, bool> flags;
};

const std::vector<std::string> kValueOptions = {
    "--manifest", "--engines", "--triton-url", "--token-ids", "--image-pixels", "--size", "--frames", "--steps",
    "--shift", "--guide-scale", "--solver", "--noise", "--seed", "--save-latents", "--out", "--timeout", "--prompt",
    "--negative-prompt", "--image"};
const std::vector<std::string> kFlags = {"--tensorrt", "--json-protocol", "--verify", "--no-verify", "-v", "--verbose"};

Args parse(int argc, char** argv) {
    Args args;
    if (argc < 2) throw wanrt::Error("no command; run wan-rt-cpp --help");
    args.command = argv[1];
    for (int i = 2; i < argc; ++i) {
        std::string arg = argv[i], value;
        bool inline_value = false;
        if (auto eq = arg.find('='); arg.rfind("--", 0) == 0 && eq != std::string::npos) {
            value = arg.substr(eq + 1);
            arg = arg.substr(0, eq);
            inline_value = true;
        }
        bool is_value = false, is_flag = false;
        for (const auto& o : kValueOptions) is_value = is_value || o == arg;
        for (const auto& f : kFlags) is_flag = is_flag || f == arg;
        if (is_flag && !inline_value) {
            args.flags[arg == "--verbose" ? "-v" : arg] = true;
        } else if (is_value) {
            if (!inline_value) {
                if (i + 1 >= argc) throw wanrt::Error("option " + arg + " needs a value");
                value = argv[++i];
            }
            args.values[arg == "--engines" ? "--manifest" : arg] = value;
        } else {
            throw wanrt::Error("unknown option " + arg + "; run wan-rt-cpp --help");
        }
    }
    return args;
}

int to_int(const std::string& text, const std::string& option) {
    try {
        std::size_t used = 0;
        long value = std::stol(text, &used);
        if (used == text.size()) return static_cast<int>(value);
    } catch (const std::exception&) {
    }
    throw wanrt::Error(option + " takes an integer, got '" + text + "'");
}

double to_double(const std::string& text, const std::string& option) {
    try {
        std::size_t used = 0;
        double value = std::stod(text, &used);
        if (used == text.size()) return value;
    } catch (const std::exception&) {
    }
    throw wanrt::Error(option + " takes a number, got '" + text + "'");
}

std::pair<int, int> parse_size(const std::string& text) {
    for (char sep : {'x', '*', 'X'}) {
        auto at = text.find(sep);
        if (at == std::string::npos) continue;
        std::string w = text.substr(0, at), h = text.substr(at + 1);
        bool digits = !w.empty() && !h.empty() && w.find_first_not_of("0123456789") == std::string::npos &&
                      h.find_first_not_of("0123456789") == std::string::npos;
        if (digits) return {std::stoi(w), std::stoi(h)};
    }
    throw wanrt::Error("size '" + text + "' is not WIDTHxHEIGHT, e.g. 1280x704");
}

std::string need(const Args& args, const std::string& option) {
    auto it = args.values.find(option);
    if (it == args.values.end()) throw wanrt::Error(args.command + " needs " + option + "; run wan-rt-cpp --help");
    return it->second;
}

int check(const Args& args) {
    wanrt::Manifest m = wanrt::load_manifest(need(args, "--manifest"), !args.flags.count("--no-verify"));
    std::cout << m.root << ": " << m.model.name << ", " << m.components.size() << " components";
    for (const auto& [name, info] : m.components) std::cout << ", " << name << " (" << info.backend << ")";
    std::cout << (args.flags.count("--no-verify") ? "; files not verified" : "; every file matches its sha256") << "\n";
    return 0;
}

int generate(const Args& args) {
    if (args.values.count("--prompt") || args.values.count("--negative-prompt"))
        throw wanrt::Error("wan-rt-cpp takes token ids, not text (no umT5 tokenizer in C++): run wan-rt tokenize "
                           "--engines DIR --prompt \"...\" --out ids.json, then pass --token-ids ids.json");
    if (args.values.count("--image"))
        throw wanrt::Error("wan-rt-cpp takes prepared pixels, not an image file: run wan-rt prepare-image --engines DIR "
                           "--image in.png --out pixels.npy, then pass --image-pixels pixels.npy");
    const bool tensorrt = args.flags.count("--tensorrt") > 0;
    const bool triton = args.values.count("--triton-url") > 0;
    if (tensorrt == triton) throw wanrt::Error("generate needs exactly one backend: --triton-url URL or --tensorrt");
    bool verify = tensorrt ? !args.flags.count("--no-verify") : args.flags.count("--verify") > 0;
    wanrt::Manifest manifest = wanrt::load_manifest(need(args, "--manifest"), verify);

    wanrt::GenerationRequest request;
    request.tokens = wanrt::read_token_file(need(args, "--token-ids"), manifest);
    if (args.values.count("--image-pixels")) request.image_pixels = wanrt::read_npy(args.values.at("--image-pixels"), "image");
    if (args.values.count("--size")) std::tie(request.width, request.height) = parse_size(args.values.at("--size"));
    if (args.values.count("--frames")) request.frames = to_int(args.values.at("--frames"), "--frames");
    if (args.values.count("--steps")) {
        request.steps = to_int(args.values.at("--steps"), "--steps");
        if (request.steps < 1) throw wanrt::Error("--steps must be >= 1");
    }
    if (args.values.count("--shift")) request.shift = to_double(args.values.at("--shift"), "--shift");
    if (args.values.count("--guide-scale")) request.guide_scale = to_double(args.values.at("--guide-scale"), "--guide-scale");
    if (args.values.count("--solver")) request.solver = args.values.at("--solver");
    if (args.values.count("--noise") && args.values.count("--seed")) throw wanrt::Error("pass --noise or --seed, not both");
    if (args.values.count("--noise")) request.noise = wanrt::read_npy(args.values.at("--noise"), "noise");
    if (args.values.count("--seed")) request.seed = static_cast<uint64_t>(to_int(args.values.at("--seed"), "--seed"));
    std::string save_latents = args.values.count("--save-latents") ? args.values.at("--save-latents") : "";
    std::string out = args.values.count("--out") ? args.values.at("--out") : "";
    if (save_latents.empty() && out.empty()) throw wanrt::Error("generate writes nothing: pass --out and/or --save-latents");
    std::optional<wanrt::NpyVideoWriter> writer;
    if (!out.empty()) {
        if (out.size() < 4 || out.substr(out.size() - 4) != ".npy")
            throw wanrt::Error("--out " + out + ": wan-rt-cpp writes .npy frames (uint8 [F, H, W, 3]); use wan-rt for MP4");
        writer.emplace(out);  // fail before any work when the folder is missing
    }

    wanrt::plan_request(manifest, request);  // refuse a bad request before contacting anything
    std::unique_ptr<wanrt::Backend> backend;
    if (triton) {
        wanrt::TritonOptions options;
        options.url = args.values.at("--triton-url");
        options.binary = !args.flags.count("--json-protocol");
        if (args.values.count("--timeout")) options.timeout_s = to_int(args.values.at("--timeout"), "--timeout");
        auto server = std::make_unique<wanrt::TritonBackend>(options);
        std::vector<std::string> used = {"text_encoder", "dit"};
        if (request.image_pixels) used.push_back("vae_encoder");
        if (writer) used.insert(used.end(), {"vae_decoder_first", "vae_decoder_step"});
        server->check_models(manifest, used);
        backend = std::move(server);
    } else {
#ifdef WANRT_HAS_TENSORRT
        backend = std::make_unique<wanrt::TensorRTBackend>(manifest);
#else
        throw wanrt::Error("this wan-rt-cpp was built without TensorRT; rebuild with -DWANRT_WITH_TENSORRT=ON or use --triton-url");
#endif
    }
    wanrt::PipelineOptions options;
    if (args.flags.count("-v")) options.log = [](const std::string& line) { std::cerr << line << "\n"; };
    wanrt::Pipeline pipeline(manifest, *backend, options);
    wanrt::GenerationResult result = pipeline.generate(request);
    if (!save_latents.empty()) wanrt::write_npy(save_latents, result.latents);
    if (writer) {
        auto started = std::chrono::steady_clock::now();
        int frames = pipeline.decode(result.latents, [&](const wanrt::Tensor& pixels) { writer->write(pixels); });
        writer->close();
        result.timings.emplace_back(
            "decode", std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
        if (frames != result.frames)
            throw wanrt::Error("decoder produced " + std::to_string(frames) + " frames, expected " +
                               std::to_string(result.frames) + "; the engines folder is inconsistent, rebuild it");
    }
    std::cout << "wrote " << (out.empty() ? save_latents : out) << ": " << result.summary() << " (" << backend->describe()
              << ")\n";
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc >= 2 && (std::string(argv[1]) == "-h" || std::string(argv[1]) == "--help")) {
        std::cout << kUsage;
        return 0;
    }
    if (argc >= 2 && std::string(argv[1]) == "--version") {
        std::cout << "wan-rt-cpp " << WANRT_VERSION << "\n";
        return 0;
    }
    try {
        Args args = parse(argc, argv);
        if (args.command == "check") return check(args);
        if (args.command == "generate") return generate(args);
        throw wanrt::Error("unknown command '" + args.command + "': use check or generate (wan-rt-cpp --help)");
    } catch (const wanrt::Error& e) {
        std::cerr << "error: " << e.what() << "\n";
        return 2;
    } catch (const std::exception& e) {
        std::cerr << "internal error: " << e.what() << "\n";
        return 3;
    }
}
