//! Where the tests' models and data live, and loading them: the JSON examples in
//! `ir/examples/`, the ONNX models in `data/models/` and the reference cases in `data/ref/`
//! (`data/` is made by `scripts/fetch_data.py` and `scripts/make_refs.py`).

use std::path::{Path, PathBuf};

use lowmem_ir::{Graph, json};

/// The workspace root (two levels above this crate).
pub fn workspace_root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// `data/` at the workspace root; panics, saying how to make it, when `data/ref/` is absent.
#[track_caller]
pub fn data_dir() -> PathBuf {
    let d = workspace_root().join("data");
    assert!(
        d.join("ref").is_dir(),
        "{} is missing: run `python3 scripts/fetch_data.py && python3 scripts/make_refs.py` (the README's test command does)",
        d.display()
    );
    d
}

/// `data/` at the workspace root, or `None` with a note on stderr (for tests that skip
/// without it).
pub fn try_data_dir() -> Option<PathBuf> {
    let d = workspace_root().join("data");
    if d.is_dir() {
        Some(d)
    } else {
        eprintln!(
            "note: {} is missing; skipping (run scripts/make_refs.py)",
            d.display()
        );
        None
    }
}

/// `ir/examples/{name}.json`.
pub fn example_path(name: &str) -> PathBuf {
    workspace_root()
        .join("ir/examples")
        .join(format!("{name}.json"))
}

/// The names of the JSON examples in `ir/examples/`, sorted.
pub fn example_names() -> Vec<String> {
    let dir = workspace_root().join("ir/examples");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| {
            let p = e.unwrap().path();
            (p.extension()? == "json").then(|| p.file_stem().unwrap().to_string_lossy().into())
        })
        .collect();
    names.sort();
    names
}

/// The JSON example `ir/examples/{name}.json`.
#[track_caller]
pub fn load_example(name: &str) -> Graph {
    load(&example_path(name), None)
}

/// `data/ref/{name}/model.onnx`: a zoo model with its onnxruntime reference outputs.
pub fn zoo_path(name: &str) -> PathBuf {
    workspace_root()
        .join("data/ref")
        .join(name)
        .join("model.onnx")
}

/// The model called `name`: the JSON example `ir/examples/{name}.json` if there is one, else
/// `data/models/{name}.onnx` (panicking, as [`data_dir`] does, when `data/` is absent).
#[track_caller]
pub fn model_path(name: &str) -> PathBuf {
    let example = example_path(name);
    if example.is_file() {
        example
    } else {
        data_dir().join("models").join(format!("{name}.onnx"))
    }
}

/// Loads [`model_path`]`(name)`, with its batch dimension rewritten to `batch` if given.
#[track_caller]
pub fn load_model(name: &str, batch: Option<usize>) -> Graph {
    load(&model_path(name), batch)
}

/// Loads a `.json` or `.onnx` model (by extension), with its batch dimension rewritten to
/// `batch` if given; panics with the path on any error.
#[track_caller]
pub fn load(path: &Path, batch: Option<usize>) -> Graph {
    let what = path.display();
    let g = if path.extension().is_some_and(|e| e == "json") {
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{what}: {e}"));
        json::from_json(&text).unwrap_or_else(|e| panic!("{what}: {e}"))
    } else {
        lowmem_onnx::load(path).unwrap_or_else(|e| panic!("{what}: {e}"))
    };
    match batch {
        Some(n) => g.with_batch(n).unwrap_or_else(|e| panic!("{what}: {e}")),
        None => g,
    }
}
