//! infra/ and localstack/ cannot run here (no Docker, no cluster); keep them valid.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[test]
fn infra_manifests_parse_and_agree_with_the_binary() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let out = std::process::Command::new("python3")
        .arg(format!("{root}/tests/check_infra.py"))
        .arg(env!("CARGO_BIN_EXE_floe"))
        .arg(root)
        .output()
        .expect("python3 with PyYAML (tests/setup.sh installs it)");
    assert!(
        out.status.success(),
        "infra check failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
