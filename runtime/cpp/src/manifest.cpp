#include "wanrt/manifest.h"

#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>

namespace wanrt {

using json = nlohmann::json;

namespace {

constexpr const char* kManifestName = "manifest.json";
constexpr const char* kVerifiedCache = ".verified.json";  // shared with runtime/wan_rt/manifest.py

bool is_dir(const std::string& path) {
    struct stat st;
    return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool is_file(const std::string& path) {
    struct stat st;
    return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

std::string join(const std::string& root, const std::string& relative) {
    return root.empty() || root.back() == '/' ? root + relative : root + "/" + relative;
}

std::string read_text(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream buffer;
    buffer << in.rdbuf();
    return buffer.str();
}

std::array<int, 2> pair_of(const json& j) { return {j.at(0).get<int>(), j.at(1).get<int>()}; }

AxisSpec axis_of(const json& j) {
    AxisSpec a;
    if (j.is_number_integer()) {
        a.fixed = j.get<int64_t>();
        return a;
    }
    std::string text = j.get<std::string>();
    auto star = text.find('*');
    a.dim = text.substr(0, star);
    if (star != std::string::npos) a.factor = std::stoll(text.substr(star + 1));
    return a;
}

TensorInfo tensor_info_of(const json& j) {
    TensorInfo t;
    t.name = j.at("name").get<std::string>();
    t.dtype = dtype_from_name(j.at("dtype").get<std::string>());
    for (const auto& axis : j.at("shape")) t.shape.push_back(axis_of(axis));
    return t;
}

ComponentInfo component_of(const std::string& name, const json& j) {
    ComponentInfo c;
    c.name = name;
    c.backend = j.at("backend").get<std::string>();
    c.precision = j.at("precision").get<std::string>();
    c.file = j.at("file").get<std::string>();
    for (const auto& [file, digest] : j.at("files").items()) c.files[file] = digest.get<std::string>();
    for (const auto& t : j.at("inputs")) c.inputs.push_back(tensor_info_of(t));
    for (const auto& t : j.at("outputs")) c.outputs.push_back(tensor_info_of(t));
    for (const auto& [dim, range] : j.at("dims").items())
        c.dims[dim] = {range.at(0).get<int64_t>(), range.at(1).get<int64_t>(), range.at(2).get<int64_t>()};
    return c;
}

ShapeLimits limits_of(const json& j) {
    ShapeLimits l;
    l.width = pair_of(j.at("width"));
    l.height = pair_of(j.at("height"));
    l.max_area = j.at("max_area").get<int>();
    l.multiple = j.at("multiple").get<int>();
    l.frames = pair_of(j.at("frames"));
    l.batch = pair_of(j.at("batch"));
    l.default_size = pair_of(j.at("default_size"));
    l.default_frames = j.at("default_frames").get<int>();
    // The same consistency checks as ShapeLimits.__post_init__.
    for (auto [name, range] : {std::pair{"width", l.width}, std::pair{"height", l.height}})
        if (range[0] % l.multiple || range[1] % l.multiple || range[0] > range[1])
            throw Error(std::string("profile ") + name + " range " + std::to_string(range[0]) + ".." +
                        std::to_string(range[1]) + " must be multiples of " + std::to_string(l.multiple) +
                        ", min <= max");
    if (l.multiple <= 0 || l.multiple % kTokenStride)
        throw Error("profile multiple " + std::to_string(l.multiple) + " must be a multiple of " +
                    std::to_string(kTokenStride));
    for (int frames : l.frames)
        if ((frames - 1) % kTemporalStride) throw Error("profile frame count " + std::to_string(frames) + " is not 4n+1");
    l.check_size(l.default_size[0], l.default_size[1]);
    l.check_frames(l.default_frames);
    return l;
}

}  // namespace

int latent_frames(int frames) { return (frames - 1) / kTemporalStride + 1; }

std::string AxisSpec::str() const {
    if (fixed >= 0) return std::to_string(fixed);
    return factor == 1 ? dim : dim + "*" + std::to_string(factor);
}

int64_t ComponentInfo::max_dim(const std::string& dim) const {
    auto it = dims.find(dim);
    if (it == dims.end()) throw Error(name + ": the manifest declares no dynamic axis '" + dim + "'; rebuild the engines");
    return it->second[2];
}

void ShapeLimits::check_size(int w, int h) const {
    if (w % multiple || h % multiple)
        throw Error("size " + std::to_string(w) + "x" + std::to_string(h) + " is not a multiple of " +
                    std::to_string(multiple) + "; e.g. " + std::to_string(w / multiple * multiple) + "x" +
                    std::to_string(h / multiple * multiple));
    if (!(width[0] <= w && w <= width[1] && height[0] <= h && h <= height[1]) ||
        static_cast<int64_t>(w) * h > max_area)
        throw Error("size " + std::to_string(w) + "x" + std::to_string(h) +
                    " is outside what these engines were built for: width " + std::to_string(width[0]) + ".." +
                    std::to_string(width[1]) + ", height " + std::to_string(height[0]) + ".." +
                    std::to_string(height[1]) + ", area <= " + std::to_string(max_area) +
                    "; pick a size in range or rebuild with a profile that covers it");
}

void ShapeLimits::check_frames(int f) const {
    if (f < 1 || (f - 1) % kTemporalStride) {
        int below = std::max(1, (f - 1) / 4 * 4 + 1), above = (std::max(f, 1) - 1 + 3) / 4 * 4 + 1;
        throw Error("frame count " + std::to_string(f) + " is not 4n+1 (e.g. " + std::to_string(below) + " or " +
                    std::to_string(above) + ")");
    }
    if (!(frames[0] <= f && f <= frames[1]))
        throw Error("frame count " + std::to_string(f) + " is outside what these engines were built for (" +
                    std::to_string(frames[0]) + ".." + std::to_string(frames[1]) +
                    "); rebuild with a profile that covers it");
}

const ComponentInfo& Manifest::component(const std::string& name) const {
    auto it = components.find(name);
    if (it == components.end()) throw Error(root + " has no " + name + " engine; rebuild with wan-export build");
    return it->second;
}

std::string Manifest::path(const std::string& name) const { return join(root, component(name).file); }

std::map<std::string, std::string> Manifest::all_files() const {
    auto files = tokenizer_files;
    for (const auto& [name, info] : components) files.insert(info.files.begin(), info.files.end());
    return files;
}

// ------------------------------------------------------------------------------------------------ sha256
std::string sha256_hex(const void* data, std::size_t size) {
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int length = 0;
    if (!EVP_Digest(data, size, digest, &length, EVP_sha256(), nullptr)) throw Error("OpenSSL sha256 failed");
    static const char* hex = "0123456789abcdef";
    std::string out;
    for (unsigned int i = 0; i < length; ++i) out += {hex[digest[i] >> 4], hex[digest[i] & 15]};
    return out;
}

std::string sha256_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw Error("cannot read " + path);
    std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
    if (!ctx || !EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr)) throw Error("OpenSSL sha256 failed");
    std::vector<char> block(1 << 22);
    while (in) {
        in.read(block.data(), static_cast<std::streamsize>(block.size()));
        if (in.gcount() > 0) EVP_DigestUpdate(ctx.get(), block.data(), static_cast<std::size_t>(in.gcount()));
    }
    if (in.bad()) throw Error("cannot read " + path + " (I/O error)");
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int length = 0;
    EVP_DigestFinal_ex(ctx.get(), digest, &length);
    static const char* hex = "0123456789abcdef";
    std::string out;
    for (unsigned int i = 0; i < length; ++i) out += {hex[digest[i] >> 4], hex[digest[i] & 15]};
    return out;
}

// ------------------------------------------------------------------------------------------------ verify
void verify_files(const std::string& root, const std::map<std::string, std::string>& expected) {
    json cache = json::object();
    try {
        if (is_file(join(root, kVerifiedCache))) cache = json::parse(read_text(join(root, kVerifiedCache)));
        if (!cache.is_object()) cache = json::object();
    } catch (const json::exception&) {
        cache = json::object();
    }
    bool changed = false;
    for (const auto& [relative, digest] : expected) {
        std::string path = join(root, relative);
        struct stat st;
        if (::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode))
            throw Error(root + ": missing file " + relative + " named in manifest.json; rebuild the engines folder");
        int64_t mtime_ns = static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000LL + st.st_mtim.tv_nsec;
        json stamp = json::array({static_cast<int64_t>(st.st_size), mtime_ns, digest});
        if (cache.contains(relative) && cache[relative] == stamp) continue;
        if (sha256_file(path) != digest)
            throw Error(root + ": " + relative + " does not match its sha256 in manifest.json (corrupt or replaced); "
                        "rebuild the engines folder");
        cache[relative] = stamp;
        changed = true;
    }
    if (!changed) return;
    // Best effort, like the Python runtime: a read-only folder just means hashing again next time.
    std::string tmp = join(root, std::string(kVerifiedCache) + ".tmp-" + std::to_string(::getpid()));
    std::ofstream out(tmp, std::ios::trunc);
    if (out && (out << cache.dump(1)) && out.flush()) {
        out.close();
        if (std::rename(tmp.c_str(), join(root, kVerifiedCache).c_str()) != 0) std::remove(tmp.c_str());
    } else {
        std::remove(tmp.c_str());
    }
}

