//! Checks on what the docs name, beside running their examples (`docs_run`): every
//! `incode-gateway` command and flag exists, every script exists, and every relative link
//! leads to a file and, with `#anchor`, to one of its headings.

use std::collections::{BTreeMap, BTreeSet};

use clap::CommandFactory;

use crate::docs_run::{blocks_of, command_lines, doc_files, repo_root};

/// Flags of other programs that the docs name on their own, in prose or tables, and whose.
const OTHER_PROGRAMS_FLAGS: &[(&str, &[&str])] = &[
    (
        "the benchmarks (`cargo bench --bench gateway -- …`)",
        &["--only", "--json", "--perf"],
    ),
    (
        "the example subscribers (examples/python, examples/typescript)",
        &["--after"],
    ),
    (
        "cargo, buf and npm, when the command is elsewhere in the sentence",
        &[
            "--locked",
            "--path",
            "--test",
            "--bench",
            "--template",
            "--prefix",
            "--protocol",
            "--cacert",
            "--reflect-header",
        ],
    ),
];

/// Commands whose words are not `incode-gateway`'s.
const OTHER_COMMANDS: &[&str] = &[
    "cargo", "buf", "npm", "npx", "pip", "python3", "apt-get", "grpcurl", "curl", "openssl",
    "node", "docker", "kill",
];

/// The long flags of each subcommand of the binary.
fn subcommand_flags() -> BTreeMap<String, BTreeSet<String>> {
    let command = incode_gateway::config::Cli::command();
    let mut flags = BTreeMap::new();
    for subcommand in command.get_subcommands() {
        let names = subcommand
            .get_arguments()
            .filter_map(|arg| arg.get_long())
            .map(|long| format!("--{long}"))
            .chain(["--help".to_owned()])
            .collect();
        flags.insert(subcommand.get_name().to_owned(), names);
    }
    flags
}

/// The inline code spans of a Markdown text, outside fenced blocks, with their line numbers.
fn code_spans(markdown: &str) -> Vec<(usize, String)> {
    let mut spans = Vec::new();
    let mut fenced = false;
    for (index, line) in markdown.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        for span in line.split('`').skip(1).step_by(2) {
            spans.push((index + 1, span.to_owned()));
        }
    }
    spans
}

/// Problems with the `incode-gateway` words of one command line: an unknown subcommand or flag.
/// In prose (`strict` false) an unknown word after `incode-gateway` is not a command (a log
/// message, say) and is passed over.
fn check_command(
    words: &[&str],
    flags: &BTreeMap<String, BTreeSet<String>>,
    strict: bool,
) -> Vec<String> {
    let mut problems = Vec::new();
    let mut at = 0;
    while let Some(start) = words[at..]
        .iter()
        .position(|word| *word == "incode-gateway")
    {
        let start = at + start;
        let mut rest = &words[start + 1..];
        let subcommand = match rest.first() {
            Some(word) if !word.starts_with('-') && flags.contains_key(*word) => {
                rest = &rest[1..];
                *word
            }
            Some(word) if word.chars().all(|c| c.is_ascii_lowercase() || c == '-') => {
                if strict {
                    problems.push(format!("`incode-gateway {word}`: no such subcommand"));
                }
                at = start + 1;
                continue;
            }
            _ => "serve",
        };
        for word in rest {
            if matches!(*word, "|" | "&&" | "||" | ";" | ")" | "#") {
                break;
            }
            let flag = word.split('=').next().unwrap_or(word);
            if flag.starts_with("--") && flag.len() > 2 && !flags[subcommand].contains(flag) {
                problems.push(format!("`incode-gateway {subcommand}` has no {flag}"));
            }
        }
        at = start + 1;
    }
    problems
}

