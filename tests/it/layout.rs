//! The code's layout holds: no import cycle between modules, in the library and in the
//! benchmark, and no source file past the size where it stops being one topic.
//!
//! Modules are read from the files under `src/` (and `benches/gateway/`), references from every
//! `crate::…` and `super::…` path outside comments and test modules. A reference from `a::b::c`
//! to `a::d::e` is an edge `b → d` between the siblings under `a`, at the level where the two
//! paths part; a module's use of its own ancestors or descendants is no edge (a parent declares
//! its children). Each set of siblings must form a graph without cycles.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

/// Past this, a file holds more than one topic; generated code aside.
const MAX_LINES: usize = 700;

#[test]
fn the_library_has_no_import_cycle() {
    let cycles = cycles(&crate_root("src"), "lib.rs");
    assert!(
        cycles.is_empty(),
        "import cycles between modules of src/:\n{}",
        cycles.join("\n")
    );
}

#[test]
fn the_benchmark_has_no_import_cycle() {
    let cycles = cycles(&crate_root("benches/gateway"), "main.rs");
    assert!(
        cycles.is_empty(),
        "import cycles between modules of benches/gateway/:\n{}",
        cycles.join("\n")
    );
}

#[test]
fn no_source_file_is_past_the_size_limit() {
    let mut long = Vec::new();
    for file in rust_files(&crate_root("src")) {
        let lines = fs::read_to_string(&file).unwrap().lines().count();
        if lines > MAX_LINES {
            long.push(format!("{} ({lines} lines)", file.display()));
        }
    }
    assert!(
        long.is_empty(),
        "files under src/ over {MAX_LINES} lines: {}",
        long.join(", ")
    );
}

#[test]
fn the_checker_finds_a_cycle_between_siblings_and_ignores_parents() {
    let root = tempfile::tempdir().unwrap();
    let write = |path: &str, text: &str| {
        let path = root.path().join(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    };
    write("lib.rs", "pub mod a;\npub mod b;\nuse crate::a::x;\n");
    write("a/mod.rs", "pub mod x;\npub mod y;\nuse self::x::X;\n");
    // x → y and y → x (through a group): a cycle under `a`. Comments and test modules are no
    // references: else x → b and b → a would close a cycle at the top too.
    write(
        "a/x.rs",
        "use super::y::Y; // crate::b\n// use crate::b;\n#[cfg(test)]\nmod tests { use crate::b; }\n",
    );
    write("a/y.rs", "use crate::a::{x::X, self};\n");
    write("b.rs", "fn f() { crate::a::x::g(); }\n");
    assert_eq!(cycles(root.path(), "lib.rs"), ["crate::a: x → y → x"]);

    // y → b through `super::super`, and b → a: a cycle at the top.
    write("a/y.rs", "use super::super::b;\n");
    assert_eq!(cycles(root.path(), "lib.rs"), ["crate: a → b → a"]);
}

fn crate_root(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|extension| extension == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The module path of a file under `root`, whose crate root file is `root_file`.
fn module_of(root: &Path, root_file: &str, file: &Path) -> Vec<String> {
    let relative = file.strip_prefix(root).unwrap();
    let mut parts: Vec<String> = relative
        .iter()
        .map(|part| part.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap();
    if parts.is_empty() && last == root_file {
        return parts;
    }
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" {
        parts.push(stem.to_owned());
    }
    parts
}

/// Every cycle, one line each: the parent module and the siblings around the cycle.
fn cycles(root: &Path, root_file: &str) -> Vec<String> {
    let files = rust_files(root);
    let modules: BTreeSet<Vec<String>> = files
        .iter()
        .map(|file| module_of(root, root_file, file))
        .collect();
    // Under each parent, the edges between its children.
    let mut graphs: BTreeMap<Vec<String>, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for file in &files {
        let from = module_of(root, root_file, file);
        if from.last().is_some_and(|name| name == "tests") {
            continue;
        }
        let text = fs::read_to_string(file).unwrap();
        for path in references(&code_outside_tests(&text), &from) {
            // The longest known module the path names.
            let Some(to) = (0..=path.len())
                .rev()
                .map(|len| path[..len].to_vec())
                .find(|prefix| modules.contains(prefix))
            else {
                continue;
            };
            let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
            if common < from.len() && common < to.len() {
                graphs
                    .entry(from[..common].to_vec())
                    .or_default()
                    .entry(from[common].clone())
                    .or_default()
                    .insert(to[common].clone());
            }
        }
    }
    let mut found = Vec::new();
    for (parent, edges) in &graphs {
        if let Some(cycle) = find_cycle(edges) {
            let parent = std::iter::once("crate".to_owned())
                .chain(parent.iter().cloned())
                .collect::<Vec<_>>()
                .join("::");
            found.push(format!("{parent}: {}", cycle.join(" → ")));
        }
    }
    found
}

/// A cycle in `edges`, its first node repeated at the end; depth-first with three colours.
fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        done: &mut BTreeSet<String>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = stack.iter().position(|on_stack| on_stack == node) {
            let mut cycle = stack[start..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.to_owned());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, edges, done, stack) {
                return Some(cycle);
            }
        }
        stack.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    edges
        .keys()
        .find_map(|node| visit(node, edges, &mut done, &mut Vec::new()))
}

