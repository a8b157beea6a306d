//! The `lowmem plan --html` page: its embedded data checked against the plan (`--json`,
//! written by the same run) and the source model, and the page rendered in headless
//! Chromium (`scripts/screenshot.sh`, `--dump-dom` after its script ran). The Chromium
//! checks are skipped, with a note, where `/usr/bin/chromium` is absent.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use lowmem_testkit::{example_path, lowmem_cli, try_data_dir, workspace_root};
use serde_json::Value;

const CHROMIUM: &str = "/usr/bin/chromium";

fn chromium() -> bool {
    let there = Path::new(CHROMIUM).exists();
    if !there {
        eprintln!("note: {CHROMIUM} is absent; skipping the HTML rendering check");
    }
    there
}

fn scratch(name: &str) -> PathBuf {
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("html-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `lowmem plan MODEL ARGS --json --html` in one run: (plan JSON, page).
fn plan(dir: &Path, model: &Path, args: &[&str]) -> (Value, String, PathBuf) {
    let (json, html) = (dir.join("plan.json"), dir.join("plan.html"));
    lowmem_cli!()
        .cmd()
        .arg("plan")
        .arg(model)
        .args(args)
        .arg("--json")
        .arg(&json)
        .arg("--html")
        .arg(&html)
        .run()
        .assert_ok();
    let plan = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    (plan, std::fs::read_to_string(&html).unwrap(), html)
}

/// The page's embedded data object.
fn page_data(page: &str) -> Value {
    let open = r#"<script type="application/json" id="plan-data">"#;
    let at = page.find(open).expect("the page embeds its data") + open.len();
    let len = page[at..].find("</script>").expect("closed");
    serde_json::from_str(&page[at..at + len]).expect("the embedded data is JSON")
}

/// `base`, `k` where `name` is `base.remat<k>`.
fn remat_suffix(name: &str) -> Option<(&str, &str)> {
    let (base, k) = name.rsplit_once(".remat")?;
    (!k.is_empty() && k.bytes().all(|b| b.is_ascii_digit())).then_some((base, k))
}

/// The page's per-buffer field `field` of buffer row `b` (`docs/plan-format.md`).
fn field<'v>(b: &'v Value, field: &str) -> &'v Value {
    let at = [
        "tensor",
        "display",
        "kind",
        "bytes",
        "offset",
        "persistent",
        "start",
        "end",
        "made",
        "last",
        "shares",
    ]
    .iter()
    .position(|f| *f == field)
    .unwrap();
    &b[at]
}

