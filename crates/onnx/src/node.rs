//! One ONNX node as the importer sees it: its label for messages, its opset, optional inputs
//! and typed attribute access.

use crate::ImportError;
use crate::pb::{self, attribute_proto::AttributeType};

pub(crate) struct NodeCtx<'a> {
    pub proto: &'a pb::NodeProto,
    /// The opset of the node's domain.
    pub opset: i64,
    /// How errors name the node: its name, or its index and first output when unnamed.
    pub label: String,
}

impl<'a> NodeCtx<'a> {
    pub fn new(proto: &'a pb::NodeProto, index: usize, opset: i64) -> NodeCtx<'a> {
        let label = match proto.name() {
            "" => match proto.output.first() {
                Some(o) => format!("#{index} (unnamed, output '{o}')"),
                None => format!("#{index} (unnamed)"),
            },
            n => format!("'{n}'"),
        };
        NodeCtx {
            proto,
            opset,
            label,
        }
    }

    pub fn op_type(&self) -> &'a str {
        self.proto.op_type()
    }

    /// Input `i`, or `None` when it is absent (past the end, or an empty name: ONNX's way of
    /// skipping an optional input).
    pub fn input(&self, i: usize) -> Option<&'a str> {
        self.proto
            .input
            .get(i)
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }

    /// Input `i`, which the op requires.
    pub fn required(&self, i: usize) -> Result<&'a str, ImportError> {
        self.input(i)
            .ok_or_else(|| self.error(format!("required input {i} is missing")))
    }

    pub fn error(&self, msg: impl Into<String>) -> ImportError {
        ImportError::BadNode {
            node: self.label.clone(),
            op_type: self.op_type().to_string(),
            msg: msg.into(),
        }
    }

    pub fn bad_attr(&self, attr: &str, msg: impl Into<String>) -> ImportError {
        ImportError::BadAttribute {
            node: self.label.clone(),
            op_type: self.op_type().to_string(),
            attr: attr.to_string(),
            msg: msg.into(),
        }
    }

    pub fn has_attr(&self, name: &str) -> bool {
        self.proto.attribute.iter().any(|a| a.name() == name)
    }

    /// The attribute `name` if present, checked to be of type `want`. Attributes written
    /// before the `type` field existed are accepted when the matching field is set.
    fn typed(
        &self,
        name: &str,
        want: AttributeType,
    ) -> Result<Option<&'a pb::AttributeProto>, ImportError> {
        let Some(a) = self.proto.attribute.iter().find(|a| a.name() == name) else {
            return Ok(None);
        };
        if a.ref_attr_name.is_some() {
            return Err(self.bad_attr(name, "attribute references are only valid in functions"));
        }
        let ok = match a.r#type {
            Some(t) => t == want as i32,
            None => match want {
                AttributeType::Int => a.i.is_some(),
                AttributeType::Float => a.f.is_some(),
                AttributeType::String => a.s.is_some(),
                AttributeType::Tensor => a.t.is_some(),
                AttributeType::Ints | AttributeType::Floats => true,
                _ => false,
            },
        };
        if !ok {
            let got = a
                .r#type
                .and_then(|t| AttributeType::try_from(t).ok())
                .map_or("untyped", |t| t.as_str_name());
            return Err(self.bad_attr(
                name,
                format!("expected a {} attribute, got {got}", want.as_str_name()),
            ));
        }
        Ok(Some(a))
    }

    pub fn int(&self, name: &str) -> Result<Option<i64>, ImportError> {
        Ok(self.typed(name, AttributeType::Int)?.map(|a| a.i()))
    }

    pub fn int_or(&self, name: &str, default: i64) -> Result<i64, ImportError> {
        Ok(self.int(name)?.unwrap_or(default))
    }

    /// A 0/1 flag attribute.
    pub fn flag(&self, name: &str, default: bool) -> Result<bool, ImportError> {
        match self.int(name)? {
            None => Ok(default),
            Some(0) => Ok(false),
            Some(1) => Ok(true),
            Some(v) => Err(self.bad_attr(name, format!("must be 0 or 1, got {v}"))),
        }
    }

    pub fn float(&self, name: &str) -> Result<Option<f32>, ImportError> {
        Ok(self.typed(name, AttributeType::Float)?.map(|a| a.f()))
    }

    pub fn float_or(&self, name: &str, default: f32) -> Result<f32, ImportError> {
        Ok(self.float(name)?.unwrap_or(default))
    }

    pub fn ints(&self, name: &str) -> Result<Option<&'a [i64]>, ImportError> {
        Ok(self.typed(name, AttributeType::Ints)?.map(|a| &a.ints[..]))
    }

    pub fn floats(&self, name: &str) -> Result<Option<&'a [f32]>, ImportError> {
        Ok(self
            .typed(name, AttributeType::Floats)?
            .map(|a| &a.floats[..]))
    }

    /// A list of non-negative integers (strides, pads, ...); empty when absent.
    pub fn usizes(&self, name: &str) -> Result<Vec<usize>, ImportError> {
        let v = self.ints(name)?.unwrap_or(&[]);
        v.iter()
            .map(|&x| {
                usize::try_from(x)
                    .map_err(|_| self.bad_attr(name, format!("must be non-negative, got {v:?}")))
            })
            .collect()
    }

    pub fn string(&self, name: &str) -> Result<Option<&'a str>, ImportError> {
        match self.typed(name, AttributeType::String)? {
            None => Ok(None),
            Some(a) => std::str::from_utf8(a.s())
                .map(Some)
                .map_err(|_| self.bad_attr(name, "is not valid UTF-8")),
        }
    }

    pub fn tensor(&self, name: &str) -> Result<Option<&'a pb::TensorProto>, ImportError> {
        Ok(self
            .typed(name, AttributeType::Tensor)?
            .and_then(|a| a.t.as_ref()))
    }
}
