//! The docs run as tests: every ```` ```sh ```` block of the README and `docs/`, in order, as a new
//! user would paste it, against the gateway the README's own run command starts. How it works and
//! the markers a block may carry are in docs/development.md ("The docs run as tests"); in short:
//!
//! - one test per page; each runs in a fresh copy of the repository (a fresh clone), in one shell
//!   session that carries variables and the working directory from block to block, the README's
//!   blocks first, then the page's;
//! - the block marked `gateway` starts the binary under test with the block's variables and
//!   arguments, on ephemeral ports; `localhost:8080` and `localhost:50051` (or `127.0.0.1:…`) in
//!   every block are rewritten to the addresses it got, and the tools' defaults point there too;
//! - `skip: REASON`, `interrupt after 3s` and `expect TEXT` markers, as HTML comments on the lines
//!   before a block.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt};

use crate::support::common::*;

/// The addresses the docs use, which the runner rewrites.
const DOCS_PUBLIC_PORT: &str = "8080";
const DOCS_INTERNAL_PORT: &str = "50051";
const DOCS_HOSTS: [&str; 2] = ["localhost", "127.0.0.1"];
/// How long a block may run.
const BLOCK_TIMEOUT: Duration = Duration::from_secs(300);
/// How long an interrupted block may take to stop.
const INTERRUPT_GRACE: Duration = Duration::from_secs(20);

/// How a marker asks a block to be run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Directive {
    /// Not run, for this reason.
    Skip(String),
    /// The block starts (or restarts) the gateway.
    Gateway,
    /// The block streams until Ctrl-C, sent after this long.
    Interrupt(Duration),
    /// The block's output must contain this text.
    Expect(String),
}

/// A shell block of a Markdown file.
#[derive(Debug, Clone)]
pub struct Block {
    /// The file, relative to the repository root.
    pub file: String,
    /// The line of its opening fence, from 1.
    pub line: usize,
    pub text: String,
    pub directives: Vec<Directive>,
}

impl Block {
    fn skip_reason(&self) -> Option<&str> {
        self.directives
            .iter()
            .find_map(|directive| match directive {
                Directive::Skip(reason) => Some(reason.as_str()),
                _ => None,
            })
    }

    fn starts_gateway(&self) -> bool {
        self.directives.contains(&Directive::Gateway)
    }

    fn interrupt(&self) -> Option<Duration> {
        self.directives
            .iter()
            .find_map(|directive| match directive {
                Directive::Interrupt(after) => Some(*after),
                _ => None,
            })
    }

    fn expected(&self) -> impl Iterator<Item = &str> {
        self.directives
            .iter()
            .filter_map(|directive| match directive {
                Directive::Expect(text) => Some(text.as_str()),
                _ => None,
            })
    }

    pub fn location(&self) -> String {
        format!("{}:{}", self.file, self.line)
    }
}

pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The README and every page of `docs/`, relative to the repository root, README first.
pub fn doc_files() -> Vec<String> {
    let mut pages: Vec<String> = std::fs::read_dir(repo_root().join("docs"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".md"))
        .map(|name| format!("docs/{name}"))
        .collect();
    pages.sort();
    pages.insert(0, "README.md".to_owned());
    pages
}

fn parse_directive(text: &str) -> Result<Directive, String> {
    if let Some(reason) = text.strip_prefix("skip:") {
        let reason = reason.trim();
        return if reason.is_empty() {
            Err("a skip marker needs its reason".to_owned())
        } else {
            Ok(Directive::Skip(reason.to_owned()))
        };
    }
    if text == "gateway" {
        return Ok(Directive::Gateway);
    }
    if let Some(after) = text.strip_prefix("interrupt after ") {
        let seconds = after
            .strip_suffix('s')
            .and_then(|seconds| seconds.parse::<u64>().ok())
            .ok_or_else(|| format!("`{text}`: the delay is whole seconds, like `3s`"))?;
        return Ok(Directive::Interrupt(Duration::from_secs(seconds)));
    }
    if let Some(expected) = text.strip_prefix("expect ") {
        return Ok(Directive::Expect(expected.to_owned()));
    }
    Err(format!("unknown docs-run marker `{text}`"))
}

