#![allow(dead_code)]
//! Test helpers: naive index arithmetic, comparisons and naive f64 references (the seeded
//! PRNG is `lowmem_testkit::Rng`).

use lowmem_ir::Window;

pub fn numel(s: &[usize]) -> usize {
    s.iter().product()
}

/// All multi-indices of `shape` in row-major order.
pub fn indices(shape: &[usize]) -> Vec<Vec<usize>> {
    let n = numel(shape);
    (0..n)
        .map(|mut lin| {
            let mut idx = vec![0; shape.len()];
            for i in (0..shape.len()).rev() {
                idx[i] = lin % shape[i];
                lin /= shape[i];
            }
            idx
        })
        .collect()
}

pub fn offset(idx: &[usize], shape: &[usize]) -> usize {
    idx.iter().zip(shape).fold(0, |acc, (&i, &d)| acc * d + i)
}

#[track_caller]
pub fn assert_close(got: &[f32], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs();
        assert!(
            err <= tol * (1.0 + w.abs()) || (g.is_nan() && w.is_nan()),
            "{what}: element {i}: got {g}, want {w} (err {err})"
        );
    }
}

pub fn to64(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

// ---------------------------------------------------------------- naive f64 references

/// Direct N-d convolution in f64.
pub fn naive_conv(
    x: &[f64],
    xs: &[usize],
    w: &[f64],
    ws: &[usize],
    b: Option<&[f32]>,
    win: &Window,
    group: usize,
) -> Vec<f64> {
    let (n, c, m) = (xs[0], xs[1], ws[0]);
    let (cg, mg) = (c / group, m / group);
    let r = win.kernel.len();
    let mut out_shape = vec![n, m];
    out_shape.extend(&win.output);
    let mut out = vec![0f64; numel(&out_shape)];
    for (oi, oidx) in indices(&out_shape).iter().enumerate() {
        let (bn, mo) = (oidx[0], oidx[1]);
        let g = mo / mg;
        let mut acc = b.map_or(0.0, |b| b[mo] as f64);
        for ci in 0..cg {
            for kidx in indices(&win.kernel) {
                let mut xi = vec![bn, g * cg + ci];
                let mut inside = true;
                for d in 0..r {
                    let p = (oidx[2 + d] * win.strides[d] + kidx[d] * win.dilations[d]) as i64
                        - win.pad_begin[d] as i64;
                    if p < 0 || p >= xs[2 + d] as i64 {
                        inside = false;
                    }
                    xi.push(p.max(0) as usize);
                }
                if inside {
                    let mut wi = vec![mo, ci];
                    wi.extend(&kidx);
                    acc += x[offset(&xi, xs)] * w[offset(&wi, ws)];
                }
            }
        }
        out[oi] = acc;
    }
    out
}

/// PyTorch/onnxruntime-style reference (dilation 1 for average).
pub fn naive_pool(x: &[f64], xs: &[usize], win: &Window, max: bool, include_pad: bool) -> Vec<f64> {
    let r = win.kernel.len();
    let mut os = xs[..2].to_vec();
    os.extend(&win.output);
    let mut out = Vec::new();
    for oidx in indices(&os) {
        let mut best = f64::from(f32::MIN);
        let mut sum = 0f64;
        let mut cnt = 0usize;
        for kidx in indices(&win.kernel) {
            let mut xi = oidx[..2].to_vec();
            let mut inside = true;
            for d in 0..r {
                let p = (oidx[2 + d] * win.strides[d] + kidx[d] * win.dilations[d]) as i64
                    - win.pad_begin[d] as i64;
                inside &= p >= 0 && p < xs[2 + d] as i64;
                xi.push(p.max(0) as usize);
            }
            if inside {
                let v = x[offset(&xi, xs)];
                best = best.max(v);
                sum += v;
                cnt += 1;
            }
        }
        if max {
            out.push(best);
        } else {
            let div = if include_pad {
                // hend = min(hstart + k, in + pad_end); size = hend - hstart.
                (0..r)
                    .map(|d| {
                        let start = (oidx[2 + d] * win.strides[d]) as i64 - win.pad_begin[d] as i64;
                        let end =
                            (start + win.kernel[d] as i64).min((xs[2 + d] + win.pad_end[d]) as i64);
                        (end - start) as usize
                    })
                    .product()
            } else {
                cnt
            };
            out.push(sum / div as f64);
        }
    }
    out
}
