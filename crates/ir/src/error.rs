use thiserror::Error;

/// Every error names the node, tensor or field it is about.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum IrError {
    #[error("node '{node}' ({op}): {msg}")]
    Node {
        node: String,
        op: String,
        msg: String,
    },
    #[error(
        "node '{node}' reads tensor '{tensor}', which no input, weight or earlier node defines"
    )]
    UnknownTensor { node: String, tensor: String },
    #[error("tensor '{0}' is defined more than once")]
    DuplicateTensor(String),
    #[error("graph output '{0}' is not defined by any input, weight or node")]
    UnknownOutput(String),
    #[error("the graph has a cycle through node '{0}'")]
    Cycle(String),
    #[error("tensor '{name}': {msg}")]
    Tensor { name: String, msg: String },
    #[error("{0}")]
    Invalid(String),
    #[error("JSON: {0}")]
    Json(String),
    #[error("cannot set the batch to {batch}: {msg}")]
    Batch { batch: usize, msg: String },
}

impl IrError {
    pub(crate) fn node(node: &str, op: &str, msg: impl Into<String>) -> Self {
        IrError::Node {
            node: node.to_string(),
            op: op.to_string(),
            msg: msg.into(),
        }
    }
    pub(crate) fn tensor(name: &str, msg: impl Into<String>) -> Self {
        IrError::Tensor {
            name: name.to_string(),
            msg: msg.into(),
        }
    }
}