/// The shell blocks of a Markdown text, with their markers. Fails on a marker that is not right
/// before a ```` ```sh ```` block, on an unknown marker, and on shell blocks under another fence
/// (`bash`, `shell`, `console`), which would escape the runner.
pub fn parse_blocks(file: &str, markdown: &str) -> Result<Vec<Block>, String> {
    let mut blocks = Vec::new();
    let mut pending: Vec<Directive> = Vec::new();
    let mut lines = markdown.lines().enumerate();
    while let Some((index, line)) = lines.next() {
        let trimmed = line.trim();
        let at = format!("{file}:{}", index + 1);
        if let Some(marker) = trimmed
            .strip_prefix("<!-- docs-run:")
            .and_then(|rest| rest.strip_suffix("-->"))
        {
            pending.push(parse_directive(marker.trim()).map_err(|error| format!("{at}: {error}"))?);
            continue;
        }
        let Some(language) = trimmed.strip_prefix("```") else {
            if !pending.is_empty() {
                return Err(format!(
                    "{at}: a docs-run marker must be right before a ```sh block"
                ));
            }
            continue;
        };
        let language = language.trim();
        if matches!(language, "bash" | "shell" | "console" | "zsh") {
            return Err(format!(
                "{at}: a ```{language} block; write shell examples as ```sh, which the docs runner runs"
            ));
        }
        if language != "sh" && !pending.is_empty() {
            return Err(format!(
                "{at}: a docs-run marker before a ```{language} block, which is not run"
            ));
        }
        let indent = line.len() - line.trim_start().len();
        let mut text = String::new();
        let mut closed = false;
        for (_, line) in lines.by_ref() {
            if line.trim() == "```" {
                closed = true;
                break;
            }
            text.push_str(line.get(indent..).unwrap_or(line.trim_start()));
            text.push('\n');
        }
        if !closed {
            return Err(format!("{at}: the block is never closed"));
        }
        if language == "sh" {
            blocks.push(Block {
                file: file.to_owned(),
                line: index + 1,
                text,
                directives: std::mem::take(&mut pending),
            });
        }
    }
    if !pending.is_empty() {
        return Err(format!(
            "{file}: a docs-run marker at the end, before no block"
        ));
    }
    Ok(blocks)
}

pub fn blocks_of(file: &str) -> Vec<Block> {
    let text = std::fs::read_to_string(repo_root().join(file)).unwrap();
    parse_blocks(file, &text).unwrap_or_else(|error| panic!("{error}"))
}

/// A block's command lines: continuation lines joined, comments (` #…`) dropped.
pub fn command_lines(text: &str) -> Vec<String> {
    let mut commands = Vec::new();
    let mut pending = String::new();
    for line in text.lines() {
        let line = match line.find(" #") {
            Some(at) if !line.trim_start().starts_with('#') => &line[..at],
            _ if line.trim_start().starts_with('#') => "",
            _ => line,
        }
        .trim_end();
        if let Some(continued) = line.strip_suffix('\\') {
            pending.push_str(continued);
            pending.push(' ');
            continue;
        }
        pending.push_str(line);
        let command = std::mem::take(&mut pending);
        if !command.trim().is_empty() {
            commands.push(command);
        }
    }
    commands
}

/// What a `gateway` block asks for: its variables and the arguments of `serve`.
#[derive(Debug)]
struct GatewayCommand {
    env: Vec<(String, String)>,
    args: Vec<String>,
}

