//! TensorProto <-> lowmem tensors.
//!
//! Every size is computed with checked arithmetic and compared with the bytes actually present
//! before anything is allocated, so a malicious `dims` cannot make the importer allocate more
//! than the file already holds.

use std::sync::Arc;

use half::{bf16, f16};
use lowmem_ir::{DType, TensorData};
use prost::Message;

use crate::ImportError;
use crate::pb::{self, tensor_proto::DataLocation, tensor_proto::DataType};

/// A constant tensor known at import time: an initializer, a `Constant` or a folded result.
/// The data is shared so that view-like folds (Reshape, Unsqueeze, ...) do not copy weights.
#[derive(Clone, Debug)]
pub(crate) struct Const {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub data: Arc<TensorData>,
}

impl Const {
    pub fn new(shape: Vec<usize>, data: TensorData) -> Const {
        Const {
            dtype: data.dtype(),
            shape,
            data: Arc::new(data),
        }
    }

    /// The values as i64 (integer and bool tensors only).
    pub fn ints(&self) -> Option<Vec<i64>> {
        self.data.as_i64()
    }
}

/// The lowmem dtype of an ONNX `TensorProto.DataType` code, if lowmem has one.
pub(crate) fn dtype_from_onnx(code: i32) -> Option<DType> {
    Some(match DataType::try_from(code).ok()? {
        DataType::Float => DType::F32,
        DataType::Float16 => DType::F16,
        DataType::Bfloat16 => DType::BF16,
        DataType::Double => DType::F64,
        DataType::Int64 => DType::I64,
        DataType::Int32 => DType::I32,
        DataType::Int8 => DType::I8,
        DataType::Uint8 => DType::U8,
        DataType::Bool => DType::Bool,
        _ => return None,
    })
}

pub(crate) fn dtype_to_onnx(dtype: DType) -> DataType {
    match dtype {
        DType::F32 => DataType::Float,
        DType::F16 => DataType::Float16,
        DType::BF16 => DataType::Bfloat16,
        DType::F64 => DataType::Double,
        DType::I64 => DataType::Int64,
        DType::I32 => DataType::Int32,
        DType::I8 => DataType::Int8,
        DType::U8 => DataType::Uint8,
        DType::Bool => DataType::Bool,
    }
}

/// A readable name for an ONNX data type code, for error messages.
pub(crate) fn onnx_dtype_name(code: i32) -> String {
    match DataType::try_from(code) {
        Ok(d) => d.as_str_name().to_string(),
        Err(_) => format!("unknown data type {code}"),
    }
}

