// Port of runtime/wan_rt/schedulers/{base,unipc,dpmpp,euler}.py. Read those files' comments for the why of each
// operation: here each float32 operation is written in the same order, element by element (numpy runs the same
// operations chunk by chunk; every elementwise float32 operation is correctly rounded either way, so the
// results are bit-identical).
#include "wanrt/schedulers.h"

#include <cmath>
#include <limits>

#include "wanrt/tensor.h"

namespace wanrt {
namespace {

// Python's math.log/exp/expm1 on a double, rounded to float32: the numpy code's log32/exp32/expm1_32.
float log32(float x) {
    double d = static_cast<double>(x);
    return d > 0.0 ? static_cast<float>(std::log(d)) : -std::numeric_limits<float>::infinity();
}
float exp32(float x) { return static_cast<float>(std::exp(static_cast<double>(x))); }
float expm1_32(float x) { return static_cast<float>(std::expm1(static_cast<double>(x))); }

// log-SNR of a flow sigma on float32 scalars: log(1 - sigma) - log(sigma).
float lambda32(float sigma) {
    float alpha = 1.0f - sigma;
    return log32(alpha) - log32(sigma);
}

// numpy.linspace(start, stop, num)[:count] in float64: i * ((stop - start) / (num - 1)) + start.
std::vector<double> linspace_head(double start, double stop, int num, int count) {
    double step = (stop - start) / static_cast<double>(num - 1);
    std::vector<double> out(static_cast<std::size_t>(count));
    for (int i = 0; i < count; ++i) out[static_cast<std::size_t>(i)] = static_cast<double>(i) * step + start;
    if (count == num) out.back() = stop;
    return out;
}

// The guided model output of element k (official: uncond + g * (cond - uncond), float32).
template <bool Guided>
inline float model_output(const float* cond, const float* uncond, float guide, std::size_t k) {
    if constexpr (Guided) {
        float c = cond[k] - uncond[k];
        c = c * guide;
        return uncond[k] + c;
    } else {
        (void)uncond;
        (void)guide;
        return cond[k];
    }
}

// ------------------------------------------------------------------------------------------------ Euler
class EulerScheduler final : public FlowScheduler {
public:
    EulerScheduler(int steps, double shift) : FlowScheduler("euler", steps, shift, unipc_sigmas(steps, shift)) {}

protected:
    void step_all(const float* cond, const float* uncond, float guide, const float* x, float* out,
                  std::size_t n) override {
        int i = step_index();
        float dt = sigmas()[i + 1] - sigmas()[i];
        if (uncond) loop<true>(cond, uncond, guide, x, out, n, dt);
        else loop<false>(cond, uncond, guide, x, out, n, dt);
    }

private:
    template <bool G>
    static void loop(const float* cond, const float* uncond, float guide, const float* x, float* out, std::size_t n,
                     float dt) {
        for (std::size_t k = 0; k < n; ++k) {
            float a = model_output<G>(cond, uncond, guide, k) * dt;
            out[k] = x[k] + a;
        }
    }
};

// ------------------------------------------------------------------------------------------------ DPM++ 2M
class DPMPPScheduler final : public FlowScheduler {
public:
    DPMPPScheduler(int steps, double shift) : FlowScheduler("dpm++", steps, shift, dpm_sigmas(steps, shift)) {}

protected:
    void allocate(std::size_t n) override {
        m1_.assign(n, 0.0f);
        spare_.assign(n, 0.0f);
    }

    void step_all(const float* cond, const float* uncond, float guide, const float* x, float* out,
                  std::size_t n) override {
        Coefs k;
        int i = step_index();
        k.sig = sigmas()[i];
        k.final = i == steps() - 1;
        if (!k.final) coefs(i, i == 0 ? 1 : 2, k);
        if (uncond) loop<true>(cond, uncond, guide, x, out, n, k);
        else loop<false>(cond, uncond, guide, x, out, n, k);
        m1_.swap(spare_);
    }

private:
    struct Coefs {
        float sig = 0, c1 = 0, c2 = 0, inv_r0 = 0, half_c2 = 0;
        bool final = false, second = false;
    };

    void coefs(int i, int order, Coefs& k) const {
        float sig_t = sigmas()[i + 1], sig_s0 = sigmas()[i];
        float alpha_t = 1.0f - sig_t;
        float lam_t = lambdas_[i + 1], lam_s0 = lambdas_[i];
        float h = lam_t - lam_s0;  // +inf when sigma_0 = 1
        k.c1 = sig_t / sig_s0;
        k.c2 = alpha_t * (exp32(-h) - 1.0f);
        k.second = order == 2;
        if (k.second) {
            float r0 = (lam_s0 - lambdas_[i - 1]) / h;
            k.inv_r0 = 1.0f / r0;  // 0 when sigma_{i-1} = 1 (lambda = -inf)
            k.half_c2 = 0.5f * k.c2;
        }
    }

