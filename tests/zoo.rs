//! The nine model-zoo graphs of the onnx wheel, with random weights, against onnxruntime at
//! batch 1 and, after `Graph::with_batch(4)`, at batch 4 (the oracle there is four
//! independent batch-1 onnxruntime runs, concatenated).

mod common;

use common::{check_close, read_pb};
use lowmem_testkit::{data_dir, load};

const RTOL: f64 = 1e-3;
const ATOL: f64 = 1e-4;

fn check_model(name: &str) {
    let dir = data_dir().join("ref").join(name);
    let graph = load(&dir.join("model.onnx"), None);
    assert_eq!(graph.outputs.len(), 1);
    for (batch, sub) in [(1usize, "b1"), (4, "b4")] {
        let g = if batch == 1 {
            graph.clone()
        } else {
            graph
                .with_batch(batch)
                .unwrap_or_else(|e| panic!("{name}: {e}"))
        };
        let input = read_pb(&dir.join(sub).join("input_0.pb"));
        let expected = read_pb(&dir.join(sub).join("output_0.pb"));
        let x = g.tensor(g.inputs[0]);
        assert_eq!(
            (x.name.as_str(), &x.shape),
            (input.name.as_str(), &input.shape),
            "{name} {sub}: input"
        );
        let out =
            lowmem_exec::run(&g, &[input.data]).unwrap_or_else(|e| panic!("{name} {sub}: {e}"));
        assert_eq!(
            g.tensor(g.outputs[0]).shape,
            expected.shape,
            "{name} {sub}: output shape"
        );
        check_close(&format!("{name} {sub}"), &out[0], &expected, RTOL, ATOL).unwrap();
    }
}

macro_rules! zoo {
    ($($model:ident),*) => {$(
        #[test]
        fn $model() {
            check_model(stringify!($model));
        }
    )*};
}

zoo!(
    alexnet,
    densenet121,
    inception_v1,
    inception_v2,
    resnet50,
    shufflenet,
    squeezenet,
    vgg19,
    zfnet512
);
