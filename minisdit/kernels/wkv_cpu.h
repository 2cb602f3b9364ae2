// wkv_cpu.h -- the WKV kernels of wkv.cu with their loops interchanged for a CPU's vector unit.
//
// Included at the end of wkv.cu only when it is compiled as C++ for the CPU (cuda_cpu_shim.h
// defines MINISDIT_CPU; NVRTC never sees this file).  The runtime's launcher calls these
// cpu_serial_<kernel> functions for the fast CPU launch (one block of one thread,
// runtime.CPU_LAUNCH); a launch with an explicit block runs the GPU body of wkv.cu thread by thread.
//
// Why (as lif_cpu.h): each GPU thread walks the L positions of one (b, c); run one thread after
// another on a CPU that is a chain of dependent exponentials per (b, c), scalar.  The channels are
// independent and contiguous in (B, L, C), so here, for each b and a chunk of MINISDIT_LANES
// channels, the state (p, q, o forward; the accumulators backward) lives in small arrays and each
// position is one `#pragma omp simd` loop over the channels: contiguous vector loads and stores,
// and vector exponentials (glibc's libmvec, declared in cuda_cpu_shim.h).
//
// The statements are those of wkv_forward_one / wkv_backward_one in wkv.cu, in the same order
// (the recurrences are derived next to the NumPy reference, minisdit/rwkv/wkv_operator.py), with
// one change: the running maximum is cpu_maximum, which is fmax written as a comparison (fmax has
// no AVX2 instruction, so a call to it keeps the loop scalar).

#pragma once

#ifndef MINISDIT_LANES
#define MINISDIT_LANES 256
#endif

// fmax(a, b) exactly: the larger of the two, and the other one when one of them is NaN.
template <typename T>
static inline T cpu_maximum(T a, T b) {
    const T larger = a >= b ? a : b;  // no || : a short-circuit is a branch, which keeps the loop scalar
    return b != b ? a : larger;
}

template <bool GATED>
static void cpu_wkv_forward(const scalar_t* __restrict__ w, const scalar_t* __restrict__ u,
                            const scalar_t* __restrict__ k, const scalar_t* __restrict__ v,
                            const scalar_t* __restrict__ r, scalar_t* __restrict__ out,
                            scalar_t* __restrict__ wkv, scalar_t* __restrict__ log_denominator,
                            const int batch, const int length, const int channels) {
    for (long long b = 0; b < batch; ++b) {
        for (int c0 = 0; c0 < channels; c0 += MINISDIT_LANES) {
            const int lanes = std::min(MINISDIT_LANES, channels - c0);
            scalar_t p[MINISDIT_LANES], q[MINISDIT_LANES], o[MINISDIT_LANES];
            for (int j = 0; j < lanes; ++j) { p[j] = 0; q[j] = 0; o[j] = MIN_EXPONENT; }
            for (int n = 0; n < length; ++n) {
                const long long row = (b * length + n) * channels + c0;
#pragma omp simd
                for (int j = 0; j < lanes; ++j) {
                    const long long at = row + j;
                    const scalar_t w_c = w[c0 + j], u_c = u[c0 + j];
                    const scalar_t k_n = k[at], v_n = v[at];
                    const scalar_t o_out = cpu_maximum(o[j], u_c + k_n);
                    scalar_t state_scale = exponential(o[j] - o_out), token_scale = exponential(u_c + k_n - o_out);
                    const scalar_t denominator = state_scale * q[j] + token_scale;
                    const scalar_t y_n = (state_scale * p[j] + token_scale * v_n) / denominator;
                    wkv[at] = y_n;
                    if (GATED) out[at] = sigmoid(r[at]) * y_n;
                    log_denominator[at] = o_out + logarithm(denominator);
                    const scalar_t o_next = cpu_maximum(o[j] - w_c, k_n);
                    state_scale = exponential(o[j] - w_c - o_next);
                    token_scale = exponential(k_n - o_next);
                    p[j] = state_scale * p[j] + token_scale * v_n;
                    q[j] = state_scale * q[j] + token_scale;
                    o[j] = o_next;
                }
            }
        }
    }
}

