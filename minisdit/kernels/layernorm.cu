// layernorm.cu -- LayerNorm over the last axis without affine weight and bias (docs/DESIGN.md §3, §7).
//
// Arrays are C-contiguous (rows, D): every axis but the last is flattened into rows.  One thread per
// row in a grid-stride loop walks its D features, so the runtime's convention holds (no shared
// memory, no barriers) and the CPU run of this file computes what the GPU computes up to float
// rounding.  This is the correct-first layout: a thread reads its row with stride 1, so a warp's
// loads are not coalesced; a warp-per-row reduction is the next step once a GPU measures it.
// All arithmetic stays in scalar_t (float or double, a -D define).
//
// The NumPy reference is the LayerNorm Function of minisdit/autograd/nn_ops.py (its weight-less
// branch), which also holds the derivation of the backward pass.

// y = x_hat = (x - mean) rstd with rstd = 1 / sqrt(biased var + eps); mean and rstd kept per row.
extern "C" __global__ void layernorm_forward(const scalar_t* __restrict__ x, scalar_t* __restrict__ y,
                                             scalar_t* __restrict__ mean, scalar_t* __restrict__ rstd,
                                             long long rows, int D, scalar_t eps) {
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long row = (long long)blockIdx.x * blockDim.x + threadIdx.x; row < rows; row += stride) {
        const scalar_t* in = x + row * D;
        scalar_t* out = y + row * D;
        scalar_t sum = (scalar_t)0;
        for (int j = 0; j < D; ++j) sum += in[j];
        const scalar_t mu = sum / (scalar_t)D;
        // two passes, as the reference: the variance of the centred values (no cancellation)
        scalar_t squares = (scalar_t)0;
        for (int j = 0; j < D; ++j) {
            const scalar_t centred = in[j] - mu;
            squares += centred * centred;
        }
        const scalar_t inverse_std = (scalar_t)1 / sqrt(squares / (scalar_t)D + eps);
        for (int j = 0; j < D; ++j) out[j] = (in[j] - mu) * inverse_std;
        mean[row] = mu;
        rstd[row] = inverse_std;
    }
}

// dL/dx = rstd (g - mean(g) - x_hat mean(g x_hat)), from g, the forward's x_hat and rstd.
extern "C" __global__ void layernorm_backward(const scalar_t* __restrict__ g, const scalar_t* __restrict__ x_hat,
                                              const scalar_t* __restrict__ rstd, scalar_t* __restrict__ grad_x,
                                              long long rows, int D) {
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long row = (long long)blockIdx.x * blockDim.x + threadIdx.x; row < rows; row += stride) {
        const scalar_t* grad = g + row * D;
        const scalar_t* normed = x_hat + row * D;
        scalar_t sum_g = (scalar_t)0, sum_gx = (scalar_t)0;
        for (int j = 0; j < D; ++j) {
            sum_g += grad[j];
            sum_gx += grad[j] * normed[j];
        }
        const scalar_t mean_g = sum_g / (scalar_t)D, mean_gx = sum_gx / (scalar_t)D;
        const scalar_t inverse_std = rstd[row];
        scalar_t* out = grad_x + row * D;
        for (int j = 0; j < D; ++j) out[j] = inverse_std * (grad[j] - mean_g - normed[j] * mean_gx);
    }
}
