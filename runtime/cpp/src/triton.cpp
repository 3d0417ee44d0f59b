// KServe v2 inference over HTTP (tritonserver's /v2/models/NAME/infer), with libcurl.
// Binary tensor data extension: the body is a JSON header followed by each input's raw bytes, its length in the
// Inference-Header-Content-Length header; the reply has the same layout for the outputs.
#include "wanrt/triton.h"

#include <curl/curl.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <mutex>
#include <nlohmann/json.hpp>

namespace wanrt {

using json = nlohmann::json;

namespace {

constexpr const char* kHeaderLength = "inference-header-content-length";

struct Reply {
    long status = 0;
    std::string body;
    long header_length = -1;  // Inference-Header-Content-Length, when present
};

std::size_t on_body(char* data, std::size_t size, std::size_t count, void* user) {
    static_cast<std::string*>(user)->append(data, size * count);
    return size * count;
}

std::size_t on_header(char* data, std::size_t size, std::size_t count, void* user) {
    std::string line(data, size * count);
    auto colon = line.find(':');
    if (colon != std::string::npos) {
        std::string key = line.substr(0, colon);
        std::transform(key.begin(), key.end(), key.begin(), [](unsigned char c) { return std::tolower(c); });
        if (key == kHeaderLength) static_cast<Reply*>(user)->header_length = std::stol(line.substr(colon + 1));
    }
    return size * count;
}

// Little-endian raw bytes <-> JSON numbers, for the plain JSON protocol.
json to_json_data(const Tensor& t) {
    json data = json::array();
    const int64_t n = t.numel();
    switch (t.dtype) {
        case DType::Float32: for (int64_t i = 0; i < n; ++i) data.push_back(t.data<float>()[i]); break;
        case DType::Float64: for (int64_t i = 0; i < n; ++i) data.push_back(t.data<double>()[i]); break;
        case DType::Int64: for (int64_t i = 0; i < n; ++i) data.push_back(t.data<int64_t>()[i]); break;
        case DType::Int32: for (int64_t i = 0; i < n; ++i) data.push_back(t.data<int32_t>()[i]); break;
        case DType::UInt8: for (int64_t i = 0; i < n; ++i) data.push_back(t.data<uint8_t>()[i]); break;
        case DType::Int8: for (int64_t i = 0; i < n; ++i) data.push_back(t.data<int8_t>()[i]); break;
        default: throw Error("tensor " + t.describe() + ": use the binary protocol for this dtype");
    }
    return data;
}

void from_json_data(const json& data, Tensor& t) {
    const std::size_t n = static_cast<std::size_t>(t.numel());
    if (!data.is_array() || data.size() != n) throw Error("Triton output " + t.name + ": data does not match its shape");
    for (std::size_t i = 0; i < n; ++i) {
        switch (t.dtype) {
            case DType::Float32: t.data<float>()[i] = data[i].get<float>(); break;
            case DType::Float64: t.data<double>()[i] = data[i].get<double>(); break;
            case DType::Int64: t.data<int64_t>()[i] = data[i].get<int64_t>(); break;
            case DType::Int32: t.data<int32_t>()[i] = data[i].get<int32_t>(); break;
            case DType::UInt8: t.data<uint8_t>()[i] = data[i].get<uint8_t>(); break;
            case DType::Int8: t.data<int8_t>()[i] = data[i].get<int8_t>(); break;
            default: throw Error("Triton output " + t.describe() + ": use the binary protocol for this dtype");
        }
    }
}

std::string first_line(std::string text) {
    auto nl = text.find('\n');
    if (nl != std::string::npos) text = text.substr(0, nl);
    return text.size() > 300 ? text.substr(0, 300) + "..." : text;
}

}  // namespace

struct TritonBackend::Impl {
    TritonOptions options;
    std::string base;
    CURL* curl = nullptr;
    curl_slist* infer_headers = nullptr;