/// Every buffer of the page data is the plan's buffer at the same index (name, bytes,
/// offset, live range); each kind agrees with the plan's kind; producers and last readers
/// are the graph's, as the schedule and the liveness rules of `docs/plan-format.md` say.
fn check_against_plan(plan: &Value, data: &Value) {
    let bufs = plan["buffers"].as_array().unwrap();
    let rows = data["buffers"].as_array().unwrap();
    let kinds: Vec<&str> = data["kinds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    let schedule = plan["schedule"].as_array().unwrap();
    assert_eq!(rows.len(), bufs.len(), "one row per plan buffer");
    assert_eq!(data["points"], 2 * schedule.len());
    assert_eq!(data["nodes"].as_array().unwrap().len(), schedule.len());
    for (s, n) in schedule.iter().enumerate() {
        assert_eq!(data["nodes"][s][0], n["node"], "step {s}");
        assert_eq!(data["nodes"][s][1], n["op"], "step {s}");
    }
    for (b, r) in bufs.iter().zip(rows) {
        let name = b["tensor"].as_str().unwrap();
        assert_eq!(field(r, "tensor"), &b["tensor"]);
        assert_eq!(field(r, "bytes"), &b["bytes"], "{name}");
        assert_eq!(field(r, "offset"), &b["offset"], "{name}");
        assert_eq!(field(r, "start"), &b["start"], "{name}");
        assert_eq!(field(r, "end"), &b["end"], "{name}");
        let kind = kinds[field(r, "kind").as_u64().unwrap() as usize];
        let allowed: &[&str] = match b["kind"].as_str().unwrap() {
            "weight" => &["weight"],
            "gradient" => &["gradient"],
            "optimizer_state" => &["optimizer state", "running statistic"],
            "input" => &["input"],
            "output" => &["output"],
            "workspace" => &["workspace"],
            "activation" => &["activation", "saved activation", "recomputed copy"],
            k => panic!("unknown plan kind {k}"),
        };
        assert!(
            allowed.contains(&kind),
            "{name}: {kind} for a plan {}",
            b["kind"]
        );
        assert_ne!(
            field(r, "persistent").is_null(),
            b["offset"].is_null(),
            "{name}: in the persistent block iff outside the arena"
        );
        let start = b["start"].as_u64().unwrap();
        let end = b["end"].as_u64().unwrap();
        let made = field(r, "made").as_u64();
        let last = field(r, "last").as_u64();
        if b["kind"] == "workspace" {
            let s = made.expect("a workspace has its step");
            assert_eq!((start, end), (2 * s, 2 * s + 2), "{name}");
            assert_eq!(
                name,
                format!(
                    "workspace of {}",
                    schedule[s as usize]["node"].as_str().unwrap()
                )
            );
        } else if !b["offset"].is_null() {
            // An arena tensor is written by its producer's step and lives to its last
            // reader's read point + 1 or + 2 (an output lives to the end).
            let s = made.expect("an arena tensor has a producer");
            assert_eq!(start, 2 * s + 1, "{name}");
            match last {
                Some(l) if b["kind"] != "output" => {
                    assert!(end == 2 * l + 1 || end == 2 * l + 2, "{name}: {end} vs {l}")
                }
                _ => assert!(
                    end == start + 1 || end == data["points"].as_u64().unwrap(),
                    "{name}"
                ),
            }
        }
        if let Some(k) = field(r, "shares").as_u64() {
            assert_eq!(b["shares"], bufs[k as usize]["tensor"], "{name}");
        } else {
            assert!(b["shares"].is_null(), "{name}");
        }
    }
}

/// Names that the source model gives are shown as they are; producers are its nodes.
fn check_source_names(data: &Value, tensors: &HashSet<String>, made_by: &HashMap<String, String>) {
    let mut seen = 0;
    for r in data["buffers"].as_array().unwrap() {
        let name = field(r, "tensor").as_str().unwrap();
        if !tensors.contains(name) || field(r, "kind") == 2 || field(r, "kind") == 3 {
            continue; // (optimizer state and running statistics: named after their weight)
        }
        seen += 1;
        assert!(
            field(r, "display").is_null(),
            "{name} is shown as {}",
            field(r, "display")
        );
        if let Some(node) = made_by.get(name) {
            let s = field(r, "made").as_u64().expect("made by a node") as usize;
            assert_eq!(data["nodes"][s][0].as_str(), Some(node.as_str()), "{name}");
        }
    }
    assert!(seen > 5, "only {seen} buffers carry source names");
}

/// The tensors (inputs, weights, node outputs) and producing nodes of a lowmem JSON model.
/// A ReLU output is made by the Conv or Gemm that feeds it: the compiled step fuses the
/// pair into that node (where the pre-activation has no other reader, as in these models).
fn json_model_names(path: &Path) -> (HashSet<String>, HashMap<String, String>) {
    let m: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut tensors: HashSet<String> = HashSet::new();
    let mut made_by: HashMap<String, String> = HashMap::new();
    for key in ["inputs", "weights"] {
        for t in m[key].as_array().unwrap() {
            tensors.insert(t["name"].as_str().unwrap().into());
        }
    }
    let mut op_of: HashMap<String, String> = HashMap::new();
    for n in m["nodes"].as_array().unwrap() {
        let name = n["name"].as_str().unwrap().to_string();
        let mut maker = name.clone();
        if n["op"] == "Relu" {
            let input = n["inputs"][0].as_str().unwrap();
            if let Some(p) = made_by.get(input)
                && matches!(op_of[p].as_str(), "Conv" | "Gemm")
            {
                maker = p.clone();
                tensors.remove(input);
            }
        }
        op_of.insert(name, n["op"].as_str().unwrap().to_string());
        for o in n["outputs"].as_array().unwrap() {
            let o = o.as_str().unwrap().to_string();
            tensors.insert(o.clone());
            made_by.insert(o, maker.clone());
        }
    }
    (tensors, made_by)
}

#[test]
fn plan_page_data_matches_the_plan_and_names_what_each_buffer_holds() {
    let dir = scratch("data");
    let model = example_path("tiny_cnn");
    let (plan, page, _) = plan(
        &dir,
        &model,
        &[
            "--train",
            "--batch",
            "4",
            "--optimizer",
            "adam",
            "--remat",
            "sqrt",
        ],
    );
    let data = page_data(&page);
    check_against_plan(&plan, &data);
    let (tensors, made_by) = json_model_names(&model);
    check_source_names(&data, &tensors, &made_by);
    let kinds: Vec<&str> = data["kinds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    let rows = data["buffers"].as_array().unwrap();
    let kind_of = |r: &Value| kinds[field(r, "kind").as_u64().unwrap() as usize];
    let shown = |r: &Value| {
        field(r, "display")
            .as_str()
            .or(field(r, "tensor").as_str())
            .unwrap()
            .to_string()
    };
    let by_name: HashMap<&str, &Value> = rows
        .iter()
        .map(|r| (field(r, "tensor").as_str().unwrap(), r))
        .collect();
    // Weight gradients and Adam moments are named after their weight.
    for w in ["conv1.w", "conv2.w", "fc.w", "fc.b"] {
        let g = by_name[format!("{w}.grad").as_str()];
        assert_eq!(shown(g), format!("gradient of {w}"));
        assert_eq!(kind_of(g), "gradient");
        let m = by_name[format!("{w}.adam_m").as_str()];
        assert_eq!(shown(m), format!("Adam first moment of {w}"));
        assert_eq!(kind_of(m), "optimizer state");
    }
    // Recomputed copies: named after their source, made by a recomputing node
    // (`<node>.remat<k>`, docs/plan-format.md).
    let mut copies = 0;
    for r in rows {
        let name = field(r, "tensor").as_str().unwrap();
        let Some((base, k)) = remat_suffix(name) else {
            continue;
        };
        if kind_of(r) == "workspace" {
            continue; // (a recomputing node's scratch: `workspace of <node>.remat<k>`)
        }
        copies += 1;
        assert_eq!(kind_of(r), "recomputed copy", "{name}");
        let s = field(r, "made").as_u64().unwrap() as usize;
        let node = plan["schedule"][s]["node"].as_str().unwrap();
        assert_eq!(
            remat_suffix(node).map(|n| n.1),
            Some(k),
            "{name} made by {node}"
        );
        if tensors.contains(base) {
            assert_eq!(shown(r), format!("{base} (recomputed #{k})"));
        }
    }
    assert!(copies > 0, "a sqrt plan of tiny_cnn recomputes");
    // Saved activations: made by a source-model (forward) node, last read after the loss.
    let loss_step = plan["schedule"]
        .as_array()
        .unwrap()
        .iter()
        .position(|n| n["op"] == "SoftmaxCrossEntropy")
        .unwrap() as u64;
    let mut saved = 0;
    for r in rows.iter().filter(|r| kind_of(r) == "saved activation") {
        saved += 1;
        let name = field(r, "tensor").as_str().unwrap();
        let s = field(r, "made").as_u64().unwrap();
        assert!(s < loss_step, "{name}");
        assert!(field(r, "last").as_u64().unwrap() > loss_step, "{name}");
    }
    assert!(saved > 0, "a training step saves activations");
    // Stages: the plan's stage count, and the recomputation bands are exactly the steps of
    // the recomputing nodes.
    let bands = data["bands"].as_array().unwrap();
    let stages: HashSet<u64> = bands.iter().filter_map(|b| b[2].as_u64()).collect();
    assert_eq!(stages.len() as u64, plan["stages"].as_u64().unwrap());
    let in_bands: HashSet<u64> = bands
        .iter()
        .filter(|b| b[3] == 1)
        .flat_map(|b| b[0].as_u64().unwrap() / 2..b[1].as_u64().unwrap() / 2)
        .collect();
    let recomputing: HashSet<u64> = plan["schedule"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .filter(|(_, n)| remat_suffix(n["node"].as_str().unwrap()).is_some())
        .map(|(s, _)| s as u64)
        .collect();
    assert_eq!(in_bands, recomputing);
    assert_eq!(
        recomputing.len() as u64,
        plan["recomputed_nodes"].as_u64().unwrap()
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// An ONNX model's own tensor and node names reach the page (squeezenet, batch 1).
#[test]
fn plan_page_shows_onnx_names() {
    let Some(data_dir) = try_data_dir() else {
        return;
    };
    let model = data_dir.join("models/squeezenet.onnx");
    if !model.is_file() {
        eprintln!("note: {} is absent; skipping", model.display());
        return;
    }
    let dir = scratch("onnx");
    let (plan, page, _) = plan(&dir, &model, &["--train", "--batch", "1"]);
    let data = page_data(&page);
    check_against_plan(&plan, &data);
    // The graph the step is built from: Conv/Gemm -> ReLU pairs fused.
    let opts = lowmem::compile::CompileOptions::new(lowmem::compile::Task::Inference);
    let g = lowmem::compile::fused_forward(lowmem_testkit::load(&model, Some(1)), &opts).unwrap();
    let tensors: HashSet<String> = g.tensors.iter().map(|t| t.name.clone()).collect();
    let made_by: HashMap<String, String> = g
        .nodes
        .iter()
        .flat_map(|n| {
            n.outputs
                .iter()
                .map(|&o| (g.tensor(o).name.clone(), n.name.clone()))
        })
        .collect();
    check_source_names(&data, &tensors, &made_by);
    let rows = data["buffers"].as_array().unwrap();
    let grad = rows
        .iter()
        .find(|r| field(r, "tensor") == "conv1_w_0.grad")
        .expect("the gradient of conv1_w_0");
    assert_eq!(field(grad, "display"), "gradient of conv1_w_0");
    std::fs::remove_dir_all(&dir).ok();
}

/// `chromium --dump-dom` of `page` (with a location hash), after its script ran.
fn dump_dom(page: &Path, hash: &str) -> String {
    let profile = scratch("profile");
    let out = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1200,900",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(format!(
            "file://{}#{hash}",
            page.canonicalize().unwrap().display()
        ))
        .output()
        .expect("chromium runs");
    std::fs::remove_dir_all(&profile).ok();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn plan_page_in_chromium_has_tooltips_stages_and_zoom() {
    if !chromium() {
        return;
    }
    let dir = scratch("dom");
    let (plan, _, html) = plan(
        &dir,
        &example_path("tiny_cnn"),
        &["--train", "--batch", "4", "--remat", "sqrt"],
    );
    let bufs = plan["buffers"].as_array().unwrap();
    let (i, copy) = bufs
        .iter()
        .enumerate()
        .find(|(_, b)| {
            !b["offset"].is_null() && remat_suffix(b["tensor"].as_str().unwrap()).is_some()
        })
        .expect("an arena buffer recomputed");
    let name = copy["tensor"].as_str().unwrap();
    let (_, k) = remat_suffix(name).unwrap();
    let dom = dump_dom(&html, &format!("zoom=10,50&b={i}"));

    // The pinned tooltip of the recomputed copy, built by the script from the data.
    let at = dom.find(r#"<div id="tip""#).expect("the tooltip");
    let tip = &dom[at..at + dom[at..].find("</table>").expect("its table")];
    assert!(tip.contains("recomputed copy"), "{tip}");
    assert!(tip.contains(&format!("(recomputed #{k})")), "{tip}");
    assert!(tip.contains(name), "{tip}");
    let made = &plan["schedule"][(copy["start"].as_u64().unwrap() / 2) as usize];
    assert!(tip.contains(made["node"].as_str().unwrap()), "{tip}");
    assert!(
        tip.contains(&format!("[{}, {})", copy["start"], copy["end"])),
        "{tip}"
    );

    // One rectangle per arena buffer, plus the persistent block's own buffers.
    let arena = bufs.iter().filter(|b| !b["offset"].is_null()).count();
    let own = bufs
        .iter()
        .filter(|b| b["offset"].is_null() && b["shares"].is_null() && b["kind"] != "workspace")
        .count();
    let drawn = dom
        .match_indices(r#" data-i=""#)
        .filter(|(at, m)| dom[at + m.len()..].starts_with(|c: char| c.is_ascii_digit()))
        .count();
    assert_eq!(drawn, arena + own);
    // Stage bands and the recomputation strip, zoomed to [10, 50), and the controls.
    assert!(dom.contains(r#"<svg id="stages""#) && dom.contains("data-b="));
    assert!(dom.contains(r#"<svg id="recompute""#));
    assert_eq!(
        dom.matches(r#"viewBox="10 0 40 "#).count(),
        3,
        "the arena, stage and recompute strips are zoomed"
    );
    for z in ["in", "out", "left", "right", "reset"] {
        assert!(dom.contains(&format!(r#"data-z="{z}""#)), "zoom button {z}");
    }
    assert!(dom.contains("program points [10, 50) of"));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn plan_page_renders_in_chromium() {
    if !chromium() {
        return;
    }
    let dir = scratch("png");
    let png = dir.join("tiny_cnn.png");
    let (_, page, html) = plan(
        &dir,
        &example_path("tiny_cnn"),
        &["--train", "--batch", "4"],
    );
    let bare = page.replace(r#"xmlns="http://www.w3.org/2000/svg""#, "");
    for fetch in ["http:", "https:", " src=", "href=", "@import", "url("] {
        assert!(!bare.contains(fetch), "the page loads nothing ({fetch})");
    }
    let shot = Command::new("bash")
        .arg(workspace_root().join("scripts/screenshot.sh"))
        .arg(&html)
        .arg(&png)
        .output()
        .expect("scripts/screenshot.sh runs");
    assert!(
        shot.status.success(),
        "screenshot failed: {}",
        String::from_utf8_lossy(&shot.stderr)
    );
    let bytes = std::fs::metadata(&png).expect("the PNG exists").len();
    assert!(bytes > 10 * 1024, "the PNG is only {bytes} bytes");
    let head = std::fs::read(&png).unwrap();
    assert!(head.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    std::fs::remove_dir_all(&dir).ok();
}
