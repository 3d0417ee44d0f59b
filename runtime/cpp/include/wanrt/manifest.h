// manifest.json: the one contract between wan-export (writer) and the runtimes (readers).
// Same checks as runtime/wan_rt/manifest.py: format and version, every listed file present with its sha256
// (cached in .verified.json by size and mtime, shared with the Python runtime), component I/O declared.
#pragma once

#include <array>
#include <map>
#include <string>
#include <vector>

#include "wanrt/tensor.h"

namespace wanrt {

inline constexpr const char* kManifestFormat = "wan-deploy-engines";
inline constexpr int kManifestVersion = 1;
inline constexpr int kTemporalStride = 4;   // pixel frames per latent frame (after the first)
inline constexpr int kSpatialStride = 16;   // pixels per latent cell
inline constexpr int kTokenStride = 32;     // pixels per DiT token side

int latent_frames(int frames);

// One axis of a declared tensor shape: a fixed size, or a dynamic axis `dim` (optionally `dim*factor`).
struct AxisSpec {
    int64_t fixed = -1;  // >= 0 for a fixed axis
    std::string dim;     // name in ComponentInfo::dims for a dynamic one
    int64_t factor = 1;
    std::string str() const;
};

struct TensorInfo {
    std::string name;
    DType dtype = DType::Float32;
    std::vector<AxisSpec> shape;
};

struct ComponentInfo {
    std::string name;
    std::string backend;    // onnxruntime | tensorrt | tensorrt-rtx
    std::string precision;
    std::string file;       // the engine or ONNX graph, relative to the manifest folder
    std::map<std::string, std::string> files;  // every file of this component -> sha256
    std::vector<TensorInfo> inputs, outputs;
    std::map<std::string, std::array<int64_t, 3>> dims;  // dynamic axis -> {min, opt, max}
    int64_t max_dim(const std::string& dim) const;      // dims[dim][2], Error when absent
};

struct ShapeLimits {
    std::array<int, 2> width{}, height{}, frames{}, batch{};
    int max_area = 0, multiple = 32;
    std::array<int, 2> default_size{};  // (width, height)
    int default_frames = 0;
    void check_size(int width, int height) const;  // Error with the allowed range
    void check_frames(int frames) const;
};

struct ModelInfo {
    std::string name;
    int z_dim = 48;       // latent channels (vae.z_dim)
    int dit_dim = 0, num_heads = 0, text_len = 512, out_dim = 48;
    int head_dim() const { return dit_dim / num_heads; }
};

struct SamplingDefaults {
    int steps = 50;
    double shift = 5.0, guide_scale = 5.0;
    int fps = 24;
    std::string solver = "unipc", negative_prompt;
};

class Manifest {
public:
    std::string root;  // the engines folder
    ModelInfo model;
    SamplingDefaults sampling;
    ShapeLimits limits;
    std::string tokenizer_dir;                       // relative to root
    std::map<std::string, std::string> tokenizer_files;  // relative path -> sha256
    std::map<std::string, ComponentInfo> components;

    const ComponentInfo& component(const std::string& name) const;  // Error when the folder lacks it
    std::string path(const std::string& component) const;           // root / file
    std::map<std::string, std::string> all_files() const;           // tokenizer + every component's files
};

// `folder` is the engines folder or its manifest.json. verify: check every file's sha256 (cached).
Manifest load_manifest(const std::string& folder, bool verify = true);
void verify_files(const std::string& root, const std::map<std::string, std::string>& expected);
std::string sha256_file(const std::string& path);  // lower-case hex
std::string sha256_hex(const void* data, std::size_t size);

// Names, dtypes and shapes of `inputs` against the component's declared inputs and dims (one-line Error).
void check_feeds(const ComponentInfo& component, const std::vector<Tensor>& inputs);

}  // namespace wanrt
