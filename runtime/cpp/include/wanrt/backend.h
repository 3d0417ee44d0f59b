// A backend runs one component graph per call: text_encoder, dit, vae_encoder, vae_decoder_first,
// vae_decoder_step, with the tensor names of manifest.json. Implementations: TritonBackend (KServe v2 over HTTP,
// triton.h), TensorRTBackend (when built with WANRT_WITH_TENSORRT, tensorrt.h), or your own.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "wanrt/manifest.h"
#include "wanrt/tensor.h"

namespace wanrt {

class Backend {
public:
    virtual ~Backend() = default;
    // Run `component` on `inputs` (every declared input, by name); returns every declared output.
    virtual std::vector<Tensor> run(const std::string& component, const std::vector<Tensor>& inputs) = 0;
    // One line for logs: "triton http://127.0.0.1:8000", "tensorrt /engines".
    virtual std::string describe() const = 0;
};

// Wraps a backend: inputs are checked against the manifest before the call (one clear line instead of a server
// or library error), outputs after it (every declared output present, declared dtype and rank).
class CheckedBackend : public Backend {
public:
    CheckedBackend(const Manifest& manifest, Backend& inner) : manifest_(manifest), inner_(inner) {}
    std::vector<Tensor> run(const std::string& component, const std::vector<Tensor>& inputs) override;
    std::string describe() const override { return inner_.describe(); }

private:
    const Manifest& manifest_;
    Backend& inner_;
};

}  // namespace wanrt
