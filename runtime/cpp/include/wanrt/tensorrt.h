// TensorRTBackend: runs the engines of a manifest whose components were built for TensorRT (backend "tensorrt"),
// with the TensorRT C++ runtime (deserializeCudaEngine, setInputShape, setTensorAddress, enqueueV3).
// Compiled only when CMake finds TensorRT and CUDA (-DWANRT_WITH_TENSORRT=ON); WANRT_HAS_TENSORRT is then defined.
#pragma once

#include <memory>
#include <string>

#include "wanrt/backend.h"

namespace wanrt {

class TensorRTBackend : public Backend {
public:
    // Engines are deserialized on first use of each component and kept.
    explicit TensorRTBackend(const Manifest& manifest, int device = 0);
    ~TensorRTBackend() override;
    std::vector<Tensor> run(const std::string& component, const std::vector<Tensor>& inputs) override;
    std::string describe() const override;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace wanrt