    template <bool G>
    void loop(const float* cond, const float* uncond, float guide, const float* x, float* out, std::size_t n,
              const Coefs& k) {
        float* M1 = m1_.data();
        float* X0 = spare_.data();
        for (std::size_t e = 0; e < n; ++e) {
            float a = model_output<G>(cond, uncond, guide, e) * k.sig;  // x0 = sample - sigma*v
            if (k.final) {
                out[e] = x[e] - a;
                continue;
            }
            float x0 = x[e] - a;
            X0[e] = x0;
            a = x[e] * k.c1;
            float b = x0 * k.c2;
            if (!k.second) {
                out[e] = a - b;
                continue;
            }
            a = a - b;
            b = x0 - M1[e];
            b = b * k.inv_r0;   // D1 = (1/r0)*(x0 - m1)
            b = b * k.half_c2;  // (0.5*c2)*D1
            out[e] = a - b;
        }
    }

    std::vector<float> m1_, spare_;  // x0 of the previous step; x0 of this step
};

// ------------------------------------------------------------------------------------------------ UniPC bh2
class UniPCScheduler final : public FlowScheduler {
public:
    UniPCScheduler(int steps, double shift) : FlowScheduler("unipc", steps, shift, unipc_sigmas(steps, shift)) {}

protected:
    void allocate(std::size_t n) override {
        m0_.assign(n, 0.0f);
        spare_.assign(n, 0.0f);
        p_.assign(n, 0.0f);
        d1_.assign(n, 0.0f);
    }

    void step_all(const float* cond, const float* uncond, float guide, const float* x, float* out,
                  std::size_t n) override {
        int i = step_index();
        Coefs k;
        k.sig = sigmas()[i];
        k.final = i == steps() - 1;
        k.corrector = (i == 0 || k.final) ? 0 : (i == 1 ? 1 : 2);
        if (k.corrector) corrector_coefs(i, k.corrector, k);
        if (!k.final) predictor_coefs(i, i == 0 ? 1 : 2, k);
        if (uncond) loop<true>(cond, uncond, guide, x, out, n, k);
        else loop<false>(cond, uncond, guide, x, out, n, k);
        m0_.swap(spare_);  // model_outputs shift: newest x0 first
    }

private:
    struct Coefs {
        float sig = 0;
        bool final = false;
        int corrector = 0;
        bool has_rho0 = false;
        float rho0 = 0, rho1 = 0, cc3 = 0;             // corrector
        float pc1 = 0, pc2 = 0, nprk = 0, pc3h = 0;    // predictor
        bool predictor2 = false;
    };
    struct Base {
        float h, hh, h_phi_1, b_h, c1, c2, c3;
    };

    // Official float32 scalars for an update from sigma index s to t.
    Base base(int t, int s) const {
        Base b;
        float sig_t = sigmas()[t], sig_s = sigmas()[s];
        float alpha_t = 1.0f - sig_t;
        b.h = lambdas_[t] - lambdas_[s];
        b.hh = -b.h;
        b.h_phi_1 = expm1_32(b.hh);
        b.b_h = b.h_phi_1;  // bh2: B_h = expm1(hh)
        b.c1 = sig_t / sig_s;
        b.c2 = alpha_t * b.h_phi_1;
        b.c3 = alpha_t * b.b_h;
        return b;
    }

    void corrector_coefs(int i, int order, Coefs& k) const {
        Base b = base(i, i - 1);
        k.cc3 = b.c3;
        if (order == 1) {
            k.has_rho0 = false;
            k.cc3 = 0.5f * b.c3;  // rhos_c = [0.5]
            return;
        }
        float rk = (lambdas_[i - 2] - lambdas_[i - 1]) / b.h;
        float h_phi_k = b.h_phi_1 / b.hh - 1.0f;
        float b0 = h_phi_k * 1.0f / b.b_h;
        h_phi_k = h_phi_k / b.hh - 0.5f;
        float b1 = h_phi_k * 2.0f / b.b_h;
        // The official 2x2 float32 solve, done exactly in double and rounded (as the numpy code).
        double rho0 = (static_cast<double>(b0) - static_cast<double>(b1)) / (1.0 - static_cast<double>(rk));
        double rho1 = static_cast<double>(b0) - rho0;
        k.has_rho0 = true;
        k.rho0 = static_cast<float>(rho0);
        k.rho1 = static_cast<float>(rho1);
    }

    void predictor_coefs(int i, int order, Coefs& k) const {
        Base b = base(i + 1, i);
        k.pc1 = b.c1;
        k.pc2 = b.c2;
        k.predictor2 = order == 2;
        if (k.predictor2) {
            float rk = (lambdas_[i - 1] - lambdas_[i]) / b.h;
            k.nprk = -rk;
            k.pc3h = 0.5f * b.c3;
        }
    }