    std::string model(const std::string& component) const {
        auto it = options.model_names.find(component);
        std::string name = it == options.model_names.end() ? component : it->second;
        std::string path = "/v2/models/" + name;
        if (!options.model_version.empty()) path += "/versions/" + options.model_version;
        return path;
    }

    // One HTTP exchange; body empty means GET. Throws Error when the server cannot be reached.
    Reply exchange(const std::string& path, const std::string* body, curl_slist* headers) {
        Reply reply;
        curl_easy_reset(curl);
        std::string url = base + path;
        curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
        curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(curl, CURLOPT_TIMEOUT, options.timeout_s);
        curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT, 10L);
        curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_body);
        curl_easy_setopt(curl, CURLOPT_WRITEDATA, &reply.body);
        curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, on_header);
        curl_easy_setopt(curl, CURLOPT_HEADERDATA, &reply);
        if (body) {
            curl_easy_setopt(curl, CURLOPT_POST, 1L);
            curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body->data());
            curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(body->size()));
        }
        if (headers) curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
        CURLcode code = curl_easy_perform(curl);
        if (code != CURLE_OK)
            throw Error("cannot reach Triton at " + base + " (" + curl_easy_strerror(code) +
                        "); start tritonserver with the repository from wan-export triton, or fix --triton-url");
        curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &reply.status);
        return reply;
    }

    static std::string error_of(const Reply& reply) {
        try {
            json j = json::parse(reply.body);
            if (j.is_object() && j.contains("error")) return first_line(j["error"].get<std::string>());
        } catch (const json::exception&) {
        }
        return "HTTP " + std::to_string(reply.status) + (reply.body.empty() ? "" : ": " + first_line(reply.body));
    }
};

TritonBackend::TritonBackend(TritonOptions options) : impl_(std::make_unique<Impl>()) {
    static std::once_flag once;
    std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
    impl_->options = std::move(options);
    impl_->base = impl_->options.url;
    if (impl_->base.find("://") == std::string::npos) impl_->base = "http://" + impl_->base;
    while (!impl_->base.empty() && impl_->base.back() == '/') impl_->base.pop_back();
    impl_->curl = curl_easy_init();
    if (!impl_->curl) throw Error("libcurl failed to initialise");
    impl_->infer_headers = curl_slist_append(nullptr, "Expect:");  // no 100-continue round trip for big bodies
}

TritonBackend::~TritonBackend() {
    curl_slist_free_all(impl_->infer_headers);
    curl_easy_cleanup(impl_->curl);
}

std::string TritonBackend::describe() const { return "triton " + impl_->base; }