fn gateway_command(block: &Block) -> GatewayCommand {
    let commands = command_lines(&block.text);
    let [command] = &commands[..] else {
        panic!(
            "{}: a gateway block is one command, not {commands:?}",
            block.location()
        );
    };
    assert!(
        !command.contains(['\'', '"', '$', '`']),
        "{}: the runner reads a gateway block's words without a shell: no quotes or expansions",
        block.location()
    );
    let mut env = Vec::new();
    let mut words = command.split_whitespace().peekable();
    while let Some((name, value)) = words.peek().and_then(|word| word.split_once('=')) {
        env.push((name.to_owned(), value.to_owned()));
        words.next();
    }
    let words: Vec<&str> = words.collect();
    let args: Vec<&str> = match words[..] {
        ["cargo", "run", ref rest @ ..] => {
            let rest: Vec<&str> = rest.iter().copied().filter(|w| *w != "--release").collect();
            match rest.split_first() {
                None => Vec::new(),
                Some((&"--", args)) => args.to_vec(),
                Some(_) => panic!("{}: unexpected cargo arguments", block.location()),
            }
        }
        ["incode-gateway", "serve", ref rest @ ..] | ["incode-gateway", ref rest @ ..] => {
            rest.to_vec()
        }
        _ => panic!(
            "{}: a gateway block runs `cargo run` or `incode-gateway [serve]`",
            block.location()
        ),
    };
    let args = if args.first() == Some(&"serve") {
        &args[1..]
    } else {
        &args[..]
    };
    // The runner chooses the addresses, and reads the JSON log for them.
    let mut kept = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let flag = arg.split('=').next().unwrap_or(arg);
        if matches!(flag, "--public-addr" | "--internal-addr" | "--log-format") {
            if !arg.contains('=') {
                args.next();
            }
            continue;
        }
        kept.push((*arg).to_owned());
    }
    GatewayCommand { env, args: kept }
}

/// The gateway a page's blocks talk to.
struct RunningGateway {
    child: tokio::process::Child,
    public: SocketAddr,
    internal: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl RunningGateway {
    async fn start(command: &GatewayCommand, cwd: &Path, at: &str) -> Result<Self, String> {
        let mut child = binary_async()
            .arg("serve")
            .args(&command.args)
            .args([
                "--public-addr",
                "127.0.0.1:0",
                "--internal-addr",
                "127.0.0.1:0",
            ])
            .args(["--log-format", "json"])
            .env("RUST_LOG", "info")
            .envs(command.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|error| format!("{at}: the gateway did not start: {error}"))?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut stderr = child.stderr.take().unwrap();
        let stderr_log = log.clone();
        tokio::spawn(async move {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text).await;
            stderr_log
                .lock()
                .unwrap()
                .extend(text.lines().map(str::to_owned));
        });
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let listening = tokio::time::timeout(PATIENCE, async {
            while let Ok(Some(line)) = lines.next_line().await {
                log.lock().unwrap().push(line.clone());
                let Ok(record) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if record["message"] == "incode-gateway listening" {
                    return Some(record);
                }
            }
            None
        })
        .await;
        let Ok(Some(listening)) = listening else {
            let _ = child.kill().await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            return Err(format!(
                "{at}: the gateway did not start listening; its output:\n{}",
                log.lock().unwrap().join("\n")
            ));
        };
        let collected = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                collected.lock().unwrap().push(line);
            }
        });
        let address = |name: &str| listening[name].as_str().unwrap().parse().unwrap();
        Ok(Self {
            public: address("public"),
            internal: address("internal"),
            child,
            log,
        })
    }

    /// Stops it as Ctrl-C would, so that the next one can open the same data directory.
    async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-INT", &pid.to_string()])
                .status();
        }
        if tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }

    fn last_log_lines(&self) -> String {
        let log = self.log.lock().unwrap();
        log[log.len().saturating_sub(20)..].join("\n")
    }
}

/// Replaces the docs' fixed addresses with the running gateway's.
fn rewrite_addresses(text: &str, gateway: Option<&RunningGateway>) -> String {
    let mut text = text.to_owned();
    if let Some(gateway) = gateway {
        for host in DOCS_HOSTS {
            text = text.replace(
                &format!("{host}:{DOCS_PUBLIC_PORT}"),
                &gateway.public.to_string(),
            );
            text = text.replace(
                &format!("{host}:{DOCS_INTERNAL_PORT}"),
                &gateway.internal.to_string(),
            );
        }
    }
    text
}