    template <bool G>
    void loop(const float* cond, const float* uncond, float guide, const float* x, float* out, std::size_t n,
              const Coefs& k) {
        float* M0 = m0_.data();
        float* X0 = spare_.data();
        float* P = p_.data();
        float* D = d1_.data();
        for (std::size_t e = 0; e < n; ++e) {
            float a = model_output<G>(cond, uncond, guide, e) * k.sig;  // x0 = sample - sigma*v
            if (k.final) {  // sigma_next = 0: x_t = x0
                out[e] = x[e] - a;
                continue;
            }
            float x0 = x[e] - a;
            X0[e] = x0;
            float b = 0.0f;
            if (k.corrector) {  // x_c = x_t_ - c3*(rho0*D1 + rho1*(x0 - m0))
                float c = x0 - M0[e];  // D1_t
                if (k.has_rho0) b = D[e] * k.rho0;
                D[e] = c / k.nprk;  // this predictor's D1 = (m0 - x0)/r1
                if (!k.has_rho0) {
                    c = c * k.cc3;
                } else {
                    c = c * k.rho1;
                    c = b + c;
                    c = c * k.cc3;
                }
                a = P[e] - c;  // x_c
                a = a * k.pc1;
            } else {
                a = x[e] * k.pc1;
            }
            b = x0 * k.pc2;
            float p = a - b;  // x_t_ = s_t/s_0*x_c - c2*x0
            P[e] = p;
            if (!k.predictor2) {
                out[e] = p;
                continue;
            }
            b = D[e] * k.pc3h;
            out[e] = p - b;
        }
    }

    std::vector<float> m0_, spare_, p_, d1_;
};

void check_args(const std::string& name, int steps, double shift) {
    if (steps < 1) throw Error("scheduler '" + name + "': steps must be an integer >= 1, got " + std::to_string(steps));
    if (!std::isfinite(shift) || shift <= 0)
        throw Error("scheduler '" + name + "': shift must be a finite number > 0, got " + std::to_string(shift));
}

}  // namespace

std::vector<double> shift_sigmas(std::vector<double> sigmas, double shift) {
    for (double& s : sigmas) s = shift * s / (1 + (shift - 1) * s);
    return sigmas;
}

std::vector<double> unipc_sigmas(int steps, double shift) {
    double sigma_max = static_cast<double>(static_cast<float>(1.0 - 1.0 / kNumTrainTimesteps));
    return shift_sigmas(linspace_head(sigma_max, 0.0, steps + 1, steps), shift);
}

std::vector<double> dpm_sigmas(int steps, double shift) {
    return shift_sigmas(linspace_head(1.0, 0.0, steps + 1, steps), shift);
}

FlowScheduler::FlowScheduler(std::string name, int steps, double shift, const std::vector<double>& sigmas64)
    : name_(std::move(name)), steps_(steps), shift_(shift) {
    for (double s : sigmas64) {
        timesteps_.push_back(static_cast<int64_t>(s * kNumTrainTimesteps));
        sigmas_.push_back(static_cast<float>(s));
    }
    sigmas_.push_back(0.0f);
    for (float s : sigmas_) lambdas_.push_back(lambda32(s));
}

int64_t FlowScheduler::timestep() const {
    if (done()) throw Error("scheduler '" + name_ + "': all " + std::to_string(steps_) + " steps are done");
    return timesteps_[static_cast<std::size_t>(index_)];
}

void FlowScheduler::step(const float* v, const float* x, float* out, std::size_t n) {
    run(v, nullptr, 0.0f, x, out, n);
}

void FlowScheduler::step_cfg(const float* cond, const float* uncond, double guide_scale, const float* x, float* out,
                             std::size_t n) {
    run(cond, uncond, static_cast<float>(guide_scale), x, out, n);
}

void FlowScheduler::run(const float* cond, const float* uncond, float guide, const float* x, float* out,
                        std::size_t n) {
    if (done())
        throw Error("scheduler '" + name_ + "': step called more than steps=" + std::to_string(steps_) + " times");
    if (size_ == 0) {
        if (n == 0) throw Error("scheduler '" + name_ + "': empty sample");
        size_ = n;
        allocate(n);
    } else if (n != size_) {
        throw Error("scheduler '" + name_ + "': sample size changed from " + std::to_string(size_) + " to " +
                    std::to_string(n));
    }
    step_all(cond, uncond, guide, x, out, n);
    ++index_;
}

std::unique_ptr<FlowScheduler> make_scheduler(const std::string& name, int steps, double shift) {
    if (name != "unipc" && name != "dpm++" && name != "euler")
        throw Error("unknown scheduler '" + name + "': choose one of unipc, dpm++, euler");
    check_args(name, steps, shift);
    if (name == "unipc") return std::make_unique<UniPCScheduler>(steps, shift);
    if (name == "dpm++") return std::make_unique<DPMPPScheduler>(steps, shift);
    return std::make_unique<EulerScheduler>(steps, shift);
}

}  // namespace wanrt