// ------------------------------------------------------------------------------------------------ load
Manifest load_manifest(const std::string& folder, bool verify) {
    std::string root = folder;
    if (is_file(folder) && folder.size() >= 13 && folder.compare(folder.size() - 13, 13, kManifestName) == 0) {
        auto slash = folder.find_last_of('/');
        root = slash == std::string::npos ? "." : folder.substr(0, slash);
    }
    while (root.size() > 1 && root.back() == '/') root.pop_back();
    std::string path = join(root, kManifestName);
    if (!is_dir(root))
        throw Error("engines folder " + root + " does not exist; build one with wan-export build --out " + root);
    if (!is_file(path))
        throw Error(root + " has no manifest.json: not an engines folder (build one with wan-export build)");
    json data;
    try {
        data = json::parse(read_text(path));
    } catch (const json::parse_error& e) {
        throw Error(path + ": invalid JSON (" + std::string(e.what()) + "); rebuild the engines folder");
    }
    if (!data.is_object() || data.value("format", json()) != kManifestFormat)
        throw Error(path + ": not a wan-deploy manifest (format " +
                    (data.is_object() && data.contains("format") ? data["format"].dump() : std::string("missing")) + ")");
    if (data.value("format_version", json()) != kManifestVersion)
        throw Error(path + ": manifest format version " +
                    (data.contains("format_version") ? data["format_version"].dump() : std::string("missing")) +
                    " but this wan-rt-cpp reads version " + std::to_string(kManifestVersion) +
                    "; rebuild the engines with the matching wan-export");
    Manifest m;
    m.root = root;
    try {
        for (const auto& [name, info] : data.at("components").items()) m.components[name] = component_of(name, info);
        m.limits = limits_of(data.at("limits"));
        const json& tokenizer = data.at("tokenizer");
        m.tokenizer_dir = tokenizer.at("dir").get<std::string>();
        for (const auto& [file, digest] : tokenizer.at("files").items()) m.tokenizer_files[file] = digest.get<std::string>();
        const json& model = data.at("model");
        m.model.name = model.at("name").get<std::string>();
        m.model.z_dim = model.at("vae").at("z_dim").get<int>();
        const json& dit = model.at("dit");
        m.model.dit_dim = dit.at("dim").get<int>();
        m.model.num_heads = dit.at("num_heads").get<int>();
        m.model.text_len = dit.value("text_len", 512);
        m.model.out_dim = dit.value("out_dim", m.model.z_dim);
        if (m.model.num_heads <= 0 || m.model.dit_dim % m.model.num_heads)
            throw Error(path + ": model.dit dim " + std::to_string(m.model.dit_dim) + " is not a multiple of num_heads");
        const json& sampling = data.at("sampling");
        m.sampling.steps = sampling.at("steps").get<int>();
        m.sampling.shift = sampling.at("shift").get<double>();
        m.sampling.guide_scale = sampling.at("guide_scale").get<double>();
        m.sampling.fps = sampling.value("fps", 24);
        m.sampling.solver = sampling.value("solver", std::string("unipc"));
        m.sampling.negative_prompt = sampling.value("negative_prompt", std::string());
    } catch (const json::exception& e) {
        throw Error(path + ": manifest is incomplete (" + std::string(e.what()) + "); rebuild the engines folder");
    }
    if (verify) verify_files(root, m.all_files());
    return m;
}

