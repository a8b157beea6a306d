//! ONNX import: decodes a `ModelProto` (with the prost types generated from `onnx.proto` in
//! [`pb`]) and builds a lowmem [`Graph`].
//!
//! The IR is static and typed, so the importer resolves everything ONNX leaves to run time:
//! shape arithmetic (`Shape`, `Gather`, `Concat`, ...) and constant generators (`Constant`,
//! `ConstantOfShape`) are folded into constants, inputs that must be constant (Reshape's shape,
//! Squeeze's axes, Clip's bounds, ...) become attributes, and opset-dependent defaults are
//! resolved so that an [`Op`](lowmem_ir::Op) means the same thing whatever opset it came from.
//! Constants that a remaining op reads become weights named after their ONNX tensors.
//!
//! Malformed input never panics: sizes are checked before allocating, and every failure is an
//! [`ImportError`] naming the node, attribute or tensor at fault.

use std::path::{Path, PathBuf};

pub use export::{ExportError, export_model};
use lowmem_ir::{DType, Graph, IrError, TensorData};
use prost::Message;
use thiserror::Error;

pub mod export;
mod fold;
mod import;
mod node;
mod ops;
pub mod pb;
mod tensor;

/// The default-domain opsets the importer accepts. Below 6 several ops had different
/// signatures (`consumed_inputs`, ...); above 21 is not yet reviewed. Within the range every op
/// is mapped by the semantics of the opset the model imports.
pub const MIN_OPSET: i64 = 6;
pub const MAX_OPSET: i64 = 21;

/// The most memory constant folding may use in one import, all folded tensors together (with
/// their working memory). Initializers are bounded by the file, but folding amplifies (a
/// `ConstantOfShape` of a few bytes can ask for gigabytes), so it gets an explicit cap.
pub const MAX_FOLD_BYTES: usize = 1 << 34;

/// Why a model or tensor could not be imported.
#[derive(Debug, Error)]
pub enum ImportError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("not a valid ONNX model: {0}")]
    Decode(String),
    #[error("not a valid ONNX TensorProto: {0}")]
    DecodeTensor(String),
    #[error("unsupported op '{op_type}' at node {node} (domain '{domain}', opset {opset}){note}")]
    UnsupportedOp {
        op_type: String,
        node: String,
        domain: String,
        opset: String,
        /// Extra detail, starting with `": "`, or empty.
        note: String,
    },
    #[error(
        "unsupported opset {version} for domain '{domain}': lowmem imports opsets {MIN_OPSET} to {MAX_OPSET}"
    )]
    UnsupportedOpset { domain: String, version: i64 },
    #[error("node {node} ({op_type}): attribute '{attr}': {msg}")]
    BadAttribute {
        node: String,
        op_type: String,
        attr: String,
        msg: String,
    },
    #[error(
        "node {node} ({op_type}): input '{input}' ({what}) must be constant at import, but it is computed from graph inputs"
    )]
    NotConstant {
        node: String,
        op_type: String,
        input: String,
        what: String,
    },
    #[error("{what}: unsupported data type {dtype}")]
    UnsupportedDtype { what: String, dtype: String },
    #[error(
        "tensor '{name}' keeps its data in an external file, which lowmem does not support; re-save the model with its data embedded"
    )]
    ExternalData { name: String },
    #[error(
        "graph input '{input}': dimension {dim} is {what}; lowmem needs static shapes (export the model with fixed dimensions)"
    )]
    DynamicDim {
        input: String,
        dim: usize,
        what: String,
    },
    #[error("tensor '{name}': {msg}")]
    BadTensor { name: String, msg: String },
    #[error("node {node} ({op_type}): {msg}")]
    BadNode {
        node: String,
        op_type: String,
        msg: String,
    },
    #[error("invalid model: {0}")]
    Invalid(String),
    #[error(transparent)]
    Ir(#[from] IrError),
}

/// Imports a serialised ONNX model. `name` becomes the graph's name.
pub fn import_model(bytes: &[u8], name: &str) -> Result<Graph, ImportError> {
    import_model_limited(bytes, name, MAX_FOLD_BYTES)
}

/// [`import_model`] with `max_fold_bytes` in place of [`MAX_FOLD_BYTES`].
pub fn import_model_limited(
    bytes: &[u8],
    name: &str,
    max_fold_bytes: usize,
) -> Result<Graph, ImportError> {
    let model = pb::ModelProto::decode(bytes).map_err(|e| ImportError::Decode(e.to_string()))?;
    import::import(model, name, max_fold_bytes)
}

/// Reads and imports an ONNX model file; the graph is named after the file stem.
pub fn load(path: &Path) -> Result<Graph, ImportError> {
    let bytes = std::fs::read(path).map_err(|source| ImportError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Decode here rather than via `import_model` so the file bytes are freed before the
    // weights are converted: a large model is then held at most twice, not three times.
    let model =
        pb::ModelProto::decode(&bytes[..]).map_err(|e| ImportError::Decode(e.to_string()))?;
    drop(bytes);
    import::import(model, &name, MAX_FOLD_BYTES)
}

/// Decodes a serialised TensorProto (the `.pb` files of ONNX test data): name, dtype, shape
/// and contents.
pub fn read_tensor(bytes: &[u8]) -> Result<(String, DType, Vec<usize>, TensorData), ImportError> {
    let mut t =
        pb::TensorProto::decode(bytes).map_err(|e| ImportError::DecodeTensor(e.to_string()))?;
    let (name, c) = tensor::from_proto(&mut t)?;
    let data = std::sync::Arc::unwrap_or_clone(c.data);
    Ok((name, c.dtype, c.shape, data))
}

/// Encodes a tensor as a TensorProto with `dims`, `data_type` and little-endian `raw_data`.
pub fn write_tensor(name: &str, shape: &[usize], data: &TensorData) -> Vec<u8> {
    tensor::to_proto_bytes(name, shape, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_round_trip() {
        let data = TensorData::I64(vec![1, -2, 3, 1 << 40, 5, 6]);
        let bytes = write_tensor("x", &[2, 3], &data);
        let (name, dtype, shape, back) = read_tensor(&bytes).unwrap();
        assert_eq!((name.as_str(), dtype, shape), ("x", DType::I64, vec![2, 3]));
        assert!(back.bit_eq(&data));
        assert!(matches!(
            read_tensor(&[0xff, 0xff, 0xff]),
            Err(ImportError::DecodeTensor(_))
        ));
    }
}
