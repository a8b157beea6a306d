use half::{bf16, f16};
use serde::{Deserialize, Serialize};

/// Element types. Compute is f32 today; the others exist for storage, labels and masks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    F32,
    F16,
    BF16,
    F64,
    I64,
    I32,
    I8,
    U8,
    Bool,
}

impl DType {
    pub const fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::F64 => "f64",
            DType::I64 => "i64",
            DType::I32 => "i32",
            DType::I8 => "i8",
            DType::U8 => "u8",
            DType::Bool => "bool",
        }
    }

    pub const fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::BF16 | DType::F64)
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Owned tensor contents, one typed vector per dtype.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    F64(Vec<f64>),
    I64(Vec<i64>),
    I32(Vec<i32>),
    I8(Vec<i8>),
    U8(Vec<u8>),
    Bool(Vec<bool>),
}

impl TensorData {
    pub fn dtype(&self) -> DType {
        match self {
            TensorData::F32(_) => DType::F32,
            TensorData::F16(_) => DType::F16,
            TensorData::BF16(_) => DType::BF16,
            TensorData::F64(_) => DType::F64,
            TensorData::I64(_) => DType::I64,
            TensorData::I32(_) => DType::I32,
            TensorData::I8(_) => DType::I8,
            TensorData::U8(_) => DType::U8,
            TensorData::Bool(_) => DType::Bool,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            TensorData::F32(v) => v.len(),
            TensorData::F16(v) => v.len(),
            TensorData::BF16(v) => v.len(),
            TensorData::F64(v) => v.len(),
            TensorData::I64(v) => v.len(),
            TensorData::I32(v) => v.len(),
            TensorData::I8(v) => v.len(),
            TensorData::U8(v) => v.len(),
            TensorData::Bool(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `len` zero elements of `dtype`.
    pub fn zeros(dtype: DType, len: usize) -> TensorData {
        match dtype {
            DType::F32 => TensorData::F32(vec![0.0; len]),
            DType::F16 => TensorData::F16(vec![f16::ZERO; len]),
            DType::BF16 => TensorData::BF16(vec![bf16::ZERO; len]),
            DType::F64 => TensorData::F64(vec![0.0; len]),
            DType::I64 => TensorData::I64(vec![0; len]),
            DType::I32 => TensorData::I32(vec![0; len]),
            DType::I8 => TensorData::I8(vec![0; len]),
            DType::U8 => TensorData::U8(vec![0; len]),
            DType::Bool => TensorData::Bool(vec![false; len]),
        }
    }

    /// `len` copies of `value` converted to `dtype` (as ONNX ConstantOfShape does).
    pub fn filled(dtype: DType, len: usize, value: f64) -> TensorData {
        match dtype {
            DType::F32 => TensorData::F32(vec![value as f32; len]),
            DType::F16 => TensorData::F16(vec![f16::from_f64(value); len]),
            DType::BF16 => TensorData::BF16(vec![bf16::from_f64(value); len]),
            DType::F64 => TensorData::F64(vec![value; len]),
            DType::I64 => TensorData::I64(vec![value as i64; len]),
            DType::I32 => TensorData::I32(vec![value as i32; len]),
            DType::I8 => TensorData::I8(vec![value as i8; len]),
            DType::U8 => TensorData::U8(vec![value as u8; len]),
            DType::Bool => TensorData::Bool(vec![value != 0.0; len]),
        }
    }

    /// Little-endian bytes, the layout of ONNX `raw_data`.
    pub fn to_le_bytes(&self) -> Vec<u8> {
        fn go<T: Copy, const N: usize>(v: &[T], f: impl Fn(T) -> [u8; N]) -> Vec<u8> {
            v.iter().flat_map(|x| f(*x)).collect()
        }
        match self {
            TensorData::F32(v) => go(v, f32::to_le_bytes),
            TensorData::F16(v) => go(v, f16::to_le_bytes),
            TensorData::BF16(v) => go(v, bf16::to_le_bytes),
            TensorData::F64(v) => go(v, f64::to_le_bytes),
            TensorData::I64(v) => go(v, i64::to_le_bytes),
            TensorData::I32(v) => go(v, i32::to_le_bytes),
            TensorData::I8(v) => go(v, i8::to_le_bytes),
            TensorData::U8(v) => v.clone(),
            TensorData::Bool(v) => v.iter().map(|&b| b as u8).collect(),
        }
    }

    /// Parses little-endian bytes; `None` if the length is not a multiple of the element size.
    pub fn from_le_bytes(dtype: DType, bytes: &[u8]) -> Option<TensorData> {
        if !bytes.len().is_multiple_of(dtype.size()) {
            return None;
        }
        fn go<T, const N: usize>(b: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
            b.chunks_exact(N)
                .map(|c| f(c.try_into().expect("chunk of N bytes")))
                .collect()
        }
        Some(match dtype {
            DType::F32 => TensorData::F32(go(bytes, f32::from_le_bytes)),
            DType::F16 => TensorData::F16(go(bytes, f16::from_le_bytes)),
            DType::BF16 => TensorData::BF16(go(bytes, bf16::from_le_bytes)),
            DType::F64 => TensorData::F64(go(bytes, f64::from_le_bytes)),
            DType::I64 => TensorData::I64(go(bytes, i64::from_le_bytes)),
            DType::I32 => TensorData::I32(go(bytes, i32::from_le_bytes)),
            DType::I8 => TensorData::I8(go(bytes, i8::from_le_bytes)),
            DType::U8 => TensorData::U8(bytes.to_vec()),
            DType::Bool => TensorData::Bool(bytes.iter().map(|&b| b != 0).collect()),
        })
    }

    /// Equality of the bit patterns (NaN equals the same NaN), as round trips need.
    pub fn bit_eq(&self, other: &TensorData) -> bool {
        self.dtype() == other.dtype() && self.to_le_bytes() == other.to_le_bytes()
    }

    /// The values as i64, for shape arithmetic on integer tensors.
    pub fn as_i64(&self) -> Option<Vec<i64>> {
        match self {
            TensorData::I64(v) => Some(v.clone()),
            TensorData::I32(v) => Some(v.iter().map(|&x| x as i64).collect()),
            TensorData::I8(v) => Some(v.iter().map(|&x| x as i64).collect()),
            TensorData::U8(v) => Some(v.iter().map(|&x| x as i64).collect()),
            TensorData::Bool(v) => Some(v.iter().map(|&x| x as i64).collect()),
            _ => None,
        }
    }

    /// The values as f64 (exact for every dtype but i64 beyond 2^53).
    pub fn to_f64(&self) -> Vec<f64> {
        match self {
            TensorData::F32(v) => v.iter().map(|&x| x as f64).collect(),
            TensorData::F16(v) => v.iter().map(|x| x.to_f64()).collect(),
            TensorData::BF16(v) => v.iter().map(|x| x.to_f64()).collect(),
            TensorData::F64(v) => v.clone(),
            TensorData::I64(v) => v.iter().map(|&x| x as f64).collect(),
            TensorData::I32(v) => v.iter().map(|&x| x as f64).collect(),
            TensorData::I8(v) => v.iter().map(|&x| x as f64).collect(),
            TensorData::U8(v) => v.iter().map(|&x| x as f64).collect(),
            TensorData::Bool(v) => v.iter().map(|&x| x as u8 as f64).collect(),
        }
    }

    /// The values converted to f32 (the executor's compute type).
    pub fn to_f32(&self) -> Vec<f32> {
        match self {
            TensorData::F32(v) => v.clone(),
            other => other.to_f64().into_iter().map(|x| x as f32).collect(),
        }
    }
}
