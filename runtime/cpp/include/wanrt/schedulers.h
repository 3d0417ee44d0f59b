// Flow-matching solvers, a port of runtime/wan_rt/schedulers (numpy), equal to the official Wan2.2 ones.
//
//   auto sched = wanrt::make_scheduler("unipc", 50, 5.0);
//   while (!sched->done()) {
//       int64_t t = sched->timestep();          // what the model is conditioned on
//       ... v = model(x, t) ...
//       sched->step(v, x, x, n);                // in place
//   }
//
// Same sigma grids (float64, numpy's linspace arithmetic), same float32 scalar coefficients (log/exp/expm1
// evaluated in double by the C library, then rounded to float32, as the numpy code does with Python's math),
// same float32 elementwise operations in the same order: the results are bit-identical to the numpy solvers
// (built without -ffast-math and with -ffp-contract=off, which the CMake project sets).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace wanrt {

inline constexpr int kNumTrainTimesteps = 1000;

std::vector<double> shift_sigmas(std::vector<double> sigmas, double shift);
std::vector<double> unipc_sigmas(int steps, double shift);  // starts at shift(float32(0.999))
std::vector<double> dpm_sigmas(int steps, double shift);    // starts at 1

class FlowScheduler {
public:
    virtual ~FlowScheduler() = default;
    const std::string& name() const { return name_; }
    int steps() const { return steps_; }
    double shift() const { return shift_; }
    const std::vector<int64_t>& timesteps() const { return timesteps_; }  // int64(sigma64 * 1000)
    const std::vector<float>& sigmas() const { return sigmas_; }          // float32, steps + 1 (ends in 0)
    int step_index() const { return index_; }
    bool done() const { return index_ >= steps_; }
    int64_t timestep() const;  // for the next step; Error when done

    // One step over n float32 values: out may alias x (in place). The first call fixes n.
    void step(const float* v, const float* x, float* out, std::size_t n);
    // step(uncond + guide_scale * (cond - uncond), x) with the guidance combine fused (official float32 order).
    void step_cfg(const float* cond, const float* uncond, double guide_scale, const float* x, float* out,
                  std::size_t n);

protected:
    FlowScheduler(std::string name, int steps, double shift, const std::vector<double>& sigmas64);
    // Solver state for n elements (called once, at the first step).
    virtual void allocate(std::size_t n) { (void)n; }
    // Step `step_index()` over all n elements; the model output is cond, or the guidance combine
    // uncond + guide * (cond - uncond) when uncond is not null.
    virtual void step_all(const float* cond, const float* uncond, float guide, const float* x, float* out,
                          std::size_t n) = 0;
    std::vector<float> lambdas_;  // float32 log-SNR per sigma, as the official code

private:
    void run(const float* cond, const float* uncond, float guide, const float* x, float* out, std::size_t n);
    std::string name_;
    int steps_;
    double shift_;
    std::vector<int64_t> timesteps_;
    std::vector<float> sigmas_;
    int index_ = 0;
    std::size_t size_ = 0;
};

// name in {"unipc", "dpm++", "euler"}, steps >= 1, finite shift > 0; Error otherwise.
std::unique_ptr<FlowScheduler> make_scheduler(const std::string& name, int steps, double shift);

}  // namespace wanrt
