//! Start-up and the data directory: a refused start writes nothing; the data directory and every
//! file in it are private to the gateway's user whatever the umask; a data directory that other
//! users can write is refused.

use std::{
    collections::BTreeSet,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Stdio,
};

use crate::support::common::*;

/// An OAuth client and no signing key: the embedded storage generates one into the data
/// directory.
const OAUTH_CLIENT: [&str; 4] = [
    "--oauth-client-id",
    "incode",
    "--oauth-client-secret",
    "client-secret-5e2a",
];

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

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

#[tokio::test]
async fn the_data_directory_and_its_files_are_private_whatever_the_umask() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("var").join("data");
    let start = || {
        GatewayProcess::spawn_command(
            binary_under_umask("022"),
            "127.0.0.1:0",
            &data_dir,
            &OAUTH_CLIENT,
            &[],
        )
    };
    let mut process = start().await;
    let events = data_dir.join("events.redb");
    let key = data_dir.join("token-signing-key");
    assert_eq!(mode_of(&data_dir), 0o700);
    assert_eq!(mode_of(&events), 0o600);
    assert_eq!(mode_of(&key), 0o600);
    assert_eq!(
        names_in(&data_dir),
        BTreeSet::from(["events.redb".to_owned(), "token-signing-key".to_owned()])
    );
    stop(&mut process).await;

    // An event log an earlier version created under the umask is narrowed to 0600.
    set_mode(&events, 0o644);
    let mut process = start().await;
    assert_eq!(mode_of(&events), 0o600);
    stop(&mut process).await;
}

async fn stop(process: &mut GatewayProcess) {
    send_signal(&process.child, "TERM");
    expect_clean_exit(&mut process.child, "TERM").await;
}

#[tokio::test]
async fn a_data_directory_other_users_can_write_is_refused_and_left_alone() {
    for mode in [0o777, 0o770, 0o1777] {
        let dir = tempfile::tempdir().unwrap();
        let data_dir: PathBuf = dir.path().join("data");
        std::fs::create_dir(&data_dir).unwrap();
        set_mode(&data_dir, mode);
        let stderr = refused_start(&data_dir, &OAUTH_CLIENT).await;
        for expected in [
            format!("the data directory {}", data_dir.display()),
            "can be written by other users".to_owned(),
            format!("chmod 700 {}", data_dir.display()),
        ] {
            assert!(stderr.contains(&expected), "{mode:o}: {stderr}");
        }
        assert_eq!(names_in(&data_dir), BTreeSet::new(), "{mode:o}");
        assert_eq!(mode_of(&data_dir), mode, "its mode was changed");
    }

    // Readable, not writable, by the group: the gateway starts (and warns).
    let dir = tempfile::tempdir().unwrap();
    set_mode(dir.path(), 0o750);
    let mut process =
        GatewayProcess::spawn_with(dir.path(), &["--allow-unauthenticated-webhooks"], &[]).await;
    assert_eq!(mode_of(&dir.path().join("events.redb")), 0o600);
    stop(&mut process).await;
}
