// token_shift.cu -- RWKV's token shift with its K mixes (TimeMix: k, v, r; ChannelMix: k, r)
// (docs/DESIGN.md §3, §7).
//
//   x^k_n = mu_k z_n + (1 - mu_k) z_{n-1},  z_{-1} = 0,    per channel c, for k < K (K <= 3)
//
// z is C-contiguous (N, L, D); the K mixes are written into one (K, N, L, D) buffer, mix k at
// offset k N L D; mu_0, mu_1, mu_2 are (D,) (a caller with K = 2 passes any array as mu_2).  No
// shared memory and no barriers, so the CPU run of this file computes what the GPU computes up to
// float rounding; the forward's operations are the reference's, in its order.
//
// The NumPy reference is minisdit/rwkv/shift_mix.py (token_shift_mix_reference and its backward),
// which also holds the derivation of the backward pass.

__device__ __forceinline__ const scalar_t* mix_of(int k, const scalar_t* mu0, const scalar_t* mu1,
                                                 const scalar_t* mu2) {
    return k == 0 ? mu0 : (k == 1 ? mu1 : mu2);
}

// One thread per element of z (coalesced): reads z_n and z_{n-1}, writes the K mixes.
extern "C" __global__ void token_shift_mix_forward(const scalar_t* __restrict__ z, const scalar_t* __restrict__ mu0,
                                                   const scalar_t* __restrict__ mu1, const scalar_t* __restrict__ mu2,
                                                   scalar_t* __restrict__ mixes, int N, int L, int D, int K) {
    const long long total = (long long)N * L * D;
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
        const int c = (int)(i % D);
        const int n = (int)((i / D) % L);
        const scalar_t current = z[i];
        const scalar_t previous = n > 0 ? z[i - D] : (scalar_t)0;
        for (int k = 0; k < K; ++k) {
            const scalar_t mu = mix_of(k, mu0, mu1, mu2)[c];
            mixes[k * total + i] = current * mu + previous * ((scalar_t)1 - mu);
        }
    }
}

// One thread per (sample b, channel c) walks the L positions (a warp reads 32 neighbouring
// channels: coalesced).  With g_k = dL/dx^k (K, N, L, D):
//   dL/dz_n = sum_k mu_k g_k[n] + (1 - mu_k) g_k[n+1]   (g_k[L] = 0),
//   partial[k, b, c] = sum_n g_k[b, n, c] (z_n - z_{n-1}),
// and dL/dmu_k = sum_b partial[k, b, c] is left to the array module's reduction (one launch).
extern "C" __global__ void token_shift_mix_backward(const scalar_t* __restrict__ z, const scalar_t* __restrict__ g,
                                                    const scalar_t* __restrict__ mu0, const scalar_t* __restrict__ mu1,
                                                    const scalar_t* __restrict__ mu2, scalar_t* __restrict__ grad_z,
                                                    scalar_t* __restrict__ partial, int N, int L, int D, int K) {
    const long long total = (long long)N * L * D;
    const long long columns = (long long)N * D;
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long column = (long long)blockIdx.x * blockDim.x + threadIdx.x; column < columns; column += stride) {
        const int b = (int)(column / D);
        const int c = (int)(column % D);
        scalar_t accumulated[3] = {(scalar_t)0, (scalar_t)0, (scalar_t)0};
        scalar_t previous = (scalar_t)0;
        for (int n = 0; n < L; ++n) {
            const long long i = ((long long)b * L + n) * D + c;
            const scalar_t current = z[i];
            scalar_t grad = (scalar_t)0;
            for (int k = 0; k < K; ++k) {
                const scalar_t mu = mix_of(k, mu0, mu1, mu2)[c];
                const scalar_t g_here = g[k * total + i];
                grad += mu * g_here;
                if (n + 1 < L) grad += ((scalar_t)1 - mu) * g[k * total + i + D];
                accumulated[k] += g_here * (current - previous);
            }
            grad_z[i] = grad;
            previous = current;
        }
        for (int k = 0; k < K; ++k) partial[((long long)k * N + b) * D + c] = accumulated[k];
    }
}
