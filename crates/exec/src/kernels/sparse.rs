//! Kernels of the memory rewrites: SliceOut's unit window and its adjoint, ReLU's 1-bit
//! backward mask, and DropIT's top-k compression of saved activations.

use lowmem_ir::window_start;

/// `(outer, n, inner)` of `shape` around `axis`.
fn around(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    let outer = shape[..axis].iter().product();
    let inner = shape[axis + 1..].iter().product();
    (outer, shape[axis], inner)
}

/// [`lowmem_ir::Op::SliceWindow`]: `k` units of `x` (of `shape`) along `axis`, from the
/// window's start, wrapping.
pub fn slice_window(x: &[f32], shape: &[usize], axis: usize, seed: u64, step: u64, y: &mut [f32]) {
    let (outer, n, inner) = around(shape, axis);
    let k = y.len() / (outer * inner).max(1);
    let s = window_start(seed, step, n);
    for o in 0..outer {
        for j in 0..k {
            let src = (o * n + (s + j) % n) * inner;
            let dst = (o * k + j) * inner;
            y[dst..dst + inner].copy_from_slice(&x[src..src + inner]);
        }
    }
}

/// [`lowmem_ir::Op::SliceWindowGrad`]: `dy` (of `shape`, `k` units along `axis`) scattered
/// into `n` units; zeros outside the window.
pub fn slice_window_grad(
    dy: &[f32],
    shape: &[usize],
    axis: usize,
    n: usize,
    seed: u64,
    step: u64,
    dx: &mut [f32],
) {
    let (outer, k, inner) = around(shape, axis);
    let s = window_start(seed, step, n);
    dx.fill(0.0);
    for o in 0..outer {
        for j in 0..k {
            let src = (o * k + j) * inner;
            let dst = (o * n + (s + j) % n) * inner;
            dx[dst..dst + inner].copy_from_slice(&dy[src..src + inner]);
        }
    }
}

/// [`lowmem_ir::Op::ReluMask`]: bit `i` of `mask` is `y[i] > 0`.
pub fn relu_mask(y: &[f32], mask: &mut [u8]) {
    for (b, chunk) in mask.iter_mut().zip(y.chunks(8)) {
        *b = chunk
            .iter()
            .enumerate()
            .fold(0u8, |acc, (j, &v)| acc | (((v > 0.0) as u8) << j));
    }
}

/// [`lowmem_ir::Op::ReluMaskGrad`] in place over `dy`.
pub fn relu_mask_grad_inplace(dy: &mut [f32], mask: &[u8]) {
    for (i, d) in dy.iter_mut().enumerate() {
        if mask[i / 8] >> (i % 8) & 1 == 0 {
            *d = 0.0;
        }
    }
}

/// The magnitude's bit pattern: for non-negative floats the integer order is the numeric
/// order (NaNs sort above infinity).
fn key(v: f32) -> u32 {
    v.to_bits() & 0x7FFF_FFFF
}

/// [`lowmem_ir::Op::TopK`]: the `values.len()` elements of `x` of largest magnitude (ties to
/// the lower index), in index order, with their flat indices. Linear time and no scratch:
/// a radix select over the 32-bit magnitude keys (four passes of 8 bits, as the GPU kernels)
/// finds the k-th largest key, then one pass compacts.
pub fn topk(x: &[f32], values: &mut [f32], indices: &mut [i32]) {
    let k = values.len();
    // Select the k-th largest key digit by digit, most significant first.
    let (mut prefix, mut mask, mut left) = (0u32, 0u32, k);
    for shift in [24u32, 16, 8, 0] {
        let mut hist = [0usize; 256];
        for &v in x {
            let kv = key(v);
            if kv & mask == prefix {
                hist[(kv >> shift & 0xFF) as usize] += 1;
            }
        }
        let mut digit = 255;
        loop {
            if hist[digit] >= left || digit == 0 {
                break;
            }
            left -= hist[digit];
            digit -= 1;
        }
        prefix |= (digit as u32) << shift;
        mask |= 0xFF << shift;
    }
    // `prefix` is the threshold key; `left` of its ties are taken, lowest index first.
    let (t, mut ties) = (prefix, left);
    let mut o = 0;
    for (i, &v) in x.iter().enumerate() {
        let kv = key(v);
        if kv > t || (kv == t && ties > 0) {
            if kv == t {
                ties -= 1;
            }
            values[o] = v;
            indices[o] = i as i32;
            o += 1;
        }
    }
    debug_assert_eq!(o, k);
}

/// [`lowmem_ir::Op::TopKScatter`]: `values` at `indices` in a zeroed `y`. An index outside
/// `y` is an error naming it.
pub fn topk_scatter(values: &[f32], indices: &[i32], y: &mut [f32]) -> Result<(), String> {
    y.fill(0.0);
    for (&v, &i) in values.iter().zip(indices) {
        match usize::try_from(i).ok().and_then(|i| y.get_mut(i)) {
            Some(d) => *d = v,
            None => {
                return Err(format!(
                    "index {i} is outside the {} elements of the output",
                    y.len()
                ));
            }
        }
    }
    Ok(())
}
