// TritonBackend: each component is a model of a running tritonserver (e.g. the repository written by
// `wan-export triton`), called over KServe v2 HTTP with libcurl. Tensors travel in the binary tensor data
// extension (JSON header + raw bytes) by default, or as plain JSON.
#pragma once

#include <map>
#include <memory>
#include <string>

#include "wanrt/backend.h"

namespace wanrt {

struct TritonOptions {
    std::string url = "http://127.0.0.1:8000";  // the server's HTTP endpoint
    long timeout_s = 600;                       // per request
    bool binary = true;                         // binary tensor data extension; false: plain JSON (slow)
    std::map<std::string, std::string> model_names;  // component -> model name (default: the component name)
    std::string model_version;                       // empty: the server's policy
};

class TritonBackend : public Backend {
public:
    explicit TritonBackend(TritonOptions options);
    ~TritonBackend() override;
    TritonBackend(const TritonBackend&) = delete;
    TritonBackend& operator=(const TritonBackend&) = delete;

    std::vector<Tensor> run(const std::string& component, const std::vector<Tensor>& inputs) override;
    std::string describe() const override;

    // Server live and every component's model ready, with the manifest's input and output names;
    // Error naming the first problem and the fix otherwise.
    void check_models(const Manifest& manifest, const std::vector<std::string>& components);

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace wanrt