// ------------------------------------------------------------------------------------------------ feeds
void check_feeds(const ComponentInfo& c, const std::vector<Tensor>& inputs) {
    std::vector<std::string> missing, extra;
    for (const auto& want : c.inputs) {
        bool found = false;
        for (const auto& t : inputs) found = found || t.name == want.name;
        if (!found) missing.push_back(want.name);
    }
    for (const auto& t : inputs) {
        bool known = false;
        for (const auto& want : c.inputs) known = known || t.name == want.name;
        if (!known) extra.push_back(t.name);
    }
    if (!missing.empty() || !extra.empty()) {
        auto list = [](const std::vector<std::string>& names) {
            std::string s = "[";
            for (std::size_t i = 0; i < names.size(); ++i) s += (i ? ", " : "") + names[i];
            return s + "]";
        };
        throw Error(c.name + ": inputs do not match the engine (missing " + list(missing) + ", unexpected " +
                    list(extra) + ")");
    }
    std::map<std::string, int64_t> bound;
    for (const auto& want : c.inputs) {
        const Tensor& t = find_tensor(inputs, want.name);
        std::string where = c.name + ": input " + want.name;
        if (t.dtype != want.dtype)
            throw Error(where + " is " + dtype_name(t.dtype) + ", the engine takes " + dtype_name(want.dtype));
        std::string declared = "[";
        for (std::size_t i = 0; i < want.shape.size(); ++i) declared += (i ? ", " : "") + want.shape[i].str();
        declared += "]";
        if (t.shape.size() != want.shape.size())
            throw Error(where + " has shape " + shape_str(t.shape) + ", the engine takes " + declared);
        if (t.bytes.size() != static_cast<std::size_t>(t.numel()) * dtype_size(t.dtype))
            throw Error(where + " holds " + std::to_string(t.bytes.size()) + " bytes, its shape needs " +
                        std::to_string(t.numel() * static_cast<int64_t>(dtype_size(t.dtype))));
        for (std::size_t axis = 0; axis < want.shape.size(); ++axis) {
            const AxisSpec& a = want.shape[axis];
            int64_t size = t.shape[axis];
            std::string at = where + " axis " + std::to_string(axis) + " is " + std::to_string(size);
            if (a.fixed >= 0) {
                if (size != a.fixed) throw Error(at + ", the engine takes " + std::to_string(a.fixed));
                continue;
            }
            if (size % a.factor) throw Error(at + ", not a multiple of " + std::to_string(a.factor));
            int64_t value = size / a.factor;
            auto range = c.dims.find(a.dim);
            if (range == c.dims.end())
                throw Error(c.name + ": axis '" + a.dim + "' has no range in the manifest; rebuild the engines");
            if (value < range->second[0] || value > range->second[2])
                throw Error(at + ", outside the range the engine was built for (" +
                            std::to_string(range->second[0] * a.factor) + ".." +
                            std::to_string(range->second[2] * a.factor) + "); rebuild with a profile that covers it");
            auto [it, inserted] = bound.emplace(a.dim, value);
            if (!inserted && it->second != value)
                throw Error(at + ", inconsistent with the other inputs (" + a.dim + " = " + std::to_string(it->second) + ")");
        }
    }
}

}  // namespace wanrt
