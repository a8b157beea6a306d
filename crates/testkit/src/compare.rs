//! Comparing a tensor with its oracle as a whole.

use lowmem_ir::TensorData;

/// `(||got - want||, ||want||)` in L2 over the elements (as f64), for relative-error checks
/// whose floor the caller chooses.
pub fn l2_distance(want: &TensorData, got: &TensorData) -> (f64, f64) {
    let (w, g) = (want.to_f64(), got.to_f64());
    assert_eq!(w.len(), g.len(), "compared tensors differ in length");
    let num: f64 = w.iter().zip(&g).map(|(a, b)| (a - b) * (a - b)).sum();
    let den: f64 = w.iter().map(|a| a * a).sum();
    (num.sqrt(), den.sqrt())
}
