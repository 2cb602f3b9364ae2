// wkv.cu -- the RWKV-4 WKV operator, forward and backward (docs/DESIGN.md §3).
//
// One thread per (batch b, channel c) walks the L positions.  Arrays are (B, L, C) contiguous,
// so position n of (b, c) sits at (b L + n) C + c: at every step consecutive threads (consecutive
// c) touch consecutive addresses, and each warp's loads and stores are coalesced.  L is a run-time
// argument; nothing is kept per position inside a thread, so there is no maximum length.
//
// The recurrences and their derivation are written once, next to the NumPy reference
// (minisdit/rwkv/wkv_operator.py: wkv_forward_numpy, wkv_backward_numpy); this file follows them line by line.
// Variables: w = e^{time_decay} > 0, u = time_first, both (C,).
//
// Every exponential is e^{x - (running maximum of x)} <= 1, so nothing overflows for any k.
//
// Two variants of each pass: the operator alone (wkv_forward, wkv_backward), and gated by the
// receptance r, out = sigma(r) * wkv as TimeMix uses it (wkv_gated_forward, wkv_gated_backward),
// the gate and its gradient computed in the same loop (one template body, GATED a constant).

#define MIN_EXPONENT ((scalar_t)(-1e38))

// float and double overloads, so that the float variant never promotes to double
__device__ __forceinline__ float exponential(float x) { return expf(x); }
__device__ __forceinline__ double exponential(double x) { return exp(x); }
__device__ __forceinline__ float logarithm(float x) { return logf(x); }
__device__ __forceinline__ double logarithm(double x) { return log(x); }
__device__ __forceinline__ float maximum(float a, float b) { return fmaxf(a, b); }
__device__ __forceinline__ double maximum(double a, double b) { return fmax(a, b); }

// sigma(r) = 1 / (1 + e^{-r}), split by sign so that the exponential never overflows (as the
// NumPy reference, minisdit/autograd/ops.py _sigmoid)
__device__ __forceinline__ float sigmoid(float r) {
    const float e = expf(-fabsf(r));
    return (r >= 0.0f ? 1.0f : e) / (1.0f + e);
}
__device__ __forceinline__ double sigmoid(double r) {
    const double e = exp(-fabs(r));
    return (r >= 0.0 ? 1.0 : e) / (1.0 + e);
}

// The forward recurrence of one (b, c).  wkv (B, L, C): the operator's value; log_denominator
// (B, L, C): ln D_n, kept for the backward pass.  GATED: also out = sigma(r) * wkv (the TimeMix
// gate, docs/DESIGN.md §3), written in the same pass, so the gate costs no launch of its own.
template <bool GATED>
__device__ __forceinline__ void wkv_forward_one(const scalar_t* __restrict__ w, const scalar_t* __restrict__ u,
                                                const scalar_t* __restrict__ k, const scalar_t* __restrict__ v,
                                                const scalar_t* __restrict__ r, scalar_t* __restrict__ out,
                                                scalar_t* __restrict__ wkv, scalar_t* __restrict__ log_denominator,
                                                const long long index, const int length, const int channels) {
    const long long b = index / channels;
    const int c = (int)(index % channels);
    const scalar_t w_c = w[c], u_c = u[c];
    const long long start = b * length * channels + c;
    // a_n = p e^o, b_n = q e^o, o the largest exponent so far
    scalar_t p = 0, q = 0, o = MIN_EXPONENT;
    for (int n = 0; n < length; ++n) {
        const long long at = start + (long long)n * channels;
        const scalar_t k_n = k[at], v_n = v[at];
        // output: state plus the current token with its bonus u
        const scalar_t o_out = maximum(o, u_c + k_n);
        scalar_t state_scale = exponential(o - o_out), token_scale = exponential(u_c + k_n - o_out);
        const scalar_t denominator = state_scale * q + token_scale;  // D_n e^{-o_out} >= 1
        const scalar_t y_n = (state_scale * p + token_scale * v_n) / denominator;
        wkv[at] = y_n;
        if (GATED) out[at] = sigmoid(r[at]) * y_n;
        log_denominator[at] = o_out + logarithm(denominator);
        // state update: decay by e^{-w}, add the current token without the bonus
        const scalar_t o_next = maximum(o - w_c, k_n);
        state_scale = exponential(o - w_c - o_next);
        token_scale = exponential(k_n - o_next);
        p = state_scale * p + token_scale * v_n;
        q = state_scale * q + token_scale;
        o = o_next;
    }
}

