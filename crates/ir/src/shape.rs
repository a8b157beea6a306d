//! Shape helpers shared by shape inference and the executors.

use crate::IrError;

/// Number of elements, or an error naming `what` on overflow.
pub fn numel(shape: &[usize], what: &str) -> Result<usize, IrError> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| IrError::tensor(what, format!("element count of shape {shape:?} overflows")))
}

/// Byte size of a tensor, checked.
pub fn bytes(shape: &[usize], elem: usize, what: &str) -> Result<usize, IrError> {
    numel(shape, what)?
        .checked_mul(elem)
        .ok_or_else(|| IrError::tensor(what, format!("byte size of shape {shape:?} overflows")))
}

/// Element count for a shape already validated by inference (cannot overflow).
pub fn count(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// numpy-style broadcast of two shapes.
pub fn broadcast(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let n = a.len().max(b.len());
    let mut out = vec![0; n];
    for i in 0..n {
        let da = if i + a.len() >= n {
            a[i + a.len() - n]
        } else {
            1
        };
        let db = if i + b.len() >= n {
            b[i + b.len() - n]
        } else {
            1
        };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return None,
        };
    }
    Some(out)
}

/// Row-major strides of a shape (in elements).
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// Normalises a possibly negative axis against `rank`.
pub fn axis(axis: i64, rank: usize) -> Option<usize> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    (0..r).contains(&a).then_some(a as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcasting_follows_numpy() {
        assert_eq!(broadcast(&[2, 3, 4, 5], &[5]), Some(vec![2, 3, 4, 5]));
        assert_eq!(broadcast(&[2, 1, 4, 1], &[3, 1, 5]), Some(vec![2, 3, 4, 5]));
        assert_eq!(broadcast(&[], &[3]), Some(vec![3]));
        assert_eq!(broadcast(&[2, 3], &[3, 2]), None);
    }

    #[test]
    fn numel_overflow_is_an_error() {
        assert!(numel(&[usize::MAX, 2], "t").is_err());
        assert_eq!(numel(&[], "t"), Ok(1));
    }

    #[test]
    fn axes() {
        assert_eq!(axis(-1, 4), Some(3));
        assert_eq!(axis(4, 4), None);
        assert_eq!(axis(-5, 4), None);
        assert_eq!(strides(&[2, 3, 4]), vec![12, 4, 1]);
    }
}
