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
    /// The nodes of a cycle, each reading an output of the one before it (and the first an
    /// output of the last).
    #[error("the graph has a cycle through nodes {}", cycle_names(.0))]
    Cycle(Vec<String>),
    #[error("tensor '{name}': {msg}")]
    Tensor { name: String, msg: String },
    #[error("{0}")]
    Invalid(String),
    #[error("JSON: {0}")]
    Json(String),
    #[error("cannot set the batch to {batch}: {msg}")]
    Batch { batch: usize, msg: String },
}

fn cycle_names(nodes: &[String]) -> String {
    let mut s: Vec<String> = nodes.iter().map(|n| format!("'{n}'")).collect();
    if let Some(first) = s.first().cloned() {
        s.push(first);
    }
    s.join(" -> ")
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
