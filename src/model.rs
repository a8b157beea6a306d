//! Loading models (ONNX or lowmem JSON) and tensors (ONNX TensorProto files).

use std::path::Path;

use lowmem_ir::{DType, Graph, TensorData, json};

use crate::Error;

fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Loads a `.onnx` or lowmem `.json` model (by extension; other files are sniffed: JSON
/// starts with `{`), optionally with its batch dimension rewritten to `batch`.
pub fn load(path: &Path, batch: Option<usize>) -> Result<Graph, Error> {
    if let Some(name) = path.to_str().and_then(|p| p.strip_prefix("builtin:")) {
        return builtin(name, batch);
    }
    let bytes = read(path)?;
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let looks_json = bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    let graph = if ext == "json" || (ext != "onnx" && looks_json) {
        let text = std::str::from_utf8(&bytes)
            .map_err(|e| Error::Model(format!("{}: not UTF-8 text ({e})", path.display())))?;
        json::from_json(text).map_err(|e| Error::Model(format!("{}: {e}", path.display())))?
    } else {
        let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("model");
        lowmem_onnx::import_model(&bytes, name).map_err(|source| Error::Import {
            path: path.display().to_string(),
            source: Box::new(source),
        })?
    };
    match batch {
        Some(n) => Ok(graph.with_batch(n)?),
        None => Ok(graph),
    }
}

/// The models `builtin:NAME` names (built with the graph API, no file): benchmarks that
/// must run where a model file cannot be taken (the GPU machine), and their peers in
/// PyTorch (benches/gpu_torch.py) build the same architectures.
pub const BUILTINS: &[(&str, &str)] = &[
    (
        "resnet50",
        "ResNet-50, 224x224 RGB, 1000 classes (batch default 64)",
    ),
    (
        "bert-base",
        "BERT-base-like encoder: 12 layers, hidden 768, 12 heads, seq 128, FFN 3072, 2 classes (batch default 32)",
    ),
    (
        "encoder",
        "small BERT-style encoder: 4 layers, hidden 256, 4 heads, seq 128, FFN 1024, 2 classes (batch default 1)",
    ),
];

fn builtin(name: &str, batch: Option<usize>) -> Result<Graph, Error> {
    match name {
        "resnet50" => Ok(crate::models::resnet(
            [3, 4, 6, 3],
            224,
            1000,
            batch.unwrap_or(64),
        )),
        "bert-base" => Ok(crate::models::transformer_encoder(
            12,
            768,
            12,
            128,
            3072,
            2,
            batch.unwrap_or(32),
        )),
        "encoder" => Ok(crate::models::transformer_encoder(
            4,
            256,
            4,
            128,
            1024,
            2,
            batch.unwrap_or(1),
        )),
        other => Err(Error::Model(format!(
            "builtin:{other} is not a built-in model; there are: {}",
            BUILTINS
                .iter()
                .map(|(n, d)| format!("builtin:{n} ({d})"))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// A tensor read from an ONNX TensorProto file.
pub struct TensorFile {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub data: TensorData,
}

pub fn read_tensor(path: &Path) -> Result<TensorFile, Error> {
    let bytes = read(path)?;
    let (name, dtype, shape, data) =
        lowmem_onnx::read_tensor(&bytes).map_err(|source| Error::Import {
            path: path.display().to_string(),
            source: Box::new(source),
        })?;
    Ok(TensorFile {
        name,
        dtype,
        shape,
        data,
    })
}

pub fn write_tensor(
    path: &Path,
    name: &str,
    shape: &[usize],
    data: &TensorData,
) -> Result<(), Error> {
    std::fs::write(path, lowmem_onnx::write_tensor(name, shape, data)).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Reads `--input NAME=FILE.pb` specs and binds them to the graph's inputs.
pub fn inputs_from_specs(graph: &Graph, specs: &[String]) -> Result<Vec<TensorData>, Error> {
    let mut given = Vec::with_capacity(specs.len());
    for spec in specs {
        let (name, file) = spec
            .split_once('=')
            .ok_or_else(|| Error::Usage(format!("--input '{spec}' should be NAME=FILE.pb")))?;
        given.push((name.to_string(), read_tensor(file.as_ref())?));
    }
    bind_inputs(graph, given)
}

/// Orders named input files by the graph's inputs, checking names, dtypes and shapes.
pub fn bind_inputs(
    graph: &Graph,
    given: Vec<(String, TensorFile)>,
) -> Result<Vec<TensorData>, Error> {
    let mut slots: Vec<Option<TensorData>> = vec![None; graph.inputs.len()];
    for (name, t) in given {
        let Some(k) = graph
            .inputs
            .iter()
            .position(|&i| graph.tensor(i).name == name)
        else {
            let names: Vec<&str> = graph
                .inputs
                .iter()
                .map(|&i| graph.tensor(i).name.as_str())
                .collect();
            return Err(Error::Usage(format!(
                "the model has no input '{name}' (its inputs: {})",
                names.join(", ")
            )));
        };
        let want = graph.tensor(graph.inputs[k]);
        if t.dtype != want.dtype {
            return Err(Error::Usage(format!(
                "input '{name}': the file holds {} data, the model expects {}",
                t.dtype, want.dtype
            )));
        }
        if t.shape != want.shape {
            return Err(Error::Usage(format!(
                "input '{name}': the file holds shape {:?}, the model expects {:?}{}",
                t.shape,
                want.shape,
                if t.shape.first() != want.shape.first() {
                    " (use --batch to change the batch)"
                } else {
                    ""
                }
            )));
        }
        if slots[k].replace(t.data).is_some() {
            return Err(Error::Usage(format!("input '{name}' is given twice")));
        }
    }
    let missing: Vec<&str> = graph
        .inputs
        .iter()
        .zip(&slots)
        .filter(|(_, s)| s.is_none())
        .map(|(&i, _)| graph.tensor(i).name.as_str())
        .collect();
    if !missing.is_empty() {
        return Err(Error::Usage(format!(
            "missing input(s): {} (give --input NAME=FILE.pb)",
            missing.join(", ")
        )));
    }
    Ok(slots
        .into_iter()
        .map(|s| s.expect("checked above"))
        .collect())
}

/// The graph output named `name`, or the first output.
pub fn output(graph: &Graph, name: Option<&str>) -> Result<lowmem_ir::TensorId, Error> {
    Ok(lowmem_compile::output_of(graph, name)?)
}
