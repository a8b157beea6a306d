//! Shared helpers for the end-to-end tests: reading the reference data made by
//! `scripts/make_refs.py` (onnxruntime outputs; `lowmem_testkit::data_dir` locates it) and
//! comparing against it.
#![allow(dead_code)]

use std::path::Path;

use lowmem_ir::{DType, TensorData};

pub struct Tensor {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub data: TensorData,
}

pub fn read_pb(path: &Path) -> Tensor {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let (name, dtype, shape, data) =
        lowmem_onnx::read_tensor(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Tensor {
        name,
        dtype,
        shape,
        data,
    }
}

/// numpy.allclose(actual, expected, rtol, atol) with a message locating the worst element.
pub fn check_close(
    what: &str,
    actual: &TensorData,
    expected: &Tensor,
    rtol: f64,
    atol: f64,
) -> Result<(), String> {
    if actual.dtype() != expected.dtype {
        return Err(format!(
            "{what}: dtype {} != expected {}",
            actual.dtype(),
            expected.dtype
        ));
    }
    let a = actual.to_f64();
    let e = expected.data.to_f64();
    if a.len() != e.len() {
        return Err(format!(
            "{what}: {} elements != expected {}",
            a.len(),
            e.len()
        ));
    }
    let mut worst: Option<(usize, f64)> = None;
    for (i, (&x, &y)) in a.iter().zip(&e).enumerate() {
        let excess = (x - y).abs() - (atol + rtol * y.abs());
        if x.is_nan() != y.is_nan() || excess > 0.0 {
            let excess = if excess.is_nan() {
                f64::INFINITY
            } else {
                excess
            };
            if worst.is_none_or(|(_, w)| excess > w) {
                worst = Some((i, excess));
            }
        }
    }
    match worst {
        None => Ok(()),
        Some((i, _)) => Err(format!(
            "{what}: not close (rtol {rtol}, atol {atol}); worst at flat index {i}: got {}, expected {}",
            a[i], e[i]
        )),
    }
}
