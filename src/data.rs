//! Data sets for `lowmem train`: the UCI/scikit-learn handwritten digits (8x8 images, 10
//! classes), read from `data/digits.csv.gz` (`python3 scripts/fetch_data.py --digits` fetches
//! it from the scikit-learn wheel).

use std::io::Read;
use std::path::{Path, PathBuf};

use lowmem_ir::{DType, Graph, TensorData, TensorId};

use crate::Error;

/// Rows of the digits file, and the fixed split.
pub const DIGITS_ROWS: usize = 1797;
pub const DIGITS_TRAIN: usize = 1437;
pub const DIGITS_TEST: usize = DIGITS_ROWS - DIGITS_TRAIN;
pub const DIGITS_FEATURES: usize = 64;
pub const DIGITS_CLASSES: usize = 10;
/// Seed of the shuffle that makes the train/test split.
const SPLIT_SEED: u64 = 0x5EED_D161_7500;

/// splitmix64: a small, fixed-seed PRNG for shuffling (no `rand` dependency).
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0; the modulo bias is negligible for small n).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    /// Fisher-Yates.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}

/// Labelled examples: `features` f32 values per example, row-major, and an i64 class each.
#[derive(Clone, Debug)]
pub struct Dataset {
    pub features: usize,
    pub classes: usize,
    pub x: Vec<f32>,
    pub y: Vec<i64>,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.y.len()
    }
    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }
    /// The examples at `idx`, as (features, labels).
    pub fn gather(&self, idx: &[usize]) -> (Vec<f32>, Vec<i64>) {
        let f = self.features;
        let mut x = Vec::with_capacity(idx.len() * f);
        for &i in idx {
            x.extend_from_slice(&self.x[i * f..(i + 1) * f]);
        }
        (x, idx.iter().map(|&i| self.y[i]).collect())
    }
    /// Examples `start..end`.
    pub fn range(&self, start: usize, end: usize) -> (Vec<f32>, Vec<i64>) {
        let f = self.features;
        (
            self.x[start * f..end * f].to_vec(),
            self.y[start..end].to_vec(),
        )
    }
}

/// A train/test split.
#[derive(Clone, Debug)]
pub struct Split {
    pub train: Dataset,
    pub test: Dataset,
}

/// Where data sets live: `$LOWMEM_DATA_DIR`, else `./data` when it exists, else the `data/`
/// of the source tree this binary was built from.
pub fn data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("LOWMEM_DATA_DIR") {
        return PathBuf::from(d);
    }
    let local = PathBuf::from("data");
    if local.is_dir() {
        return local;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data")
}

/// Loads `DIR/digits.csv.gz` (DIR from [`data_dir`]) and splits it.
pub fn digits() -> Result<Split, Error> {
    load_digits(&data_dir().join("digits.csv.gz"))
}

