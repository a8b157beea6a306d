//! `--device cuda` on a machine without a CUDA driver: one clear line and a non-zero exit,
//! never a panic, before any compiling. On a machine with a GPU these checks skip visibly
//! (benches/gpu.sh covers it there).

use lowmem_testkit::lowmem_cli;

#[test]
fn cuda_without_a_driver_is_one_clear_line() {
    if lowmem::cuda::Gpu::driver_present() {
        eprintln!("skipped: a CUDA driver is present (benches/gpu.sh tests the GPU)");
        return;
    }
    let cli = lowmem_cli!();
    let model = "ir/examples/digits_cnn.json";
    for args in [
        &[
            "train", model, "--data", "digits", "--steps", "1", "--device", "cuda",
        ][..],
        &["bench", model, "--train", "--device", "cuda"][..],
        &[
            "run",
            model,
            "--input",
            "x=missing.pb",
            "--output-dir",
            "/tmp/x",
            "--device",
            "cuda",
        ][..],
        &[
            "grad",
            model,
            "--input",
            "x=missing.pb",
            "--output-dir",
            "/tmp/x",
            "--device",
            "cuda",
        ][..],
    ] {
        let r = cli.run(args);
        assert!(!r.success(), "{args:?} succeeded without a GPU");
        let err = r.stderr.trim();
        assert_eq!(err, "error: no CUDA driver found (libcuda.so)", "{args:?}");
    }
    // The CPU stays the default.
    let r = cli.run(&["bench", model, "--iters", "1"]);
    assert!(r.success(), "{}", r.stderr);
}

/// `parity --grad` on a zoo "light" graph (every weight one repeated value) gives the weights
/// random values first, else the gradients are rounding noise that no two devices share.
#[test]
fn gradient_parity_randomizes_constant_weights() {
    let cli = lowmem_cli!();
    let model = lowmem_testkit::model_path("squeezenet");
    let model = model.to_str().unwrap();
    let r = cli.run(&["parity", model, "--grad", "--batch", "1", "--device", "cpu"]);
    assert!(r.success(), "{}", r.stderr);
    assert!(
        r.stdout
            .contains(": 26 constant weights given random values"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains(" 0 mismatched"), "{}", r.stdout);
}