template <bool GATED>
static void cpu_wkv_backward(const scalar_t* __restrict__ w, const scalar_t* __restrict__ u,
                             const scalar_t* __restrict__ k, const scalar_t* __restrict__ v,
                             const scalar_t* __restrict__ r, const scalar_t* __restrict__ y,
                             const scalar_t* __restrict__ log_denominator, const scalar_t* __restrict__ grad,
                             scalar_t* __restrict__ grad_k, scalar_t* __restrict__ grad_v,
                             scalar_t* __restrict__ grad_r, scalar_t* __restrict__ grad_w,
                             scalar_t* __restrict__ grad_u, const int batch, const int length, const int channels) {
    for (long long b = 0; b < batch; ++b) {
        for (int c0 = 0; c0 < channels; c0 += MINISDIT_LANES) {
            const int lanes = std::min(MINISDIT_LANES, channels - c0);
            scalar_t alpha[MINISDIT_LANES], beta[MINISDIT_LANES], alpha_prime[MINISDIT_LANES],
                beta_prime[MINISDIT_LANES], s[MINISDIT_LANES], sum_w[MINISDIT_LANES], sum_u[MINISDIT_LANES];
            for (int j = 0; j < lanes; ++j) {
                alpha[j] = 0; beta[j] = 0; alpha_prime[j] = 0; beta_prime[j] = 0; s[j] = MIN_EXPONENT;
                sum_w[j] = 0; sum_u[j] = 0;
            }
            for (int i = length - 1; i >= 0; --i) {
                const long long row = (b * length + i) * channels + c0;
#pragma omp simd
                for (int j = 0; j < lanes; ++j) {
                    const long long at = row + j;
                    const scalar_t w_c = w[c0 + j], u_c = u[c0 + j];
                    const scalar_t k_i = k[at], v_i = v[at], y_i = y[at], log_d_i = log_denominator[at];
                    scalar_t g_i = grad[at];
                    if (GATED) {
                        const scalar_t gate = sigmoid(r[at]);
                        grad_r[at] = g_i * y_i * gate * (1 - gate);
                        g_i = g_i * gate;
                    }
                    const scalar_t later = exponential(k_i + s[j]);
                    const scalar_t e_i = exponential(u_c + k_i - log_d_i);
                    const scalar_t direct = g_i * e_i * (v_i - y_i);
                    grad_v[at] = g_i * e_i + later * alpha[j];
                    grad_k[at] = direct + later * (v_i * alpha[j] - beta[j]);
                    sum_u[j] += direct;
                    sum_w[j] -= later * (v_i * alpha_prime[j] - beta_prime[j]);
                    const scalar_t s_next = cpu_maximum(s[j] - w_c, -log_d_i);
                    const scalar_t decay = exponential(s[j] - w_c - s_next), fresh = exponential(-log_d_i - s_next);
                    alpha_prime[j] = decay * (alpha_prime[j] + alpha[j]);
                    beta_prime[j] = decay * (beta_prime[j] + beta[j]);
                    alpha[j] = decay * alpha[j] + fresh * g_i;
                    beta[j] = decay * beta[j] + fresh * g_i * y_i;
                    s[j] = s_next;
                }
            }
            for (int j = 0; j < lanes; ++j) {
                grad_w[b * channels + c0 + j] = sum_w[j];
                grad_u[b * channels + c0 + j] = sum_u[j];
            }
        }
    }
}

static void cpu_serial_wkv_forward(const scalar_t* __restrict__ w, const scalar_t* __restrict__ u,
                                   const scalar_t* __restrict__ k, const scalar_t* __restrict__ v,
                                   scalar_t* __restrict__ y, scalar_t* __restrict__ log_denominator,
                                   const int batch, const int length, const int channels) {
    cpu_wkv_forward<false>(w, u, k, v, nullptr, nullptr, y, log_denominator, batch, length, channels);
}

static void cpu_serial_wkv_gated_forward(const scalar_t* __restrict__ w, const scalar_t* __restrict__ u,
                                         const scalar_t* __restrict__ k, const scalar_t* __restrict__ v,
                                         const scalar_t* __restrict__ r, scalar_t* __restrict__ out,
                                         scalar_t* __restrict__ wkv, scalar_t* __restrict__ log_denominator,
                                         const int batch, const int length, const int channels) {
    cpu_wkv_forward<true>(w, u, k, v, r, out, wkv, log_denominator, batch, length, channels);
}

static void cpu_serial_wkv_backward(const scalar_t* __restrict__ w, const scalar_t* __restrict__ u,
                                    const scalar_t* __restrict__ k, const scalar_t* __restrict__ v,
                                    const scalar_t* __restrict__ y, const scalar_t* __restrict__ log_denominator,
                                    const scalar_t* __restrict__ grad_y,
                                    scalar_t* __restrict__ grad_k, scalar_t* __restrict__ grad_v,
                                    scalar_t* __restrict__ grad_w, scalar_t* __restrict__ grad_u,
                                    const int batch, const int length, const int channels) {
    cpu_wkv_backward<false>(w, u, k, v, nullptr, y, log_denominator, grad_y, grad_k, grad_v, nullptr,
                            grad_w, grad_u, batch, length, channels);
}

static void cpu_serial_wkv_gated_backward(const scalar_t* __restrict__ w, const scalar_t* __restrict__ u,
                                          const scalar_t* __restrict__ k, const scalar_t* __restrict__ v,
                                          const scalar_t* __restrict__ r, const scalar_t* __restrict__ wkv,
                                          const scalar_t* __restrict__ log_denominator,
                                          const scalar_t* __restrict__ grad_out,
                                          scalar_t* __restrict__ grad_k, scalar_t* __restrict__ grad_v,
                                          scalar_t* __restrict__ grad_r,
                                          scalar_t* __restrict__ grad_w, scalar_t* __restrict__ grad_u,
                                          const int batch, const int length, const int channels) {
    cpu_wkv_backward<true>(w, u, k, v, r, wkv, log_denominator, grad_out, grad_k, grad_v, grad_r,
                           grad_w, grad_u, batch, length, channels);
}