#[test]
fn every_command_and_flag_the_docs_name_exists() {
    let flags = subcommand_flags();
    let all: BTreeSet<&str> = flags.values().flatten().map(String::as_str).collect();
    let others: BTreeSet<&str> = OTHER_PROGRAMS_FLAGS
        .iter()
        .flat_map(|(_, flags)| flags.iter().copied())
        .collect();
    let mut problems = Vec::new();
    for file in doc_files() {
        for block in blocks_of(&file) {
            for line in command_lines(&block.text) {
                let line = line.replace("$(", "$( ");
                let words: Vec<&str> = line.split_whitespace().collect();
                // `cargo run -- ARGS` runs `incode-gateway ARGS`.
                let words: Vec<&str> = match words.iter().position(|word| *word == "run") {
                    Some(at) if words.first() == Some(&"cargo") || words.contains(&"cargo") => {
                        let args = words[at..].iter().position(|word| *word == "--");
                        let mut run = vec!["incode-gateway"];
                        if let Some(dashes) = args {
                            run.extend(&words[at + dashes + 1..]);
                        }
                        run
                    }
                    _ => words,
                };
                for problem in check_command(&words, &flags, true) {
                    problems.push(format!("{}: {problem}", block.location()));
                }
                for word in &words {
                    if let Some(script) = word.strip_prefix("scripts/")
                        && !repo_root().join("scripts").join(script).is_file()
                    {
                        problems.push(format!("{}: no script {word}", block.location()));
                    }
                }
            }
        }
        let text = std::fs::read_to_string(repo_root().join(&file)).unwrap();
        for (line, span) in code_spans(&text) {
            let words: Vec<&str> = span.split_whitespace().collect();
            if words
                .first()
                .is_some_and(|word| OTHER_COMMANDS.contains(word))
            {
                continue;
            }
            if words.contains(&"incode-gateway") {
                for problem in check_command(&words, &flags, false) {
                    problems.push(format!("{file}:{line}: {problem}"));
                }
                continue;
            }
            for word in words {
                let flag = word.split('=').next().unwrap_or(word);
                let named = flag.starts_with("--")
                    && flag.len() > 2
                    && flag[2..]
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    && !flag.ends_with('-');
                if named && !all.contains(flag) && !others.contains(flag) {
                    problems.push(format!("{file}:{line}: no incode-gateway flag {flag}"));
                }
            }
            if let Some(script) = span.strip_prefix("scripts/") {
                let script = script.split_whitespace().next().unwrap_or_default();
                if !script.is_empty() && !repo_root().join("scripts").join(script).is_file() {
                    problems.push(format!("{file}:{line}: no script scripts/{script}"));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// GitHub's anchor for a heading: lowercase, punctuation dropped, spaces as hyphens.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of a Markdown file's headings (outside fenced blocks), with GitHub's `-1`, `-2`
/// suffixes for repeated ones.
fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut anchors = BTreeSet::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut fenced = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced || !line.starts_with('#') {
            continue;
        }
        let base = anchor(line.trim_start_matches('#'));
        let count = seen.entry(base.clone()).or_default();
        anchors.insert(if *count == 0 {
            base.clone()
        } else {
            format!("{base}-{count}")
        });
        *count += 1;
    }
    anchors
}

#[test]
fn every_relative_link_of_the_docs_leads_somewhere() {
    let mut problems = Vec::new();
    for file in doc_files() {
        let path = repo_root().join(&file);
        let text = std::fs::read_to_string(&path).unwrap();
        let dir = path.parent().unwrap();
        let mut fenced = false;
        for (index, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("```") {
                fenced = !fenced;
                continue;
            }
            if fenced {
                continue;
            }
            for target in line.split("](").skip(1) {
                let Some(target) = target.split(')').next() else {
                    continue;
                };
                if target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                let (file_part, fragment) = match target.split_once('#') {
                    Some((file_part, fragment)) => (file_part, Some(fragment)),
                    None => (target, None),
                };
                let linked = if file_part.is_empty() {
                    path.clone()
                } else {
                    dir.join(file_part)
                };
                let at = format!("{file}:{}", index + 1);
                if !linked.exists() {
                    problems.push(format!("{at}: {target}: no such file"));
                    continue;
                }
                if let Some(fragment) = fragment {
                    let linked_text = std::fs::read_to_string(&linked).unwrap_or_default();
                    if !anchors(&linked_text).contains(fragment) {
                        problems.push(format!("{at}: {target}: no such heading"));
                    }
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn anchors_are_githubs() {
    assert_eq!(
        anchor(" Client secrets and `hash-secret`"),
        "client-secrets-and-hash-secret"
    );
    assert_eq!(anchor(" `incode-gateway tail`"), "incode-gateway-tail");
    assert_eq!(
        anchor(" Durable consumers (server-side cursors)"),
        "durable-consumers-server-side-cursors"
    );
}