/// Converts ONNX dims to a static shape with a checked element count.
pub(crate) fn shape_from_dims(
    dims: &[i64],
    name: &str,
) -> Result<(Vec<usize>, usize), ImportError> {
    let bad = |msg: String| ImportError::BadTensor {
        name: name.to_string(),
        msg,
    };
    let shape = dims
        .iter()
        .map(|&d| {
            usize::try_from(d).map_err(|_| bad(format!("dims {dims:?} have a negative entry")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let n = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad(format!("dims {dims:?} overflow the element count")))?;
    Ok((shape, n))
}

/// Converts a TensorProto, taking its `raw_data` out (so a large model is not held twice).
pub(crate) fn from_proto(t: &mut pb::TensorProto) -> Result<(String, Const), ImportError> {
    let name = t.name().to_string();
    let bad = |msg: String| ImportError::BadTensor {
        name: name.clone(),
        msg,
    };
    if t.data_location() == DataLocation::External || !t.external_data.is_empty() {
        return Err(ImportError::ExternalData { name });
    }
    if t.segment.is_some() {
        return Err(bad("segmented tensors are not supported".into()));
    }
    let code = t.data_type();
    let dtype = dtype_from_onnx(code).ok_or_else(|| ImportError::UnsupportedDtype {
        what: format!("tensor '{name}'"),
        dtype: onnx_dtype_name(code),
    })?;
    let (shape, n) = shape_from_dims(&t.dims, &name)?;
    let wrong_len = |field: &str, got: usize| {
        bad(format!(
            "dims {:?} need {n} {dtype} elements but {field} holds {got}",
            t.dims
        ))
    };
    let data = if let Some(raw) = t.raw_data.take() {
        let need = n
            .checked_mul(dtype.size())
            .ok_or_else(|| bad(format!("dims {:?} overflow the byte size", t.dims)))?;
        if raw.len() != need {
            return Err(bad(format!(
                "dims {:?} need {need} bytes of {dtype} but raw_data holds {}",
                t.dims,
                raw.len()
            )));
        }
        match dtype {
            // Reuse the buffer: no conversion needed.
            DType::U8 => TensorData::U8(raw),
            _ => TensorData::from_le_bytes(dtype, &raw)
                .ok_or_else(|| bad("raw_data length".into()))?,
        }
    } else {
        if !matches!(dtype, DType::F32 | DType::F64 | DType::I64) && t.int32_data.len() != n {
            return Err(wrong_len("int32_data", t.int32_data.len()));
        }
        let out_of_range =
            |x: i32| bad(format!("int32_data value {x} is out of range for {dtype}"));
        match dtype {
            DType::F32 => {
                if t.float_data.len() != n {
                    return Err(wrong_len("float_data", t.float_data.len()));
                }
                TensorData::F32(std::mem::take(&mut t.float_data))
            }
            DType::F64 => {
                if t.double_data.len() != n {
                    return Err(wrong_len("double_data", t.double_data.len()));
                }
                TensorData::F64(std::mem::take(&mut t.double_data))
            }
            DType::I64 => {
                if t.int64_data.len() != n {
                    return Err(wrong_len("int64_data", t.int64_data.len()));
                }
                TensorData::I64(std::mem::take(&mut t.int64_data))
            }
            DType::I32 => TensorData::I32(std::mem::take(&mut t.int32_data)),
            DType::I8 => TensorData::I8(
                t.int32_data
                    .iter()
                    .map(|&x| i8::try_from(x).map_err(|_| out_of_range(x)))
                    .collect::<Result<_, _>>()?,
            ),
            DType::U8 => TensorData::U8(
                t.int32_data
                    .iter()
                    .map(|&x| u8::try_from(x).map_err(|_| out_of_range(x)))
                    .collect::<Result<_, _>>()?,
            ),
            DType::Bool => TensorData::Bool(t.int32_data.iter().map(|&x| x != 0).collect()),
            // ONNX stores 16-bit floats as their bit patterns in int32_data.
            DType::F16 => TensorData::F16(
                t.int32_data
                    .iter()
                    .map(|&x| f16::from_bits(x as u16))
                    .collect(),
            ),
            DType::BF16 => TensorData::BF16(
                t.int32_data
                    .iter()
                    .map(|&x| bf16::from_bits(x as u16))
                    .collect(),
            ),
        }
    };
    Ok((name, Const::new(shape, data)))
}

/// Serialises a tensor as an ONNX TensorProto with little-endian `raw_data`.
pub(crate) fn to_proto_bytes(name: &str, shape: &[usize], data: &TensorData) -> Vec<u8> {
    pb::TensorProto {
        dims: shape.iter().map(|&d| d as i64).collect(),
        data_type: Some(dtype_to_onnx(data.dtype()) as i32),
        name: Some(name.to_string()),
        raw_data: Some(data.to_le_bytes()),
        ..Default::default()
    }
    .encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proto(dims: &[i64], dtype: DataType) -> pb::TensorProto {
        pb::TensorProto {
            dims: dims.to_vec(),
            data_type: Some(dtype as i32),
            name: Some("t".into()),
            ..Default::default()
        }
    }

    #[test]
    fn typed_fields_and_raw_data_agree() {
        let mut a = proto(&[2, 2], DataType::Float);
        a.float_data = vec![1.0, 2.0, 3.0, 4.0];
        let mut b = proto(&[2, 2], DataType::Float);
        b.raw_data = Some(TensorData::F32(vec![1.0, 2.0, 3.0, 4.0]).to_le_bytes());
        let (_, a) = from_proto(&mut a).unwrap();
        let (_, b) = from_proto(&mut b).unwrap();
        assert_eq!(a.data, b.data);
        assert_eq!(a.shape, vec![2, 2]);
    }

    #[test]
    fn int32_data_carries_small_types() {
        let mut t = proto(&[3], DataType::Float16);
        t.int32_data = vec![0x3c00, 0x4000, 0xbc00];
        let (_, c) = from_proto(&mut t).unwrap();
        assert_eq!(c.data.to_f32(), vec![1.0, 2.0, -1.0]);
        let mut t = proto(&[2], DataType::Int8);
        t.int32_data = vec![-3, 300];
        assert!(from_proto(&mut t).unwrap_err().to_string().contains("300"));
        let mut t = proto(&[2], DataType::Bool);
        t.int32_data = vec![0, 1];
        assert_eq!(
            *from_proto(&mut t).unwrap().1.data,
            TensorData::Bool(vec![false, true])
        );
    }

    #[test]
    fn sizes_are_checked_before_allocating() {
        let mut t = proto(&[1 << 40, 1 << 40], DataType::Float);
        t.raw_data = Some(vec![0; 4]);
        assert!(
            from_proto(&mut t)
                .unwrap_err()
                .to_string()
                .contains("overflow")
        );
        let mut t = proto(&[1 << 40], DataType::Float);
        t.raw_data = Some(vec![0; 4]);
        assert!(
            from_proto(&mut t)
                .unwrap_err()
                .to_string()
                .contains("raw_data holds 4")
        );
        let mut t = proto(&[-1], DataType::Float);
        assert!(
            from_proto(&mut t)
                .unwrap_err()
                .to_string()
                .contains("negative")
        );
    }

    #[test]
    fn unsupported_and_external() {
        let mut t = proto(&[1], DataType::String);
        assert!(matches!(
            from_proto(&mut t),
            Err(ImportError::UnsupportedDtype { .. })
        ));
        let mut t = proto(&[1], DataType::Float);
        t.data_location = Some(DataLocation::External as i32);
        assert!(matches!(
            from_proto(&mut t),
            Err(ImportError::ExternalData { .. })
        ));
    }
}
