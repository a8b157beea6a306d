//! Memory plans of real training steps: every zoo graph's step (batch 2) plans, passes the
//! independent verifier, and its arena is at least the lower bound; the CLI writes the
//! documented JSON and an HTML page, and `lowmem pack` solves CSV instances.

mod common;

use std::time::Duration;

use lowmem::planning::{PlanRequest, make_plan, verify};
use lowmem_autodiff::{Loss, Optimizer};
use lowmem_testkit::{data_dir, example_path, load, lowmem_cli};

fn request() -> PlanRequest {
    PlanRequest {
        train: true,
        batch: Some(2),
        loss: Loss::CrossEntropy,
        optimizer: Optimizer::Sgd {
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 0.0,
        },
        in_place: true,
        search: Duration::from_millis(50),
        remat: None,
        budget: None,
        store: None,
        sliceout: None,
        dropit: None,
        microbatch: None,
        fuse: true,
    }
}

#[test]
fn zoo_training_steps_plan_and_verify() {
    for m in [
        "alexnet",
        "densenet121",
        "inception_v1",
        "inception_v2",
        "resnet50",
        "shufflenet",
        "squeezenet",
        "vgg19",
        "zfnet512",
    ] {
        let (g, roles, p, _) = make_plan(
            &data_dir().join("ref").join(m).join("model.onnx"),
            &request(),
        )
        .unwrap_or_else(|e| panic!("{m}: {e}"));
        verify(&g, &roles, &p).unwrap_or_else(|e| panic!("{m}: {e}"));
        assert!(p.arena_bytes >= p.lower_bound_bytes, "{m}");
        let ratio = p.arena_bytes as f64 / p.lower_bound_bytes as f64;
        println!(
            "{m}: arena {} lower bound {} ratio {ratio:.4} ({})",
            p.arena_bytes, p.lower_bound_bytes, p.planner
        );
        assert!(
            p.lower_bound_bytes > 0 && p.naive_bytes > p.arena_bytes,
            "{m}"
        );
        // In-place reuse happens (ReLU over its dying input), and is visible.
        assert!(
            p.buffers.iter().any(|b| b.shares.is_some()),
            "{m}: no sharing at all"
        );
    }
}