// y (B, L, C): the operator's value; log_denominator (B, L, C): ln D_n.
extern "C" __global__ void wkv_forward(const scalar_t* __restrict__ w, const scalar_t* __restrict__ u,
                                       const scalar_t* __restrict__ k, const scalar_t* __restrict__ v,
                                       scalar_t* __restrict__ y, scalar_t* __restrict__ log_denominator,
                                       const int batch, const int length, const int channels) {
    const long long threads = (long long)batch * channels;
    for (long long index = (long long)blockIdx.x * blockDim.x + threadIdx.x; index < threads;
         index += (long long)blockDim.x * gridDim.x)
        wkv_forward_one<false>(w, u, k, v, nullptr, nullptr, y, log_denominator, index, length, channels);
}

// out = sigma(r) * wkv (B, L, C), and wkv and ln D (B, L, C) for the backward pass.
extern "C" __global__ void wkv_gated_forward(const scalar_t* __restrict__ w, const scalar_t* __restrict__ u,
                                             const scalar_t* __restrict__ k, const scalar_t* __restrict__ v,
                                             const scalar_t* __restrict__ r,
                                             scalar_t* __restrict__ out, scalar_t* __restrict__ wkv,
                                             scalar_t* __restrict__ log_denominator,
                                             const int batch, const int length, const int channels) {
    const long long threads = (long long)batch * channels;
    for (long long index = (long long)blockIdx.x * blockDim.x + threadIdx.x; index < threads;
         index += (long long)blockDim.x * gridDim.x)
        wkv_forward_one<true>(w, u, k, v, r, out, wkv, log_denominator, index, length, channels);
}

// The backward recurrence of one (b, c).  grad (B, L, C): dL/dwkv, or GATED dL/dout, from which
// the position's dL/dwkv = g sigma(r) and dL/dr = g wkv sigma(r) (1 - sigma(r)) (into grad_r).
// grad_k, grad_v (B, L, C); grad_w, grad_u (B, C): dL/dw and dL/du of each (b, c), summed over the
// batch afterwards by the caller (no atomics, so the result does not depend on thread order).
template <bool GATED>
__device__ __forceinline__ void wkv_backward_one(const scalar_t* __restrict__ w, const scalar_t* __restrict__ u,
                                                 const scalar_t* __restrict__ k, const scalar_t* __restrict__ v,
                                                 const scalar_t* __restrict__ r, const scalar_t* __restrict__ y,
                                                 const scalar_t* __restrict__ log_denominator,
                                                 const scalar_t* __restrict__ grad,
                                                 scalar_t* __restrict__ grad_k, scalar_t* __restrict__ grad_v,
                                                 scalar_t* __restrict__ grad_r, scalar_t* __restrict__ grad_w,
                                                 scalar_t* __restrict__ grad_u,
                                                 const long long index, const int length, const int channels) {
    const long long b = index / channels;
    const int c = (int)(index % channels);
    const scalar_t w_c = w[c], u_c = u[c];
    const long long start = b * length * channels + c;
    // reverse-time accumulators over the later positions n > i, scaled by e^{s}:
    // alpha = A e^s, beta = B e^s, alpha' = A' e^s, beta' = B' e^s
    scalar_t alpha = 0, beta = 0, alpha_prime = 0, beta_prime = 0, s = MIN_EXPONENT;
    scalar_t sum_w = 0, sum_u = 0;
    for (int i = length - 1; i >= 0; --i) {
        const long long at = start + (long long)i * channels;
        const scalar_t k_i = k[at], v_i = v[at], y_i = y[at], log_d_i = log_denominator[at];
        scalar_t g_i = grad[at];
        if (GATED) {
            const scalar_t gate = sigmoid(r[at]);
            grad_r[at] = g_i * y_i * gate * (1 - gate);
            g_i = g_i * gate;
        }
        const scalar_t later = exponential(k_i + s);            // e^{k_i} times the accumulators' scale
        const scalar_t e_i = exponential(u_c + k_i - log_d_i);  // the current token's weight in y_i
        const scalar_t direct = g_i * e_i * (v_i - y_i);
        grad_v[at] = g_i * e_i + later * alpha;
        grad_k[at] = direct + later * (v_i * alpha - beta);
        sum_u += direct;
        sum_w -= later * (v_i * alpha_prime - beta_prime);
        // move the accumulators from "n > i" to "n > i - 1": decay them and add position i
        const scalar_t s_next = maximum(s - w_c, -log_d_i);
        const scalar_t decay = exponential(s - w_c - s_next), fresh = exponential(-log_d_i - s_next);
        alpha_prime = decay * (alpha_prime + alpha);
        beta_prime = decay * (beta_prime + beta);
        alpha = decay * alpha + fresh * g_i;
        beta = decay * beta + fresh * g_i * y_i;
        s = s_next;
    }
    grad_w[index] = sum_w;  // index = b C + c
    grad_u[index] = sum_u;
}