/// Names a fixed port still in a block, if any.
fn fixed_port(text: &str) -> Option<&'static str> {
    [DOCS_PUBLIC_PORT, DOCS_INTERNAL_PORT]
        .into_iter()
        .find(|port| text.contains(&format!(":{port}")))
}

/// Saves the shell's variables and directory for the next block. Variables of bash itself, and
/// those the runner sets for each gateway, are left out.
const SAVE_STATE: &str = r#"__docs_save() {
    pwd > "$__docs_state/cwd"
    local __docs_name __docs_declared __docs_flags
    for __docs_name in $(compgen -v); do
        case $__docs_name in
            __docs_*|BASH*|SHELLOPTS|PPID|UID|EUID|RANDOM|SRANDOM|SECONDS|LINENO|EPOCHREALTIME|\
            EPOCHSECONDS|PIPESTATUS|FUNCNAME|GROUPS|DIRSTACK|HISTCMD|_|OLDPWD|PWD|SHLVL|OPTIND|\
            OPTERR|COLUMNS|LINES|IFS|PS4|HOSTNAME|HOSTTYPE|MACHTYPE|OSTYPE|\
            INCODE_GATEWAY_TAIL_ADDR|INCODE_GATEWAY_SIMULATE_URL) continue ;;
        esac
        __docs_declared=$(declare -p "$__docs_name" 2>/dev/null) || continue
        __docs_flags=${__docs_declared#declare -}
        __docs_flags=${__docs_flags%% *}
        [[ $__docs_flags == *r* ]] && continue
        printf '%s\n' "$__docs_declared"
    done > "$__docs_state/vars.new"
    mv "$__docs_state/vars.new" "$__docs_state/vars"
}
"#;

/// What a block did.
struct Outcome {
    /// `None` when it had to be killed.
    status: Option<std::process::ExitStatus>,
    output: String,
    interrupted: bool,
    timed_out: bool,
}

/// One page's run: a copy of the repository, a shell session, the gateway.
struct Session {
    copy: tempfile::TempDir,
    state: tempfile::TempDir,
    gateway: Option<RunningGateway>,
    blocks_run: usize,
}

impl Session {
    fn new() -> Self {
        let copy = tempfile::tempdir().unwrap();
        copy_repository(copy.path());
        let state = tempfile::tempdir().unwrap();
        std::fs::write(state.path().join("cwd"), copy.path().to_str().unwrap()).unwrap();
        std::fs::write(state.path().join("vars"), "").unwrap();
        Self {
            copy,
            state,
            gateway: None,
            blocks_run: 0,
        }
    }

    fn cwd(&self) -> PathBuf {
        let cwd = std::fs::read_to_string(self.state.path().join("cwd")).unwrap();
        PathBuf::from(cwd.trim_end())
    }

