//! Tensor storage as bytes: the per-op dispatch reads and writes every tensor as a byte slice
//! (f32 and the other dtypes are reinterpreted with `bytemuck`), so the same code runs on
//! owned buffers and on slices of a planned arena.

use lowmem_ir::{DType, TensorData};

/// An owned buffer outside any arena. Bool tensors are kept as `u8` (0 or 1) while they are
/// written, since `&mut [bool]` cannot be viewed as bytes safely.
#[derive(Debug)]
pub(crate) enum Store {
    Data(TensorData),
    Bool(Vec<u8>),
}

impl Store {
    /// `len` zero elements of `dtype`.
    pub fn alloc(dtype: DType, len: usize) -> Store {
        if dtype == DType::Bool {
            Store::Bool(vec![0; len])
        } else {
            Store::Data(TensorData::zeros(dtype, len))
        }
    }

    pub fn dtype(&self) -> DType {
        match self {
            Store::Data(d) => d.dtype(),
            Store::Bool(_) => DType::Bool,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Store::Data(d) => d.len(),
            Store::Bool(v) => v.len(),
        }
    }

    pub fn bytes(&self) -> &[u8] {
        match self {
            Store::Data(d) => data_bytes(d),
            Store::Bool(v) => v,
        }
    }

    /// The bytes to write; `None` for a caller's `TensorData::Bool`.
    pub fn bytes_mut(&mut self) -> Option<&mut [u8]> {
        match self {
            Store::Data(d) => data_bytes_mut(d),
            Store::Bool(v) => Some(v),
        }
    }

    pub fn writable(&self) -> bool {
        !matches!(self, Store::Data(TensorData::Bool(_)))
    }

    pub fn into_data(self) -> TensorData {
        match self {
            Store::Data(d) => d,
            Store::Bool(v) => TensorData::Bool(v.into_iter().map(|b| b != 0).collect()),
        }
    }
}

/// The native-endian bytes of `d` (bools as 0 or 1).
pub fn data_bytes(d: &TensorData) -> &[u8] {
    use bytemuck::cast_slice as c;
    match d {
        TensorData::F32(v) => c(v),
        TensorData::F16(v) => c(v),
        TensorData::BF16(v) => c(v),
        TensorData::F64(v) => c(v),
        TensorData::I64(v) => c(v),
        TensorData::I32(v) => c(v),
        TensorData::I8(v) => c(v),
        TensorData::U8(v) => v,
        TensorData::Bool(v) => c(v),
    }
}

/// The bytes of `d` to write; `None` for bool (not every byte is a valid bool).
pub(crate) fn data_bytes_mut(d: &mut TensorData) -> Option<&mut [u8]> {
    use bytemuck::cast_slice_mut as c;
    Some(match d {
        TensorData::F32(v) => c(v),
        TensorData::F16(v) => c(v),
        TensorData::BF16(v) => c(v),
        TensorData::F64(v) => c(v),
        TensorData::I64(v) => c(v),
        TensorData::I32(v) => c(v),
        TensorData::I8(v) => c(v),
        TensorData::U8(v) => v,
        TensorData::Bool(_) => return None,
    })
}

/// Copies native-endian `bytes` (a whole number of `dtype` elements, any alignment) into
/// owned data.
pub fn data_from_bytes(dtype: DType, bytes: &[u8]) -> TensorData {
    fn p<T: bytemuck::Pod>(bytes: &[u8]) -> Vec<T> {
        let mut v = vec![T::zeroed(); bytes.len() / size_of::<T>()];
        bytemuck::cast_slice_mut::<T, u8>(&mut v).copy_from_slice(bytes);
        v
    }
    match dtype {
        DType::F32 => TensorData::F32(p(bytes)),
        DType::F16 => TensorData::F16(p(bytes)),
        DType::BF16 => TensorData::BF16(p(bytes)),
        DType::F64 => TensorData::F64(p(bytes)),
        DType::I64 => TensorData::I64(p(bytes)),
        DType::I32 => TensorData::I32(p(bytes)),
        DType::I8 => TensorData::I8(p(bytes)),
        DType::U8 => TensorData::U8(bytes.to_vec()),
        DType::Bool => TensorData::Bool(bytes.iter().map(|&b| b != 0).collect()),
    }
}
