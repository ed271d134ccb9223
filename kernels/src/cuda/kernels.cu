// Palisade CUDA kernels, compiled at run time by NVRTC (see cuda/device.rs).
//
// No headers are included, so NVRTC needs none of the toolkit's include
// files: half floats are converted with one PTX instruction, and every
// kernel works on plain float / unsigned short / unsigned char pointers.
//
// Launch contracts (the host wrappers in cuda/ops.rs follow them):
// - row kernels (rms_norm_f32, softmax_rows_f32): one block per row,
//   blockDim.x a multiple of 32, at most 1024;
// - q8_0_matvec_f32: blockDim.x == 32 * MATVEC_WARPS, one warp per row;
// - paged_attention_decode_f16: grid (n_heads, n_rows),
//   blockDim.x == 32 * ATTN_WARPS, head_dim <= ATTN_MAX_HEAD_DIM.

#define MATVEC_WARPS 4
#define ATTN_WARPS 4
#define ATTN_MAX_HEAD_DIM 256
#define ATTN_PER_LANE (ATTN_MAX_HEAD_DIM / 32)
#define KV_BLOCK_SIZE 16
#define Q8_0_BLOCK 32
#define Q8_0_BYTES 34
#define NEG_INF __int_as_float((int)0xff800000u)

__device__ __forceinline__ float h2f(unsigned short h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the block; every thread gets the result. `scratch` holds 32
// floats and may be reused as soon as this returns.
__device__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = (threadIdx.x < (blockDim.x >> 5)) ? scratch[threadIdx.x] : 0.0f;
    if (warp == 0) v = warp_sum(v);
    if (threadIdx.x == 0) scratch[0] = v;
    __syncthreads();
    v = scratch[0];
    __syncthreads();
    return v;
}

__device__ float block_max(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_max(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = (threadIdx.x < (blockDim.x >> 5)) ? scratch[threadIdx.x] : NEG_INF;
    if (warp == 0) v = warp_max(v);
    if (threadIdx.x == 0) scratch[0] = v;
    __syncthreads();
    v = scratch[0];
    __syncthreads();
    return v;
}

// out[r] = x[r] / sqrt(mean(x[r]^2) + eps) * w, one block per row.
extern "C" __global__ void rms_norm_f32(const float* x, const float* w, float* out,
                                        int cols, float eps) {
    __shared__ float scratch[32];
    const size_t base = (size_t)blockIdx.x * cols;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) {
        const float v = x[base + i];
        ss += v * v;
    }
    ss = block_sum(ss, scratch);
    const float scale = rsqrtf(ss / (float)cols + eps);
    for (int i = threadIdx.x; i < cols; i += blockDim.x) {
        out[base + i] = x[base + i] * scale * w[i];
    }
}

// gate = silu(gate) * up, element-wise (SwiGLU), in place.
extern "C" __global__ void silu_mul_f32(float* gate, const float* up, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        const float g = gate[i];
        gate[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

// Rotary embedding in place. x: [n_tok][n_heads][head_dim]; cos, sin:
// [n_tok][half] (the host computes them as ops::Rope::angles does, so the
// angles match the CPU path bit for bit). Grid (n_tok, n_heads).
// neox != 0 pairs (i, i + half); otherwise (2i, 2i + 1).
extern "C" __global__ void rope_f32(float* x, const float* cos, const float* sin,
                                    int n_heads, int head_dim, int half, int neox) {
    const int t = blockIdx.x, h = blockIdx.y;
    float* head = x + ((size_t)t * n_heads + h) * head_dim;
    const float* c = cos + (size_t)t * half;
    const float* s = sin + (size_t)t * half;
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        const int ia = neox ? i : 2 * i;
        const int ib = neox ? i + half : 2 * i + 1;
        const float a = head[ia], b = head[ib];
        head[ia] = a * c[i] - b * s[i];
        head[ib] = a * s[i] + b * c[i];
    }
}

// Softmax of each row in place, one block per row.
extern "C" __global__ void softmax_rows_f32(float* x, int cols) {
    __shared__ float scratch[32];
    float* row = x + (size_t)blockIdx.x * cols;
    float m = NEG_INF;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) m = fmaxf(m, row[i]);
    m = block_max(m, scratch);
    float sum = 0.0f;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) {
        const float e = expf(row[i] - m);
        row[i] = e;
        sum += e;
    }
    sum = block_sum(sum, scratch);
    const float inv = 1.0f / sum;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) row[i] *= inv;
}