std::vector<Tensor> TritonBackend::run(const std::string& component, const std::vector<Tensor>& inputs) {
    const bool binary = impl_->options.binary;
    json header = {{"inputs", json::array()}};
    std::size_t payload = 0;
    for (const auto& t : inputs) {
        json input = {{"name", t.name}, {"shape", t.shape}, {"datatype", kserve_datatype(t.dtype)}};
        if (binary) {
            input["parameters"] = {{"binary_data_size", t.bytes.size()}};
            payload += t.bytes.size();
        } else {
            input["data"] = to_json_data(t);
        }
        header["inputs"].push_back(std::move(input));
    }
    header["parameters"] = {{"binary_data_output", binary}};
    std::string body = header.dump();
    const std::size_t header_size = body.size();
    curl_slist* headers = nullptr;
    for (curl_slist* h = impl_->infer_headers; h; h = h->next) headers = curl_slist_append(headers, h->data);
    if (binary) {
        body.reserve(header_size + payload);
        for (const auto& t : inputs) body.append(reinterpret_cast<const char*>(t.bytes.data()), t.bytes.size());
        headers = curl_slist_append(headers, "Content-Type: application/octet-stream");
        headers = curl_slist_append(headers, ("Inference-Header-Content-Length: " + std::to_string(header_size)).c_str());
    } else {
        headers = curl_slist_append(headers, "Content-Type: application/json");
    }
    Reply reply;
    try {
        reply = impl_->exchange(impl_->model(component) + "/infer", &body, headers);
    } catch (...) {
        curl_slist_free_all(headers);
        throw;
    }
    curl_slist_free_all(headers);
    if (reply.status != 200)
        throw Error("Triton model for " + component + " failed: " + Impl::error_of(reply));

    const std::size_t json_size = reply.header_length >= 0 ? static_cast<std::size_t>(reply.header_length) : reply.body.size();
    if (json_size > reply.body.size()) throw Error("Triton reply for " + component + " is truncated");
    json answer;
    try {
        answer = json::parse(reply.body.begin(), reply.body.begin() + static_cast<std::ptrdiff_t>(json_size));
    } catch (const json::parse_error& e) {
        throw Error("Triton reply for " + component + " is not KServe v2 JSON (" + std::string(e.what()) + ")");
    }
    std::vector<Tensor> outputs;
    std::size_t offset = json_size;
    try {
        for (const auto& out : answer.at("outputs")) {
            Tensor t(out.at("name").get<std::string>(), dtype_from_kserve(out.at("datatype").get<std::string>()),
                     out.at("shape").get<std::vector<int64_t>>());
            if (out.contains("parameters") && out["parameters"].contains("binary_data_size")) {
                std::size_t size = out["parameters"]["binary_data_size"].get<std::size_t>();
                if (size != t.bytes.size() || offset + size > reply.body.size())
                    throw Error("Triton output " + t.describe() + " of " + component + " has " +
                                std::to_string(size) + " bytes of data, its shape needs " + std::to_string(t.bytes.size()));
                std::memcpy(t.bytes.data(), reply.body.data() + offset, size);
                offset += size;
            } else {
                from_json_data(out.at("data"), t);
            }
            outputs.push_back(std::move(t));
        }
    } catch (const json::exception& e) {
        throw Error("Triton reply for " + component + " is malformed (" + std::string(e.what()) + ")");
    }
    return outputs;
}

void TritonBackend::check_models(const Manifest& manifest, const std::vector<std::string>& components) {
    Reply live = impl_->exchange("/v2/health/live", nullptr, nullptr);
    if (live.status != 200) throw Error("Triton at " + impl_->base + " is not live (" + Impl::error_of(live) + ")");
    for (const auto& name : components) {
        const ComponentInfo& info = manifest.component(name);
        std::string path = impl_->model(name);
        Reply ready = impl_->exchange(path + "/ready", nullptr, nullptr);
        if (ready.status != 200)
            throw Error("Triton at " + impl_->base + " has no ready model for " + name + " (" + Impl::error_of(ready) +
                        "); serve the repository written by wan-export triton --engines " + manifest.root);
        Reply meta = impl_->exchange(path, nullptr, nullptr);
        json j;
        try {
            j = json::parse(meta.body);
        } catch (const json::exception&) {
            throw Error("Triton model metadata for " + name + " is not JSON (" + Impl::error_of(meta) + ")");
        }
        auto compare = [&](const char* kind, const std::vector<TensorInfo>& declared) {
            for (const auto& want : declared) {
                bool found = false;
                for (const auto& t : j.value(kind, json::array())) {
                    if (t.value("name", std::string()) != want.name) continue;
                    found = true;
                    if (t.value("datatype", std::string()) != kserve_datatype(want.dtype))
                        throw Error("Triton model for " + name + ": " + want.name + " is " + t.value("datatype", std::string()) +
                                    ", the manifest says " + kserve_datatype(want.dtype) + "; the server runs other engines");
                }
                if (!found)
                    throw Error("Triton model for " + name + " has no " + std::string(kind).substr(0, std::strlen(kind) - 1) +
                                " " + want.name + "; the server runs other engines than " + manifest.root);
            }
        };
        compare("inputs", info.inputs);
        compare("outputs", info.outputs);
    }
}

}  // namespace wanrt
