// Batch normalization over x [N, C, sp] (crates/exec/src/kernels/{norm,norm_grad}.rs):
// inference, training (batch statistics, running statistics updated in place) and the
// backward pass. Per-channel statistics: one block per channel (blockIdx.x), each thread
// summing in f64 like the CPU, then a block reduction; no atomics.

// Steps the (image b, position j) pair of a flat index over [batch, sp] by `step` (the
// block size): no division per element where sp >= step.
__device__ __forceinline__ void lm_bn_advance(i64* b, i64* j, i64 sp, int step) {
    *j += step;
    if (*j >= sp) {
        if (sp >= step) {
            *j -= sp;
            *b += 1;
        } else {  // sp < step <= 1024 and j < sp + step: ints suffice.
            int q = (int)*j / (int)sp;
            *b += q;
            *j -= (i64)q * sp;
        }
    }
}

// This thread's first (image, position) pair; past the end when there is nothing to sum.
__device__ __forceinline__ void lm_bn_start(i64* b, i64* j, i64 sp, int batch) {
    if (sp > 0) {
        *b = threadIdx.x / sp;
        *j = threadIdx.x - *b * sp;
    } else {
        *b = batch;
        *j = 0;
    }
}

// y = (x - mean) * a + bias per channel, with a = scale / sqrt(v + eps) (`v` the variance,
// inference) or a = scale * v (`invstd` set: v the saved inverse standard deviation).
extern "C" __global__ void lm_bn_affine(const float* __restrict__ x, const float* __restrict__ scale, const float* __restrict__ bias, const float* __restrict__ mean, const float* __restrict__ v, float* __restrict__ y, i64 n, i64 sp, int c, float eps, int invstd) {
    LM_FOR(i, n) {
        int ch = (int)((i / sp) % c);
        float a = invstd ? scale[ch] * v[ch] : scale[ch] / sqrtf(v[ch] + eps);
        y[i] = (x[i] - mean[ch]) * a + bias[ch];
    }
}

// Training statistics of channel blockIdx.x over the batch and spatial dims (two passes,
// population variance): saved mean and 1/sqrt(var + eps), and the running statistics
// (already holding their inputs) moved to r * momentum + batch * (1 - momentum).
extern "C" __global__ void lm_bn_train_stats(const float* __restrict__ x, float* __restrict__ saved_mean, float* __restrict__ saved_invstd, float* __restrict__ running_mean, float* __restrict__ running_var, int batch, i64 sp, int c, float eps, float momentum) {
    __shared__ double scratch[32];
    const int ch = blockIdx.x;
    const i64 cnt = (i64)batch * sp;
    i64 b, j;
    double s = 0.0;
    for (lm_bn_start(&b, &j, sp, batch); b < batch; lm_bn_advance(&b, &j, sp, blockDim.x))
        s += (double)x[(b * c + ch) * sp + j];
    const double mean = lm_block_dsum(s, scratch) / (double)cnt;
    double q = 0.0;
    for (lm_bn_start(&b, &j, sp, batch); b < batch; lm_bn_advance(&b, &j, sp, blockDim.x)) {
        double d = (double)x[(b * c + ch) * sp + j] - mean;
        q += d * d;
    }
    const double var = lm_block_dsum(q, scratch) / (double)cnt;
    if (threadIdx.x == 0) {
        saved_mean[ch] = (float)mean;
        saved_invstd[ch] = (float)(1.0 / sqrt(var + (double)eps));
        running_mean[ch] = running_mean[ch] * momentum + (float)mean * (1.0f - momentum);
        running_var[ch] = running_var[ch] * momentum + (float)var * (1.0f - momentum);
    }
}

// The inverse standard deviation BatchNormGrad uses: saved (training) or from the running
// variance.
__device__ __forceinline__ double lm_bn_invstd(const float* v, int ch, float eps, int training) {
    return training ? (double)v[ch] : 1.0 / sqrt((double)v[ch] + (double)eps);
}

// BatchNormGrad's parameter gradients of channel blockIdx.x: dbias = sum(dy),
// dscale = sum(dy * xhat).
extern "C" __global__ void lm_bn_grad_sums(const float* __restrict__ dy, const float* __restrict__ x, const float* __restrict__ mean, const float* __restrict__ v, float* __restrict__ dscale, float* __restrict__ dbias, int batch, i64 sp, int c, float eps, int training) {
    __shared__ double scratch[32];
    const int ch = blockIdx.x;
    const double m = (double)mean[ch], inv = lm_bn_invstd(v, ch, eps, training);
    double sdy = 0.0, sdyx = 0.0;
    i64 b, j;
    for (lm_bn_start(&b, &j, sp, batch); b < batch; lm_bn_advance(&b, &j, sp, blockDim.x)) {
        i64 e = (b * c + ch) * sp + j;
        double d = (double)dy[e];
        sdy += d;
        sdyx += d * ((double)x[e] - m) * inv;
    }
    sdy = lm_block_dsum(sdy, scratch);
    sdyx = lm_block_dsum(sdyx, scratch);
    if (threadIdx.x == 0) {
        dscale[ch] = (float)sdyx;
        dbias[ch] = (float)sdy;
    }
}

// BatchNormGrad's dx. Training: scale * invstd / M * (M dy - dbias - xhat dscale) with
// M = batch * sp; otherwise dy * scale * invstd (the statistics are constants).
extern "C" __global__ void lm_bn_grad_dx(const float* __restrict__ dy, const float* __restrict__ x, const float* __restrict__ scale, const float* __restrict__ mean, const float* __restrict__ v, const float* __restrict__ dscale, const float* __restrict__ dbias, float* __restrict__ dx, i64 n, i64 sp, int c, float eps, int training) {
    const float big_m = (float)(n / c);
    LM_FOR(i, n) {
        int ch = (int)((i / sp) % c);
        float inv = training ? v[ch] : 1.0f / sqrtf(v[ch] + eps);
        if (training) {
            float xhat = (x[i] - mean[ch]) * inv;
            float k = scale[ch] * inv / big_m;
            dx[i] = k * (big_m * dy[i] - dbias[ch] - xhat * dscale[ch]);
        } else {
            dx[i] = dy[i] * (scale[ch] * inv);
        }
    }
}