// y = W x for W in GGUF Q8_0 (per 32 weights: little-endian f16 scale d,
// then 32 int8 q; w = q * d). One warp per row; lane j takes element j of
// each block, so a warp reads a block's 32 quants in one transaction.
// Rows are 34 * (cols / 32) bytes: always even, so the scale is 2-aligned.
extern "C" __global__ void q8_0_matvec_f32(const unsigned char* w, const float* x, float* y,
                                           int rows, int cols) {
    const int lane = threadIdx.x & 31;
    const int row = blockIdx.x * MATVEC_WARPS + (threadIdx.x >> 5);
    if (row >= rows) return;
    const int nb = cols / Q8_0_BLOCK;
    const unsigned char* wr = w + (size_t)row * nb * Q8_0_BYTES;
    float acc = 0.0f;
    for (int b = 0; b < nb; ++b) {
        const unsigned char* blk = wr + (size_t)b * Q8_0_BYTES;
        const float d = h2f(*(const unsigned short*)blk);
        const float q = (float)(signed char)blk[2 + lane];
        acc += d * q * x[b * Q8_0_BLOCK + lane];
    }
    acc = warp_sum(acc);
    if (lane == 0) y[row] = acc;
}

// Decode attention over a paged f16 KV cache.
//
// Pool layout (one layer): [block][pos_in_block][kv_head][head_dim], f16,
// KV_BLOCK_SIZE positions per block. Query row r attends to positions
// 0..row_len[r] of the sequence whose block table starts at
// tables[row_table[r]]: position p is in block table[p / 16], slot p % 16.
// Query head h reads kv head h / (n_heads / n_kv_heads).
//
// q, out: [n_rows][n_heads][head_dim] f32. Grid (n_heads, n_rows); each
// warp takes every ATTN_WARPS-th position with an online softmax (running
// max, running sum, rescaled accumulator; lane l holds dims l, l+32, ...),
// then the warps' partial results are merged through shared memory. One
// pass over K and V, no scratch in global memory, no limit on the length.
extern "C" __global__ void paged_attention_decode_f16(
    const float* q, const unsigned short* k_pool, const unsigned short* v_pool,
    const unsigned int* tables, const unsigned int* row_table, const unsigned int* row_len,
    float* out, int n_heads, int n_kv_heads, int head_dim, float scale) {
    __shared__ float s_max[ATTN_WARPS];
    __shared__ float s_sum[ATTN_WARPS];
    __shared__ float s_acc[ATTN_WARPS][ATTN_MAX_HEAD_DIM];

    const int h = blockIdx.x, r = blockIdx.y;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int kvh = h / (n_heads / n_kv_heads);
    const unsigned int* table = tables + row_table[r];
    const int len = (int)row_len[r];
    const float* qr = q + ((size_t)r * n_heads + h) * head_dim;

    float qv[ATTN_PER_LANE], acc[ATTN_PER_LANE];
#pragma unroll
    for (int i = 0; i < ATTN_PER_LANE; ++i) {
        const int d = lane + 32 * i;
        qv[i] = d < head_dim ? qr[d] * scale : 0.0f;
        acc[i] = 0.0f;
    }
    float m = NEG_INF, l = 0.0f;
    for (int p = warp; p < len; p += ATTN_WARPS) {
        const size_t slot = (size_t)table[p / KV_BLOCK_SIZE] * KV_BLOCK_SIZE + p % KV_BLOCK_SIZE;
        const size_t base = (slot * n_kv_heads + kvh) * head_dim;
        float s = 0.0f;
#pragma unroll
        for (int i = 0; i < ATTN_PER_LANE; ++i) {
            const int d = lane + 32 * i;
            if (d < head_dim) s += qv[i] * h2f(k_pool[base + d]);
        }
        s = warp_sum(s);
        const float m_new = fmaxf(m, s);
        const float correction = expf(m - m_new);
        const float pr = expf(s - m_new);
        l = l * correction + pr;
#pragma unroll
        for (int i = 0; i < ATTN_PER_LANE; ++i) {
            const int d = lane + 32 * i;
            const float v = d < head_dim ? h2f(v_pool[base + d]) : 0.0f;
            acc[i] = acc[i] * correction + pr * v;
        }
        m = m_new;
    }
    if (lane == 0) {
        s_max[warp] = m;
        s_sum[warp] = l;
    }
#pragma unroll
    for (int i = 0; i < ATTN_PER_LANE; ++i) s_acc[warp][lane + 32 * i] = acc[i];
    __syncthreads();

    float gmax = NEG_INF;
    for (int w = 0; w < ATTN_WARPS; ++w) gmax = fmaxf(gmax, s_max[w]);
    float total = 0.0f;
    for (int w = 0; w < ATTN_WARPS; ++w) {
        // A warp that saw no position has m = -inf: its weight is 0.
        if (s_max[w] != NEG_INF) total += s_sum[w] * expf(s_max[w] - gmax);
    }
    const float inv = total > 0.0f ? 1.0f / total : 0.0f;
    float* o = out + ((size_t)r * n_heads + h) * head_dim;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float v = 0.0f;
        for (int w = 0; w < ATTN_WARPS; ++w) {
            if (s_max[w] != NEG_INF) v += s_acc[w][d] * expf(s_max[w] - gmax);
        }
        o[d] = v * inv;
    }
}
