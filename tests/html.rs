//! The `lowmem plan --html` page renders in headless Chromium (`scripts/screenshot.sh`).
//! Skipped, with a note, where `/usr/bin/chromium` is absent.

use std::path::Path;
use std::process::Command;

use lowmem_testkit::{example_path, lowmem_cli, workspace_root};

const CHROMIUM: &str = "/usr/bin/chromium";

#[test]
fn plan_page_renders_in_chromium() {
    if !Path::new(CHROMIUM).exists() {
        eprintln!("note: {CHROMIUM} is absent; skipping the HTML rendering check");
        return;
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("html-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let page = dir.join("tiny_cnn.html");
    let png = dir.join("tiny_cnn.png");
    let _ = std::fs::remove_file(&png);

    lowmem_cli!()
        .cmd()
        .arg("plan")
        .arg(example_path("tiny_cnn"))
        .args(["--train", "--batch", "4", "--html"])
        .arg(&page)
        .run()
        .assert_ok();

    let shot = Command::new("bash")
        .arg(workspace_root().join("scripts/screenshot.sh"))
        .arg(&page)
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