    async fn run(&mut self, block: &Block) -> Result<(), String> {
        if block.skip_reason().is_some() {
            return Ok(());
        }
        if block.starts_gateway() {
            let command = gateway_command(block);
            if let Some(previous) = self.gateway.take() {
                previous.stop().await;
            }
            self.gateway =
                Some(RunningGateway::start(&command, &self.cwd(), &block.location()).await?);
            self.blocks_run += 1;
            return Ok(());
        }
        let script = rewrite_addresses(&block.text, self.gateway.as_ref());
        if let Some(port) = fixed_port(&script) {
            return Err(self.report(
                block,
                &script,
                &format!(
                    "port {port} is still in the block: either no gateway runs yet, or the \
                     address is not one the runner rewrites ({})",
                    DOCS_HOSTS.join(", ")
                ),
                "",
            ));
        }
        let outcome = self.execute(block, &script).await;
        self.blocks_run += 1;
        if std::env::var_os("DOCS_RUN_VERBOSE").is_some() {
            eprintln!(
                "=== {} ({:?})\n{script}--- output:\n{}",
                block.location(),
                outcome.status,
                outcome.output
            );
        }
        let failure = if outcome.timed_out {
            Some(format!("it did not finish within {BLOCK_TIMEOUT:?}"))
        } else if block.interrupt().is_some() {
            match outcome.status {
                None => Some("it did not stop after Ctrl-C".to_owned()),
                Some(status) if !outcome.interrupted && !status.success() => {
                    Some(format!("it failed before Ctrl-C ({status})"))
                }
                Some(_) => None,
            }
        } else {
            match outcome.status {
                Some(status) if status.success() => None,
                Some(status) => Some(format!("it failed ({status})")),
                None => Some("it was killed".to_owned()),
            }
        };
        let failure = failure.or_else(|| {
            let missing: Vec<&str> = block
                .expected()
                .filter(|text| !outcome.output.contains(text))
                .collect();
            (!missing.is_empty()).then(|| format!("its output lacks {missing:?}"))
        });
        match failure {
            Some(failure) => Err(self.report(block, &script, &failure, &outcome.output)),
            None => Ok(()),
        }
    }

    /// Runs a block in its own process group, with the session's state around it.
    async fn execute(&self, block: &Block, script: &str) -> Outcome {
        let state = self.state.path();
        let path = state.join(format!("block-{}.sh", block.line));
        let mut text = String::new();
        writeln!(text, "exec 2>&1").unwrap();
        writeln!(text, "__docs_state='{}'", state.display()).unwrap();
        text.push_str(SAVE_STATE);
        writeln!(text, "source \"$__docs_state/vars\"").unwrap();
        writeln!(text, "cd \"$(cat \"$__docs_state/cwd\")\"").unwrap();
        if let Some(gateway) = &self.gateway {
            writeln!(
                text,
                "export INCODE_GATEWAY_TAIL_ADDR=http://{} INCODE_GATEWAY_SIMULATE_URL=http://{}",
                gateway.internal, gateway.public
            )
            .unwrap();
        }
        writeln!(text, "trap __docs_save EXIT").unwrap();
        writeln!(text, "set -e -o pipefail").unwrap();
        text.push_str(script);
        std::fs::write(&path, text).unwrap();

        let binary_dir = Path::new(env!("CARGO_BIN_EXE_incode-gateway"))
            .parent()
            .unwrap();
        let path_variable = std::env::join_paths(std::iter::once(binary_dir.to_owned()).chain(
            std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
        ))
        .unwrap();
        let mut command = tokio::process::Command::new("bash");
        command
            .args(["--noprofile", "--norc"])
            .arg(&path)
            .current_dir(self.copy.path())
            .env("PATH", path_variable)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(true);
        for (name, _) in std::env::vars_os() {
            let text = name.to_string_lossy();
            if text.starts_with("INCODE_GATEWAY_") || text.starts_with("OTEL_") {
                command.env_remove(&name);
            }
        }
        let mut child = command.spawn().expect("bash runs");
        let group = child.id().expect("running").to_string();
        let output = Arc::new(Mutex::new(Vec::new()));
        let mut stdout = child.stdout.take().unwrap();
        let collected = output.clone();
        let reader = tokio::spawn(async move {
            let mut buffer = [0u8; 8192];
            while let Ok(read) = stdout.read(&mut buffer).await {
                if read == 0 {
                    break;
                }
                collected.lock().unwrap().extend_from_slice(&buffer[..read]);
            }
        });
        let signal = |name: &str| {
            let _ = std::process::Command::new("kill")
                .args([name, "--", &format!("-{group}")])
                .stderr(Stdio::null())
                .status();
        };
        let mut interrupted = false;
        let mut timed_out = false;
        let status = match block.interrupt() {
            Some(after) => match tokio::time::timeout(
                after,
                exit_or_expected_output(&mut child, &output, block),
            )
            .await
            {
                Ok(Some(status)) => status.ok(),
                Ok(None) | Err(_) => {
                    interrupted = true;
                    signal("-INT");
                    tokio::time::timeout(INTERRUPT_GRACE, child.wait())
                        .await
                        .ok()
                        .and_then(Result::ok)
                }
            },
            None => match tokio::time::timeout(BLOCK_TIMEOUT, child.wait()).await {
                Ok(status) => status.ok(),
                Err(_) => {
                    timed_out = true;
                    None
                }
            },
        };
        // Nothing a block started outlives it.
        signal("-KILL");
        let _ = child.wait().await;
        let _ = tokio::time::timeout(PATIENCE, reader).await;
        let output = String::from_utf8_lossy(&output.lock().unwrap()).into_owned();
        Outcome {
            status,
            output,
            interrupted,
            timed_out,
        }
    }

