//! Kernel arguments, packed as cuLaunchKernel takes them: each argument's bytes in its own
//! slot, and one pointer per argument.

use std::ffi::c_void;

use crate::device::{Device, LaunchDims};
use crate::{CudaError, DevPtr};

/// Most dimensions a strided view has (kernels' `LM_MAX_RANK`).
pub const MAX_RANK: usize = 12;

/// A strided view (`struct Dims` in kernels/common.cuh): the output's shape and, per
/// operand, the element stride along each output dimension (0 where broadcast).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    pub rank: i32,
    pub pad: i32,
    pub n: i64,
    pub shape: [i64; MAX_RANK],
    pub sa: [i64; MAX_RANK],
    pub sb: [i64; MAX_RANK],
}

/// Row-major strides of `shape`, as seen from an output of rank `rank` (numpy
/// broadcasting: leading missing dimensions and size-1 dimensions get stride 0).
fn broadcast_strides(shape: &[usize], out: &[usize]) -> Vec<i64> {
    let r = out.len();
    let mut st = vec![0i64; r];
    let mut acc = 1i64;
    for (i, &d) in shape.iter().enumerate().rev() {
        let o = r - (shape.len() - i);
        st[o] = if d == 1 && out[o] != 1 { 0 } else { acc };
        acc *= d as i64;
    }
    st
}

impl Dims {
    /// The view of output `out` reading `a` and `b` (shapes broadcast to `out`), with
    /// adjacent dimensions merged where both operands stay contiguous across them.
    pub fn broadcast(out: &[usize], a: &[usize], b: &[usize]) -> Result<Dims, String> {
        if a.len() > out.len() || b.len() > out.len() {
            return Err(format!("{a:?} or {b:?} does not broadcast to {out:?}"));
        }
        let sa = broadcast_strides(a, out);
        let sb = broadcast_strides(b, out);
        Dims::from_strides(out, &sa, &sb)
    }

    /// The view of `out` with explicit strides per operand.
    pub fn from_strides(out: &[usize], sa: &[i64], sb: &[i64]) -> Result<Dims, String> {
        // Merge dimension i into i+1 where stride[i] == stride[i+1] * shape[i+1] for both.
        let mut dims: Vec<(i64, i64, i64)> = Vec::with_capacity(out.len());
        for i in 0..out.len() {
            let (n, x, y) = (out[i] as i64, sa[i], sb[i]);
            if n == 1 {
                continue;
            }
            if let Some(last) = dims.last_mut()
                && last.1 == x * n
                && last.2 == y * n
            {
                last.0 *= n;
                last.1 = x;
                last.2 = y;
                continue;
            }
            dims.push((n, x, y));
        }
        if dims.len() > MAX_RANK {
            return Err(format!(
                "a view of rank {} is above the kernels' maximum of {MAX_RANK}",
                dims.len()
            ));
        }
        let mut d = Dims {
            rank: dims.len() as i32,
            pad: 0,
            n: out.iter().map(|&v| v as i64).product(),
            shape: [1; MAX_RANK],
            sa: [0; MAX_RANK],
            sb: [0; MAX_RANK],
        };
        for (i, (n, x, y)) in dims.into_iter().enumerate() {
            d.shape[i] = n;
            d.sa[i] = x;
            d.sb[i] = y;
        }
        Ok(d)
    }
}

/// One kernel argument.
pub enum Arg {
    Ptr(DevPtr),
    I32(i32),
    I64(i64),
    U64(u64),
    F32(f32),
    Dims(Box<Dims>),
}

impl From<DevPtr> for Arg {
    fn from(p: DevPtr) -> Arg {
        Arg::Ptr(p)
    }
}

/// Launches `name` over `dims` with `args`, in order.
pub fn call(dev: &dyn Device, name: &str, dims: LaunchDims, args: &[Arg]) -> Result<(), CudaError> {
    let mut slots: Vec<[u64; 1]> = Vec::with_capacity(args.len());
    for a in args {
        let v = match *a {
            Arg::Ptr(p) => p,
            Arg::I32(v) => u64::from(v as u32),
            Arg::I64(v) => v as u64,
            Arg::U64(v) => v,
            Arg::F32(v) => u64::from(v.to_bits()),
            Arg::Dims(_) => 0,
        };
        slots.push([v]);
    }
    let mut params: Vec<*mut c_void> = Vec::with_capacity(args.len());
    for (a, s) in args.iter().zip(slots.iter_mut()) {
        params.push(match a {
            Arg::Dims(d) => (&**d as *const Dims).cast_mut().cast(),
            _ => s.as_mut_ptr().cast(),
        });
    }
    // SAFETY: every slot and Dims outlives the call; the launch code in `ops` passes the
    // arguments each kernel declares, in order, with addresses inside the planned blocks.
    unsafe { dev.launch(name, dims, &mut params) }
}

/// Threads per block of the elementwise kernels.
pub const BLOCK: u32 = 256;

/// A 1-D grid-stride launch over `n` elements: enough blocks to cover them, at most
/// 65,536 (each thread loops).
pub fn grid_1d(n: usize) -> LaunchDims {
    let blocks = n.div_ceil(BLOCK as usize).clamp(1, 1 << 16) as u32;
    LaunchDims::new([blocks, 1, 1], [BLOCK, 1, 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_merges_contiguous_dims() {
        let d = Dims::broadcast(&[2, 3, 4], &[2, 3, 4], &[4]).unwrap();
        assert_eq!(d.rank, 2);
        assert_eq!(&d.shape[..2], &[6, 4]);
        assert_eq!(&d.sa[..2], &[4, 1]);
        assert_eq!(&d.sb[..2], &[0, 1]);
        let d = Dims::broadcast(&[2, 3, 4], &[2, 3, 4], &[2, 3, 4]).unwrap();
        assert_eq!((d.rank, d.shape[0], d.n), (1, 24, 24));
        let d = Dims::broadcast(&[2, 1, 4], &[2, 1, 4], &[1, 1, 1]).unwrap();
        assert_eq!((d.rank, d.sb[0]), (1, 0));
    }
}
