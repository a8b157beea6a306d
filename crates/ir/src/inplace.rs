//! In-place eligibility: which input an op's output may overwrite. The one home of this
//! fact: the scheduler plans in-place reuse from it and the executors' kernels implement
//! exactly these in-place forms.

use crate::shape::count;
use crate::{DType, Op};

impl Op {
    /// Reshape-type ops: the output is the input's bytes.
    pub fn is_view(&self) -> bool {
        matches!(
            self,
            Op::Reshape { .. } | Op::Flatten { .. } | Op::Squeeze { .. } | Op::Unsqueeze { .. }
        )
    }

    /// The input that output `k` can be computed over in place (the kernel's in-place form
    /// overwrites that input): input 0 for output 0 of elementwise ops, views, Dropout and
    /// the optimizer updates; the optimizer state inputs for the updated state outputs; the
    /// running statistics for training BatchNormalization's updated ones.
    pub fn in_place_input(&self, k: usize) -> Option<usize> {
        match (self, k) {
            (Op::SgdUpdate { .. } | Op::AdamUpdate { .. }, 1) => Some(2),
            (Op::AdamUpdate { .. }, 2) => Some(3),
            (Op::BatchNormTrain(_), 3) => Some(3),
            (Op::BatchNormTrain(_), 4) => Some(4),
            (_, 0)
                if self.is_unary_elementwise()
                    || self.is_elementwise_grad()
                    || self.is_binary_elementwise()
                    || self.is_view()
                    || matches!(
                        self,
                        Op::Sum
                            | Op::Dropout { .. }
                            | Op::DropoutTrain { .. }
                            | Op::DropoutGrad { .. }
                            | Op::ReluMaskGrad
                            | Op::SgdUpdate { .. }
                            | Op::AdamUpdate { .. }
                    ) =>
            {
                Some(0)
            }
            _ => None,
        }
    }

    /// Whether an output of `out` dtype and shape may overwrite an input of `inp` dtype and
    /// shape in place (given [`Op::in_place_input`]): same dtype and size, and the same
    /// shape unless the op is a view (a broadcasting binary op can only run in place over
    /// its full-size first operand).
    pub fn may_overwrite(&self, inp: (DType, &[usize]), out: (DType, &[usize])) -> bool {
        inp.0 == out.0 && count(inp.1) == count(out.1) && (self.is_view() || inp.1 == out.1)
    }
}