/// The text without comments and without the `#[cfg(test)]` module that closes a file.
fn code_outside_tests(text: &str) -> String {
    let mut code = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("#[cfg(test)]")
            && lines
                .peek()
                .is_some_and(|next| next.trim_start().starts_with("mod "))
        {
            break;
        }
        if trimmed.starts_with("//") {
            continue;
        }
        code.push_str(line.split(" // ").next().unwrap_or(line));
        code.push('\n');
    }
    code
}

/// The absolute module paths that `crate::…`, `self::…` and `super::…` paths in `code` name,
/// from the module `from`; a `{…}` group gives one path per member.
fn references(code: &str, from: &[String]) -> Vec<Vec<String>> {
    let bytes = code.as_bytes();
    let mut found = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let starts_word = at == 0 || !is_ident(bytes[at - 1]) && bytes[at - 1] != b':';
        let base = if !starts_word {
            None
        } else if bytes[at..].starts_with(b"crate::") {
            Some((Vec::new(), "crate::".len()))
        } else if bytes[at..].starts_with(b"self::") {
            Some((from.to_vec(), "self::".len()))
        } else if bytes[at..].starts_with(b"super::") {
            Some((from.to_vec(), 0))
        } else {
            None
        };
        match base {
            Some((base, skip)) => {
                let end = path_tail(code, at + skip, base, &mut found);
                at = end.max(at + 1);
            }
            None => at += 1,
        }
    }
    found
}

/// Reads `ident::ident::…` (with `super` stepping up, and a final `{…}` group) from `at`,
/// appending every full path to `found`; returns where the path ended.
fn path_tail(
    code: &str,
    mut at: usize,
    mut base: Vec<String>,
    found: &mut Vec<Vec<String>>,
) -> usize {
    let bytes = code.as_bytes();
    loop {
        if bytes.get(at) == Some(&b'{') {
            let mut depth = 0;
            let mut member_start = at + 1;
            let mut index = at;
            while index < bytes.len() {
                match bytes[index] {
                    b'{' => depth += 1,
                    b'}' | b',' if depth == 1 => {
                        let member = code[member_start..index].trim();
                        if member == "self" {
                            found.push(base.clone());
                        } else if !member.is_empty() {
                            let offset =
                                member_start + code[member_start..index].find(member).unwrap_or(0);
                            path_tail(code, offset, base.clone(), found);
                        }
                        member_start = index + 1;
                        if bytes[index] == b'}' {
                            return index + 1;
                        }
                    }
                    b'}' => depth -= 1,
                    _ => {}
                }
                index += 1;
            }
            return index;
        }
        let start = at;
        while at < bytes.len() && is_ident(bytes[at]) {
            at += 1;
        }
        let ident = &code[start..at];
        match ident {
            "" => {
                found.push(base);
                return at;
            }
            "super" => {
                base.pop();
            }
            "self" => {}
            _ => base.push(ident.to_owned()),
        }
        if bytes[at..].starts_with(b"::") {
            at += 2;
        } else {
            found.push(base);
            return at;
        }
    }
}

fn is_ident(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_'
}
