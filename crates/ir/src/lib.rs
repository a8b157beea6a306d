//! lowmem's core IR: a static, typed computation graph.
//!
//! Tensors and nodes are addressed by dense indices ([`TensorId`], [`NodeId`]); names exist only
//! for people and for the JSON/ONNX boundaries. A [`Graph`] is kept in topological order and every
//! tensor carries its inferred dtype and static shape: [`Graph::add_node`] infers the outputs of a
//! node when it is added, and [`Graph::validate`] re-derives everything from scratch.

mod batch;
mod dtype;
pub mod entity;
mod error;
mod graph;
mod inplace;
pub mod json;
mod op;
pub mod scratch;
pub mod shape;
mod train_op;

pub use dtype::{DType, TensorData};
pub use entity::{EntityRef, SecondaryMap};
pub use error::IrError;
pub use graph::{Graph, Node, NodeId, Tensor, TensorId, TensorKind};
pub use op::{
    Activation, AutoPad, BatchNormAttrs, ClipAttrs, ConvAttrs, GeluApprox, GemmAttrs, LrnAttrs, Op,
    PoolAttrs, ReduceAttrs, SoftmaxAttrs, Window, dropout_keep, matmul_shape, norm_axes,
    reshape_target, window_start,
};
