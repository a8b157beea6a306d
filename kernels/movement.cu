// Data movement: one strided copy per element width. The launch code describes Expand,
// Transpose, Slice and each part of a Concat as a view `d` over the elements it moves:
// `sa` are the source's strides and `sb` the destination's, per dimension of `d`.

extern "C" __global__ void lm_copy_1(const unsigned char* src, unsigned char* dst, Dims d) {
    LM_FOR(i, d.n) {
        i64 oa, ob;
        lm_offsets(d, i, &oa, &ob);
        dst[ob] = src[oa];
    }
}

extern "C" __global__ void lm_copy_2(const unsigned short* src, unsigned short* dst, Dims d) {
    LM_FOR(i, d.n) {
        i64 oa, ob;
        lm_offsets(d, i, &oa, &ob);
        dst[ob] = src[oa];
    }
}

extern "C" __global__ void lm_copy_4(const unsigned int* src, unsigned int* dst, Dims d) {
    LM_FOR(i, d.n) {
        i64 oa, ob;
        lm_offsets(d, i, &oa, &ob);
        dst[ob] = src[oa];
    }
}

extern "C" __global__ void lm_copy_8(const u64* src, u64* dst, Dims d) {
    LM_FOR(i, d.n) {
        i64 oa, ob;
        lm_offsets(d, i, &oa, &ob);
        dst[ob] = src[oa];
    }
}