#[test]
fn plan_cli_writes_documented_json_and_html() {
    let dir = std::env::temp_dir().join(format!("lowmem-plan-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (json, html) = (dir.join("p.json"), dir.join("p.html"));
    let out = lowmem_cli!()
        .cmd()
        .arg("plan")
        .arg(example_path("tiny_cnn"))
        .args(["--train", "--batch", "4", "--verify", "--json"])
        .arg(&json)
        .arg("--html")
        .arg(&html)
        .run();
    out.assert_ok();
    assert!(out.stdout.contains("verified"));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(
        (v["format"].as_str(), v["version"].as_u64()),
        (Some("lowmem-plan"), Some(1))
    );
    assert_eq!(
        (v["batch"].as_u64(), v["train"].as_bool()),
        (Some(4), Some(true))
    );
    for key in [
        "arena_bytes",
        "lower_bound_bytes",
        "naive_bytes",
        "persistent_bytes",
        "peak_bytes",
    ] {
        assert!(v[key].as_u64().is_some(), "{key}");
    }
    assert_eq!(
        v["peak_bytes"].as_u64().unwrap(),
        v["persistent_bytes"].as_u64().unwrap() + v["arena_bytes"].as_u64().unwrap()
    );
    let kinds: std::collections::BTreeSet<&str> = v["buffers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["kind"].as_str().unwrap())
        .collect();
    for k in [
        "weight",
        "gradient",
        "optimizer_state",
        "activation",
        "input",
        "output",
        "workspace",
    ] {
        assert!(kinds.contains(k), "no {k} buffer in {kinds:?}");
    }
    // Arena buffers with intersecting ranges never share bytes.
    let bufs: Vec<(u64, u64, u64, u64)> = v["buffers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|b| {
            Some((
                b["offset"].as_u64()?,
                b["bytes"].as_u64()?,
                b["start"].as_u64()?,
                b["end"].as_u64()?,
            ))
        })
        .collect();
    for (i, a) in bufs.iter().enumerate() {
        for b in &bufs[i + 1..] {
            let time = a.2 < b.3 && b.2 < a.3;
            let space = a.0 < b.0 + b.1 && b.0 < a.0 + a.1;
            assert!(!(time && space), "{a:?} and {b:?} overlap");
        }
    }
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(
        page.contains("<svg")
            && page.contains("lower bound")
            && page.contains("Largest arena buffers")
    );
}

#[test]
fn pack_cli_solves_a_csv_instance() {
    let dir = std::env::temp_dir().join(format!("lowmem-pack-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let csv = dir.join("tiny.csv");
    std::fs::write(
        &csv,
        "id,lower,upper,size\na,0,10,4\nb,0,5,4\nc,5,10,4\nd,3,7,2\n",
    )
    .unwrap();
    let out_csv = dir.join("out.csv");
    let cli = lowmem_cli!();
    let text = cli.ok(&[
        "pack",
        csv.to_str().unwrap(),
        "--time-limit",
        "1",
        "--out",
        out_csv.to_str().unwrap(),
    ]);
    assert!(
        text.contains("height 10, lower bound 10, ratio 1.0000"),
        "{text}"
    );
    assert!(
        std::fs::read_to_string(&out_csv)
            .unwrap()
            .starts_with("id,lower,upper,size,offset")
    );
    std::fs::write(&csv, "id,lower,upper,size\na,5,1,4\n").unwrap();
    let out = cli.run(&["pack", csv.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stderr.contains("line 2"), "{}", out.stderr);
}

/// Every zoo training step (batch 2) runs inside one arena of exactly the planned size, and
/// its loss and updated state are bit-identical to the unplanned executor's.
#[test]
fn zoo_training_steps_execute_inside_the_planned_arena() {
    use lowmem_autodiff::{step_value, training_step};
    use lowmem_ir::TensorData;
    use lowmem_plan::{PlanOptions, plan};
    for m in [
        "alexnet",
        "densenet121",
        "inception_v1",
        "inception_v2",
        "resnet50",
        "shufflenet",
        "squeezenet",
        "vgg19",
        "zfnet512",
    ] {
        let dir = data_dir().join("ref").join(m);
        let forward = load(&dir.join("model.onnx"), Some(2));
        let opt = Optimizer::Sgd {
            lr: 0.01,
            momentum: 0.9,
            weight_decay: 1e-4,
        };
        let tg = training_step(&forward, forward.outputs[0], Loss::CrossEntropy, &opt).unwrap();
        let roles = lowmem::compile::training_roles(&tg);
        let p = plan(
            &tg.graph,
            &roles,
            &PlanOptions {
                in_place: true,
                search_time: Duration::from_millis(20),
                fixed_order: false,
            },
        );
        let x = common::read_pb(&dir.join("b4/input_0.pb")).data.to_f32();
        let inputs: Vec<TensorData> = tg
            .graph
            .inputs
            .iter()
            .map(|&i| {
                if Some(i) == tg.labels {
                    TensorData::I64(vec![3, 417])
                } else if i == tg.step {
                    step_value(1)
                } else if let Some(s) = tg.state.iter().find(|s| s.input == i) {
                    (*s.init).clone()
                } else {
                    TensorData::F32(x[..tg.graph.tensor(i).numel()].to_vec())
                }
            })
            .collect();
        let plain = lowmem_exec::run(&tg.graph, &inputs).unwrap();
        let layout = lowmem_exec::Layout {
            order: &p.order,
            tensor_offset: p.tensor_offset.as_slice(),
            workspace: p.workspace.as_slice(),
            arena_bytes: p.arena_bytes,
        };
        let (planned, stats) = lowmem_exec::run_planned(&tg.graph, &layout, inputs)
            .unwrap_or_else(|e| panic!("{m}: {e}"));
        assert_eq!(stats.arena_bytes, p.arena_bytes, "{m}");
        assert_eq!(plain.len(), planned.len());
        for (k, (a, b)) in plain.iter().zip(&planned).enumerate() {
            assert!(
                a.bit_eq(b),
                "{m}: output {k} ({}) differs between planned and unplanned",
                tg.graph.tensor(tg.graph.outputs[k]).name
            );
        }
        assert!(plain[0].to_f32()[0].is_finite(), "{m}: loss");
    }
}