    fn report(&self, block: &Block, script: &str, failure: &str, output: &str) -> String {
        let mut report = format!(
            "{}: the block failed: {failure}\n--- the block, as written:\n{}",
            block.location(),
            block.text
        );
        if script != block.text {
            write!(report, "--- as run (addresses rewritten):\n{script}").unwrap();
        }
        let tail = output
            .char_indices()
            .nth_back(8000)
            .map_or(output, |(at, _)| &output[at..]);
        write!(report, "--- its output:\n{tail}\n").unwrap();
        if let Some(gateway) = &self.gateway {
            write!(
                report,
                "--- the gateway's last log lines:\n{}\n",
                gateway.last_log_lines()
            )
            .unwrap();
        }
        report
    }

    async fn finish(mut self) {
        if let Some(gateway) = self.gateway.take() {
            gateway.stop().await;
        }
    }
}

/// Waits until the block exits (`Some`), or until its output holds every text it expects
/// (`None`), so that a streaming block is interrupted as soon as it has shown what it should; a
/// block that expects nothing runs until its interrupt.
async fn exit_or_expected_output(
    child: &mut tokio::process::Child,
    output: &Mutex<Vec<u8>>,
    block: &Block,
) -> Option<std::io::Result<std::process::ExitStatus>> {
    let expected: Vec<&str> = block.expected().collect();
    let shown = async {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let output = String::from_utf8_lossy(&output.lock().unwrap()).into_owned();
            if !expected.is_empty() && expected.iter().all(|text| output.contains(text)) {
                return;
            }
        }
    };
    tokio::select! {
        status = child.wait() => Some(status),
        () = shown => None,
    }
}

/// Copies the repository's files (tracked, and new ones git does not ignore) to `to`: what a
/// fresh clone has.
fn copy_repository(to: &Path) {
    let root = repo_root();
    let listed = std::process::Command::new("git")
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ])
        .current_dir(root)
        .output()
        .expect("git lists the repository's files");
    assert!(listed.status.success(), "git ls-files: {listed:?}");
    for name in listed.stdout.split(|byte| *byte == 0) {
        if name.is_empty() {
            continue;
        }
        let name = Path::new(std::str::from_utf8(name).unwrap());
        let source = root.join(name);
        if !source.is_file() {
            continue; // deleted in the working tree
        }
        let target = to.join(name);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(&source, &target).unwrap();
    }
}

/// Runs the README's blocks, then `page`'s (when it is not the README), and fails with every
/// block that failed.
async fn run_page(page: &str) {
    let mut blocks = blocks_of("README.md");
    if page != "README.md" {
        let own = blocks_of(page);
        if own.iter().all(|block| block.skip_reason().is_some()) {
            return; // nothing of its own to run
        }
        blocks.extend(own);
    }
    let mut session = Session::new();
    let mut result = Ok(());
    for block in &blocks {
        result = session.run(block).await;
        if result.is_err() {
            break;
        }
    }
    let ran = session.blocks_run;
    session.finish().await;
    if let Err(report) = result {
        panic!("{report}");
    }
    let own = blocks
        .iter()
        .filter(|block| block.file == page && block.skip_reason().is_none())
        .count();
    eprintln!("{page}: {ran} blocks run ({own} of the page's own)");
}

