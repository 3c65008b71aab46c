//! No import cycle between the top-level modules of `tslm-server`.
//!
//! Reads `src/*.rs` (and each module's own folder, `src/NAME/**.rs`), strips comments and test
//! code (`#[cfg(test)] mod tests` blocks at the end of a file, and `tests.rs` files), collects every
//! `crate::NAME` (also `use crate::{a, b::C}`, and `super::NAME` in a top-level file) that names
//! another top-level module, or a name `lib.rs` re-exports from one, and fails naming the cycle
//! when the graph has one. Plain Rust, no dependency: a lexical scan is enough for a crate that
//! imports by path, and the detector is itself tested on hand-made graphs below so that it cannot
//! pass vacuously.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

/// Every `.rs` file under `dir`, recursively, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The code of a file without comments and without its trailing test module.
fn production_code(text: &str) -> String {
    let code = match text.find("#[cfg(test)]\nmod tests {") {
        Some(i) => &text[..i],
        None => text,
    };
    code.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn ident_at(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The first path segment of every item a `crate::` path names, in the order they appear:
/// `crate::a::B` gives `a`; `crate::{a, b::C}` gives `a` and `b`.
fn crate_paths(code: &str, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find(prefix) {
        // `foo_crate::x` or `$crate::x` is not ours.
        let before = rest[..i].chars().next_back();
        rest = &rest[i + prefix.len()..];
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0usize;
            let mut item_start = true;
            for (k, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && (c.is_ascii_alphabetic() || c == '_') => {
                        out.push(ident_at(&group[k..]).to_owned());
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            let id = ident_at(rest);
            if !id.is_empty() {
                out.push(id.to_owned());
            }
        }
    }
    out
}

/// Names `lib.rs` re-exports (`pub use module::{A, B as C}`), mapped to their module.
fn reexports(lib: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for stmt in lib.split(';') {
        let Some(rest) = stmt.trim().strip_prefix("pub use ") else {
            continue;
        };
        let Some((module, names)) = rest.split_once("::") else {
            continue;
        };
        let names = names.trim().trim_start_matches('{').trim_end_matches('}');
        for n in names.split(',') {
            let n = n.trim();
            let alias = n.rsplit(" as ").next().unwrap_or(n).trim();
            if !alias.is_empty() {
                out.insert(alias.to_owned(), module.trim().to_owned());
            }
        }
    }
    out
}

/// The module graph of the crate whose sources are in `src`.
fn module_graph(src: &Path) -> Graph {
    let lib = production_code(&std::fs::read_to_string(src.join("lib.rs")).expect("lib.rs"));
    let names = reexports(&lib);
    let mut files: BTreeMap<String, Vec<(PathBuf, bool)>> = BTreeMap::new();
    for path in rust_files(src) {
        let rel = path.strip_prefix(src).expect("under src");
        let mut parts = rel.components();
        let first = parts.next().expect("a component");
        let top_level = parts.next().is_none();
        let module = Path::new(first.as_os_str())
            .file_stem()
            .expect("a name")
            .to_string_lossy()
            .into_owned();
        if module == "lib" || module == "main" || rel.file_name().is_some_and(|f| f == "tests.rs") {
            continue;
        }
        files.entry(module).or_default().push((path, top_level));
    }
    let mut graph = Graph::new();
    for (module, paths) in &files {
        let deps = graph.entry(module.clone()).or_default();
        for (path, top_level) in paths {
            let code = production_code(&std::fs::read_to_string(path).expect("readable"));
            let mut refs = crate_paths(&code, "crate::");
            if *top_level {
                refs.extend(crate_paths(&code, "super::"));
            }
            for r in refs {
                let target = names.get(&r).cloned().unwrap_or(r);
                if &target != module && files.contains_key(&target) {
                    deps.insert(target);
                }
            }
        }
    }
    graph
}

/// A cycle of `graph`, as the modules along it with the first repeated at the end.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    fn visit(
        g: &Graph,
        n: &str,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        marks.insert(n.to_owned(), Mark::Open);
        path.push(n.to_owned());
        for d in g.get(n).into_iter().flatten() {
            match marks.get(d.as_str()).copied().unwrap_or(Mark::New) {
                Mark::Open => {
                    let from = path.iter().position(|p| p == d).expect("on the path");
                    let mut cycle = path[from..].to_vec();
                    cycle.push(d.clone());
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(c) = visit(g, d, marks, path) {
                        return Some(c);
                    }
                }
                Mark::Done => {}
            }
        }
        path.pop();
        marks.insert(n.to_owned(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for n in graph.keys() {
        if marks.get(n.as_str()).copied().unwrap_or(Mark::New) == Mark::New
            && let Some(c) = visit(graph, n, &mut marks, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
}

fn graph_of(edges: &[(&str, &str)]) -> Graph {
    let mut g = Graph::new();
    for (a, b) in edges {
        g.entry((*a).to_owned())
            .or_default()
            .insert((*b).to_owned());
        g.entry((*b).to_owned()).or_default();
    }
    g
}

#[test]
fn server_modules_have_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = module_graph(&src);
    // The scan found the modules and their imports (not an empty graph that passes by default).
    assert!(graph.len() >= 10, "too few modules found: {graph:?}");
    assert!(
        graph.values().map(BTreeSet::len).sum::<usize>() >= 10,
        "too few imports found: {graph:?}"
    );
    if let Some(cycle) = find_cycle(&graph) {
        panic!(
            "import cycle between tslm-server modules: {}\nthe module graph:\n{}",
            cycle.join(" -> "),
            graph
                .iter()
                .map(|(m, d)| format!(
                    "  {m} -> {}",
                    d.iter().cloned().collect::<Vec<_>>().join(", ")
                ))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

#[test]
fn detector_finds_a_cycle() {
    let g = graph_of(&[
        ("http", "listener"),
        ("listener", "ops"),
        ("ops", "http"),
        ("a", "b"),
    ]);
    let cycle = find_cycle(&g).expect("a cycle");
    assert_eq!(cycle.first(), cycle.last());
    assert_eq!(cycle.len(), 4, "{cycle:?}");
    for m in ["http", "listener", "ops"] {
        assert!(cycle.iter().any(|c| c == m), "{cycle:?}");
    }
    assert!(find_cycle(&graph_of(&[("a", "a")])).is_some());
}

#[test]
fn detector_accepts_a_dag() {
    let g = graph_of(&[("a", "b"), ("a", "c"), ("b", "c"), ("c", "d")]);
    assert_eq!(find_cycle(&g), None);
}

#[test]
fn scanner_reads_every_import_form() {
    let code = production_code(
        "use crate::a::X;\nuse crate::{b, c::{D, E}, f::G};\n// crate::commented\nfn f() { crate::h::run(); other_crate::i(); }\n#[cfg(test)]\nmod tests {\n    use crate::j;\n}\n",
    );
    assert_eq!(crate_paths(&code, "crate::"), ["a", "b", "c", "f", "h"]);
    let names =
        reexports("pub use config::{Config, ListenerConfig as Lc};\npub use stats::ServerStats;\n");
    assert_eq!(names.get("Lc").map(String::as_str), Some("config"));
    assert_eq!(names.get("ServerStats").map(String::as_str), Some("stats"));
}

#[test]
fn scanner_finds_the_cycle_in_files() {
    let dir = std::env::temp_dir().join(format!("tslm-module-graph-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("b")).expect("temp dir");
    let write = |p: &str, s: &str| std::fs::write(dir.join(p), s).expect("write");
    write("lib.rs", "mod a;\nmod b;\nmod c;\npub use c::Thing;\n");
    write("a.rs", "use crate::b::B;\n");
    write("b.rs", "mod inner;\n");
    write(
        "b/inner.rs",
        "use super::x;\nfn f(t: crate::Thing) -> crate::Thing { t }\n",
    );
    write("c.rs", "use crate::{a, b};\n");
    let graph = module_graph(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        graph,
        graph_of(&[("a", "b"), ("b", "c"), ("c", "a"), ("c", "b")])
    );
    assert!(find_cycle(&graph).is_some());
}

/// Files of `src` whose production code calls the broker (`.broker.`, `.broker\n`), relative.
fn broker_callers(src: &Path) -> Vec<String> {
    rust_files(src)
        .into_iter()
        .filter(|p| !p.ends_with("tests.rs"))
        .filter(|p| {
            let code = production_code(&std::fs::read_to_string(p).expect("read"));
            code.contains(".broker.") || code.contains(".broker\n")
        })
        .map(|p| {
            p.strip_prefix(src)
                .expect("under src")
                .display()
                .to_string()
        })
        .collect()
}

/// The broker seam (the channel log a cluster shares) is called by the channel-operations layer
/// alone, so that a shared store sees every log operation and no transport goes around it.
#[test]
fn only_the_operations_layer_calls_the_broker() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    assert_eq!(broker_callers(&src), ["ops.rs"]);
}

#[test]
fn the_broker_check_finds_other_callers() {
    let dir = std::env::temp_dir().join(format!("tslm-broker-callers-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let write = |p: &str, s: &str| std::fs::write(dir.join(p), s).expect("write");
    write("ops.rs", "fn f() { ctx.broker.publish(); }\n");
    write("http.rs", "fn g() { ctx\n    .broker\n    .history(); }\n");
    write("session.rs", "// ctx.broker.publish() in a comment only\n");
    let mut found = broker_callers(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    found.sort();
    assert_eq!(found, ["http.rs", "ops.rs"]);
}
