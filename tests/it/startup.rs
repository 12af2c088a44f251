//! Start-up and the data directory: a refused start writes nothing.

use std::{
    collections::BTreeSet,
    os::unix::fs::PermissionsExt,
    path::Path,
    process::Stdio,
};

use crate::common::*;

/// An OAuth client and no signing key: the embedded storage generates one into the data
/// directory.
const OAUTH_CLIENT: [&str; 4] = [
    "--oauth-client-id",
    "incode",
    "--oauth-client-secret",
    "client-secret-5e2a",
];

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn names_in(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// Runs `serve` over `data_dir` with `args`, under umask 022, expecting it to refuse to start;
/// returns what it wrote to standard error.
async fn refused_start(data_dir: &Path, args: &[&str]) -> String {
    let mut command = binary_under_umask("022");
    command.args(["serve", "--public-addr", "127.0.0.1:0"]);
    if !args.contains(&"--internal-addr") {
        command.args(["--internal-addr", "127.0.0.1:0"]);
    }
    let output = command
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .stdin(Stdio::null())
        .output();
    let output = tokio::time::timeout(PATIENCE, output)
        .await
        .expect("the gateway neither started nor refused")
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "it started: {stderr}");
    stderr
}

#[tokio::test]
async fn a_refused_start_leaves_the_data_directory_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    // Each of these is refused by a check that comes after the signing key is resolved: a key
    // generated for the data directory must not be written for a start that does not happen.
    let refusals: [(&[&str], &str); 2] = [
        (&["--internal-addr", "0.0.0.0:0"], "not a loopback address"),
        (
            &["--webhook-header", "Authorization=Bearer 0123456789abcdef"],
            "cannot be required while OAuth clients are configured",
        ),
    ];
    for (args, expected) in refusals {
        let args: Vec<&str> = OAUTH_CLIENT.iter().chain(args).copied().collect();
        let stderr = refused_start(&data_dir, &args).await;
        assert!(stderr.contains(expected), "{stderr}");
        assert!(
            !data_dir.exists(),
            "{args:?} created {}",
            data_dir.display()
        );
    }

    // An existing empty directory stays empty.
    std::fs::create_dir(&data_dir).unwrap();
    set_mode(&data_dir, 0o700);
    let args: Vec<&str> = OAUTH_CLIENT
        .iter()
        .chain(&["--internal-addr", "0.0.0.0:0"])
        .copied()
        .collect();
    refused_start(&data_dir, &args).await;
    assert_eq!(names_in(&data_dir), BTreeSet::new());
}