#[test]
fn every_marker_is_valid() {
    let mut skipped = BTreeMap::new();
    for file in doc_files() {
        for block in blocks_of(&file) {
            if let Some(reason) = block.skip_reason() {
                skipped.insert(block.location(), reason.to_owned());
            }
        }
    }
    eprintln!("skipped blocks, with their reasons: {skipped:#?}");
}

#[test]
fn the_block_parser_reads_markers_and_refuses_stray_ones() {
    let markdown = "text\n\n<!-- docs-run: interrupt after 3s -->\n<!-- docs-run: expect a b -->\n\
                    ```sh\necho 1 \\\n  2 # comment\n```\n\n  ```sh\n  cd x\n  ```\n";
    let blocks = parse_blocks("x.md", markdown).unwrap();
    assert_eq!(blocks.len(), 2);
    assert_eq!(blocks[0].line, 5);
    assert_eq!(
        blocks[0].directives,
        [
            Directive::Interrupt(Duration::from_secs(3)),
            Directive::Expect("a b".to_owned())
        ]
    );
    assert_eq!(command_lines(&blocks[0].text), ["echo 1    2"]);
    assert_eq!(blocks[1].text, "cd x\n");
    for bad in [
        "<!-- docs-run: skip: -->\n```sh\nx\n```\n",
        "<!-- docs-run: later -->\n```sh\nx\n```\n",
        "<!-- docs-run: gateway -->\ntext\n```sh\nx\n```\n",
        "<!-- docs-run: gateway -->\n```toml\nx\n```\n",
        "```bash\nx\n```\n",
        "```sh\nx\n",
    ] {
        assert!(parse_blocks("x.md", bad).is_err(), "{bad}");
    }
}

#[test]
fn addresses_are_rewritten_and_fixed_ports_are_caught() {
    assert_eq!(fixed_port("curl http://localhost:8080/x"), Some("8080"));
    assert_eq!(fixed_port("--internal-addr 0.0.0.0:50051"), Some("50051"));
    assert_eq!(fixed_port("curl http://127.0.0.1:41234/x"), None);
    let block = Block {
        file: "x.md".to_owned(),
        line: 1,
        text: "INCODE_GATEWAY_OAUTH_CLIENT_ID=demo cargo run --release -- --public-addr \
               0.0.0.0:8080 --retention 1h\n"
            .to_owned(),
        directives: vec![Directive::Gateway],
    };
    let command = gateway_command(&block);
    assert_eq!(
        command.env,
        [(
            "INCODE_GATEWAY_OAUTH_CLIENT_ID".to_owned(),
            "demo".to_owned()
        )]
    );
    assert_eq!(command.args, ["--retention", "1h"]);
}

macro_rules! page_tests {
    ($($name:ident => $page:literal,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                run_page($page).await;
            }
        )*
        #[test]
        fn every_page_has_a_docs_run_test() {
            assert_eq!(doc_files(), [$($page),*], "add a test below for each new page");
        }
    };
}

page_tests! {
    readme_runs => "README.md",
    architecture_runs => "docs/architecture.md",
    auth_runs => "docs/auth.md",
    benchmarks_runs => "docs/benchmarks.md",
    clients_runs => "docs/clients.md",
    configuration_runs => "docs/configuration.md",
    consumer_groups_runs => "docs/consumer-groups.md",
    development_runs => "docs/development.md",
    http_api_runs => "docs/http-api.md",
    internal_listener_runs => "docs/internal-listener.md",
    observability_runs => "docs/observability.md",
    operations_runs => "docs/operations.md",
    scale_out_runs => "docs/scale-out.md",
    security_runs => "docs/security.md",
    subscribing_runs => "docs/subscribing.md",
    tools_runs => "docs/tools.md",
}
