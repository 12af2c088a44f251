//! One configuration, three places that must agree: the flags (`serve --help`), the config file
//! (`incode-gateway.example.toml` lists every key), and the reference in
//! `docs/configuration.md`, which is generated from the flags: run with
//! `INCODE_GATEWAY_UPDATE_DOCS=1` to rewrite it after changing a flag.

use std::{collections::BTreeSet, path::Path, process::Stdio};

use clap::CommandFactory;
use incode_gateway::config::{
    Cli,
    file::ConfigFile,
    keys::{FILE_KEYS, STRUCTURED_KEYS, path_of},
};

use crate::support::common::PATIENCE;

const START: &str =
    "<!-- reference:start (generated from the flags by tests/it/configuration.rs) -->";
const END: &str = "<!-- reference:end -->";

fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn serve() -> clap::Command {
    let command = Cli::command();
    command.find_subcommand("serve").unwrap().clone()
}

/// Every key the example names, active or commented out (`# key = …`), with its section.
fn example_keys(text: &str) -> BTreeSet<String> {
    let mut section = String::new();
    let mut keys = BTreeSet::new();
    for line in text.lines() {
        let line = line.trim();
        let uncommented = line.trim_start_matches('#').trim();
        if let Some(name) = uncommented
            .split(" #")
            .next()
            .unwrap_or_default()
            .trim()
            .strip_prefix("[[")
            .and_then(|rest| rest.strip_suffix("]]"))
        {
            keys.insert(name.to_owned());
            continue;
        }
        let without_comment = line.split(" #").next().unwrap_or_default().trim();
        if let Some(name) = without_comment
            .strip_prefix('[')
            .and_then(|rest| rest.strip_suffix(']'))
        {
            section = name.to_owned();
            continue;
        }
        let Some((key, _)) = uncommented.split_once('=') else {
            continue;
        };
        let key = key.trim();
        if key.is_empty()
            || !key
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            continue;
        }
        keys.insert(if section.is_empty() {
            key.to_owned()
        } else {
            format!("{section}.{key}")
        });
    }
    keys
}

#[test]
fn the_example_file_is_valid_and_lists_every_setting() {
    let text = std::fs::read_to_string(repo("incode-gateway.example.toml")).unwrap();
    let file = ConfigFile::parse(&text)
        .unwrap_or_else(|(line, column, message)| panic!("{line}:{column}: {message}"));
    assert!(file.sets_flags());
    let listed = example_keys(&text);
    for key in FILE_KEYS {
        assert!(
            listed.contains(key.path),
            "the example does not list `{}`",
            key.path
        );
    }
    for key in STRUCTURED_KEYS {
        assert!(
            listed.contains(*key),
            "the example does not show `[[{key}]]`"
        );
    }
    // Commented-out settings are valid too, once uncommented.
    let uncommented: String = text
        .lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(rest) if rest.starts_with("[[") => rest,
            Some(rest) if rest.contains(" = ") && !rest.starts_with(' ') => rest,
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n");
    ConfigFile::parse(&uncommented).unwrap_or_else(|(line, column, message)| {
        panic!("uncommented, {line}:{column}: {message}")
    });
}

/// The help's first paragraph of an argument, on one line.
fn summary(arg: &clap::Arg) -> String {
    let help = arg
        .get_long_help()
        .or_else(|| arg.get_help())
        .map(ToString::to_string)
        .unwrap_or_default();
    let first = help.split("\n\n").next().unwrap_or_default();
    first
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

/// The reference table, from the flags.
fn reference() -> String {
    let command = serve();
    let mut table = String::from(
        "| flag | environment | file key | default | meaning |\n| --- | --- | --- | --- | --- |\n",
    );
    let mut args: Vec<&clap::Arg> = command
        .get_arguments()
        .filter(|arg| arg.get_long().is_some_and(|long| long != "help"))
        .collect();
    // In the order of the file keys; `--config` first.
    let position = |arg: &clap::Arg| {
        let long = arg.get_long().unwrap_or_default();
        FILE_KEYS
            .iter()
            .position(|key| key.flag == long)
            .map_or(0, |index| index + 1)
    };
    args.sort_by_key(|arg| position(arg));
    for arg in args {
        let long = arg.get_long().unwrap_or_default();
        let env = arg
            .get_env()
            .map(|name| format!("`{}`", name.to_string_lossy()))
            .unwrap_or_default();
        let key = path_of(long)
            .map(|path| format!("`{path}`"))
            .unwrap_or_else(|| "—".to_owned());
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|value| value.to_string_lossy().into_owned())
            .collect();
        let default = if defaults.is_empty() {
            "none".to_owned()
        } else {
            format!("`{}`", defaults.join(","))
        };
        table.push_str(&format!(
            "| `--{long}` | {env} | {key} | {default} | {} |\n",
            summary(arg)
        ));
    }
    table
}