/// Reads the gzipped CSV (64 pixel values 0..16, then the label, per row), scales pixels to
/// [0, 1], and splits 1437/360 after a fixed-seed shuffle.
pub fn load_digits(path: &Path) -> Result<Split, Error> {
    let file = std::fs::File::open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::Data(format!(
                "{} not found: fetch the digits data set with `python3 scripts/fetch_data.py --digits`",
                path.display()
            ))
        } else {
            Error::Io {
                path: path.display().to_string(),
                source: e,
            }
        }
    })?;
    let mut text = String::new();
    flate2::read::GzDecoder::new(file)
        .read_to_string(&mut text)
        .map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })?;
    let bad = |line: usize, msg: String| Error::Data(format!("{}:{line}: {msg}", path.display()));
    let mut x = Vec::with_capacity(DIGITS_ROWS * DIGITS_FEATURES);
    let mut y = Vec::with_capacity(DIGITS_ROWS);
    for (k, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let vals: Vec<f64> = line
            .split(',')
            .map(|v| v.trim().parse::<f64>())
            .collect::<Result<_, _>>()
            .map_err(|e| bad(k + 1, format!("not a number ({e})")))?;
        if vals.len() != DIGITS_FEATURES + 1 {
            return Err(bad(
                k + 1,
                format!("{} values, expected {}", vals.len(), DIGITS_FEATURES + 1),
            ));
        }
        let label = vals[DIGITS_FEATURES];
        if label.fract() != 0.0 || !(0.0..DIGITS_CLASSES as f64).contains(&label) {
            return Err(bad(k + 1, format!("label {label} is not in 0..10")));
        }
        x.extend(vals[..DIGITS_FEATURES].iter().map(|&p| (p / 16.0) as f32));
        y.push(label as i64);
    }
    if y.len() != DIGITS_ROWS {
        return Err(Error::Data(format!(
            "{}: {} rows, expected {DIGITS_ROWS}",
            path.display(),
            y.len()
        )));
    }
    let all = Dataset {
        features: DIGITS_FEATURES,
        classes: DIGITS_CLASSES,
        x,
        y,
    };
    let mut order: Vec<usize> = (0..DIGITS_ROWS).collect();
    SplitMix64::new(SPLIT_SEED).shuffle(&mut order);
    let (train, test) = order.split_at(DIGITS_TRAIN);
    let part = |idx: &[usize]| {
        let (x, y) = all.gather(idx);
        Dataset {
            features: DIGITS_FEATURES,
            classes: DIGITS_CLASSES,
            x,
            y,
        }
    };
    Ok(Split {
        train: part(train),
        test: part(test),
    })
}

/// Checks that a model's data input can take `features` values per example: `[B, 64]` or
/// `[B, 1, 8, 8]` for the digits. Returns the per-example shape.
pub fn check_input(graph: &Graph, input: TensorId, features: usize) -> Result<(), Error> {
    let t = graph.tensor(input);
    let side = (features as f64).sqrt() as usize;
    let fits = t.dtype == DType::F32
        && match t.shape.as_slice() {
            [_, f] => *f == features,
            [_, 1, h, w] => *h == side && *w == side && side * side == features,
            _ => false,
        };
    if fits {
        Ok(())
    } else {
        Err(Error::Model(format!(
            "model input '{}' is {} {:?}; the digits data set needs f32 [B, {features}] or [B, 1, {side}, {side}]",
            t.name, t.dtype, t.shape
        )))
    }
}

/// Batch iterator over a data set: a fresh fixed-seed shuffle each epoch; the last partial
/// batch of an epoch is dropped so that every batch has the model's static size.
pub struct Batches {
    order: Vec<usize>,
    pos: usize,
    rng: SplitMix64,
    pub epoch: usize,
}

impl Batches {
    pub fn new(n: usize, seed: u64) -> Batches {
        let mut b = Batches {
            order: (0..n).collect(),
            pos: 0,
            rng: SplitMix64::new(seed),
            epoch: 0,
        };
        b.rng.shuffle(&mut b.order);
        b
    }

    /// The next `size` example indices (`size` <= the data set size).
    pub fn next_batch(&mut self, size: usize) -> &[usize] {
        if self.pos + size > self.order.len() {
            self.rng.shuffle(&mut self.order);
            self.pos = 0;
            self.epoch += 1;
        }
        self.pos += size;
        &self.order[self.pos - size..self.pos]
    }
}

/// One-hot targets (`classes` per example) for a squared-error loss.
pub fn one_hot(labels: &[i64], classes: usize) -> TensorData {
    let mut v = vec![0f32; labels.len() * classes];
    for (i, &l) in labels.iter().enumerate() {
        v[i * classes + l as usize] = 1.0;
    }
    TensorData::F32(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_cover_each_epoch_once() {
        let mut b = Batches::new(10, 3);
        let mut seen: Vec<usize> = Vec::new();
        for _ in 0..3 {
            seen.extend_from_slice(b.next_batch(3));
        }
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 9);
        assert_eq!(b.epoch, 0);
        b.next_batch(3);
        assert_eq!(b.epoch, 1);
    }

    #[test]
    fn missing_file_says_how_to_fetch() {
        let e = load_digits(Path::new("/nonexistent/digits.csv.gz"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("scripts/fetch_data.py"), "{e}");
    }
}