extern "C" __global__ void wkv_backward(const scalar_t* __restrict__ w, const scalar_t* __restrict__ u,
                                        const scalar_t* __restrict__ k, const scalar_t* __restrict__ v,
                                        const scalar_t* __restrict__ y, const scalar_t* __restrict__ log_denominator,
                                        const scalar_t* __restrict__ grad_y,
                                        scalar_t* __restrict__ grad_k, scalar_t* __restrict__ grad_v,
                                        scalar_t* __restrict__ grad_w, scalar_t* __restrict__ grad_u,
                                        const int batch, const int length, const int channels) {
    const long long threads = (long long)batch * channels;
    for (long long index = (long long)blockIdx.x * blockDim.x + threadIdx.x; index < threads;
         index += (long long)blockDim.x * gridDim.x)
        wkv_backward_one<false>(w, u, k, v, nullptr, y, log_denominator, grad_y, grad_k, grad_v, nullptr,
                                grad_w, grad_u, index, length, channels);
}

// The gated operator's backward: wkv is the ungated value the forward kept; grad_out = dL/dout.
extern "C" __global__ void wkv_gated_backward(const scalar_t* __restrict__ w, const scalar_t* __restrict__ u,
                                              const scalar_t* __restrict__ k, const scalar_t* __restrict__ v,
                                              const scalar_t* __restrict__ r, const scalar_t* __restrict__ wkv,
                                              const scalar_t* __restrict__ log_denominator,
                                              const scalar_t* __restrict__ grad_out,
                                              scalar_t* __restrict__ grad_k, scalar_t* __restrict__ grad_v,
                                              scalar_t* __restrict__ grad_r,
                                              scalar_t* __restrict__ grad_w, scalar_t* __restrict__ grad_u,
                                              const int batch, const int length, const int channels) {
    const long long threads = (long long)batch * channels;
    for (long long index = (long long)blockIdx.x * blockDim.x + threadIdx.x; index < threads;
         index += (long long)blockDim.x * gridDim.x)
        wkv_backward_one<true>(w, u, k, v, r, wkv, log_denominator, grad_out, grad_k, grad_v, grad_r,
                               grad_w, grad_u, index, length, channels);
}

// On the CPU the fast launch runs the same recurrences with the loop over threads innermost, so
// that it vectorises (wkv_cpu.h); NVRTC never defines MINISDIT_CPU, so the GPU compiles only the above.
#ifdef MINISDIT_CPU
#include "wkv_cpu.h"
#endif