#[test]
fn the_configuration_reference_is_generated_from_the_flags() {
    let path = repo("docs/configuration.md");
    let text = std::fs::read_to_string(&path).unwrap();
    let (before, rest) = text
        .split_once(START)
        .unwrap_or_else(|| panic!("docs/configuration.md has no `{START}` line"));
    let (current, after) = rest.split_once(END).expect("no end marker");
    let generated = format!("\n\n{}\n", reference());
    if current == generated {
        return;
    }
    if std::env::var_os("INCODE_GATEWAY_UPDATE_DOCS").is_some() {
        std::fs::write(&path, format!("{before}{START}{generated}{END}{after}")).unwrap();
        return;
    }
    panic!(
        "docs/configuration.md does not match the flags; rerun with INCODE_GATEWAY_UPDATE_DOCS=1 \
         to regenerate it. It should read:\n{generated}"
    );
}

#[tokio::test]
async fn the_environment_wins_over_the_file_and_the_file_over_the_defaults() {
    use tokio::io::AsyncBufReadExt;

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.toml");
    // The file asks for a public address the environment overrides, and sets the internal one
    // (nothing else does), both on ephemeral ports, and JSON logs.
    std::fs::write(
        &file,
        "log_format = \"json\"\n\
         [public]\naddr = \"127.0.0.2:1\"\n\
         [internal]\naddr = \"127.0.0.1:0\"\n\
         [webhooks]\nallow_unauthenticated = true\n",
    )
    .unwrap();
    let mut child = crate::support::common::binary_async()
        .arg("--config")
        .arg(&file)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("INCODE_GATEWAY_PUBLIC_ADDR", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let listening = tokio::time::timeout(PATIENCE, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            // Only JSON lines: the file's log format applies.
            let record: serde_json::Value = serde_json::from_str(&line)
                .unwrap_or_else(|_| panic!("not a JSON log line: {line}"));
            if record["message"] == "incode-gateway listening" {
                return record;
            }
        }
        panic!("the gateway exited before listening");
    })
    .await
    .expect("the gateway did not start");
    let public = listening["public"].as_str().unwrap();
    assert!(
        public.starts_with("127.0.0.1:"),
        "the environment wins: {public}"
    );
    let internal = listening["internal"].as_str().unwrap();
    assert!(
        internal.starts_with("127.0.0.1:"),
        "from the file: {internal}"
    );
    child.start_kill().unwrap();
}

/// A value of the file that its flag refuses stops the start with the file, the key, its line
/// and column, and the reason, but never the value: it may be a secret put under the wrong key.
#[test]
fn a_refused_value_of_the_file_is_named_by_its_key_and_line_never_shown() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    let secret = "hunter2-5f0c9a";
    for (text, at, reason) in [
        (
            format!("[public]\nmax_connections = 10\nidle_timeout = \"{secret}\"\n"),
            "line 3, column 1",
            "`public.idle_timeout` (--idle-timeout)",
        ),
        (
            format!("log_format = \"{secret}\"\n"),
            "line 1, column 1",
            "`log_format` (--log-format): must be one of `text`, `json`",
        ),
        (
            format!("[storage]\nbackend = \"memory\"\n\n[nats]\n  replicas = \"{secret}\"\n"),
            "line 5, column 3",
            "`nats.replicas` (--nats-replicas)",
        ),
        (
            "[public]\ntrusted_proxies = [\"10.0.0.0/8\", \"10.0.0.0/33\"]\n".to_owned(),
            "line 2, column 1",
            "`public.trusted_proxies` (--trusted-proxies)",
        ),
    ] {
        std::fs::write(&path, &text).unwrap();
        let output = crate::support::common::binary()
            .arg("--config")
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{text}: {stderr}");
        for expected in [path.to_str().unwrap(), at, reason] {
            assert!(stderr.contains(expected), "{expected:?} in {stderr}");
        }
        assert!(!stderr.contains(secret), "{stderr}");
        assert!(!stderr.contains("10.0.0.0/33"), "{stderr}");
    }
}
