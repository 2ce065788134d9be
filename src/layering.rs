//! The crate's module graph, read from its sources (`crate::`, `super::` and child-module paths
//! of the production code: `#[cfg(test)]` items are left out), must have no cycle through more
//! than one file: every module sits in one layer and reaches only downwards (see
//! `../shared/reference/aesthetics.md`). A test, so that a new cycle fails `make test`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module path (`daemon::http`) of every source file under `src/` but the binaries.
fn modules(src: &Path) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("src is readable").flatten() {
            let path = entry.path();
            let rel = path.strip_prefix(src).expect("under src").to_string_lossy().into_owned();
            if path.is_dir() {
                if rel != "bin" {
                    stack.push(path);
                }
                continue;
            }
            let Some(stem) = rel.strip_suffix(".rs") else { continue };
            let module = match stem {
                "lib" => String::new(),
                s if s.ends_with("/mod") => s.trim_end_matches("/mod").replace('/', "::"),
                s => s.replace('/', "::"),
            };
            out.insert(module, path);
        }
    }
    out
}

/// The source without `#[cfg(test)]` items (a `mod x { ... }` block, or the one item after it).
fn production_code(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if line.trim() != "#[cfg(test)]" {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        let mut depth = 0i64;
        let mut opened = false;
        while let Some(item) = lines.next() {
            depth += item.matches('{').count() as i64 - item.matches('}').count() as i64;
            opened |= item.contains('{');
            if (opened && depth <= 0) || (!opened && item.trim_end().ends_with(';')) {
                break;
            }
            if lines.peek().is_none() {
                break;
            }
        }
    }
    out
}

/// Every path a piece of code names: `use` trees expanded (`a::{b, c::d}`), and `crate::`/`super::`
/// paths written in expressions and types. Comments (doc links included) name nothing.
fn named_paths(code: &str) -> Vec<String> {
    let mut paths = Vec::new();
    let mut statement: Option<String> = None;
    let mut rest = String::new();
    for line in code.lines() {
        let line = match line.trim_start() {
            l if l.starts_with("//") => continue,
            l => l.find("//").filter(|&i| i == 0 || l.as_bytes()[i - 1] != b':').map_or(l, |i| &l[..i]),
        };
        let opens =
            ["use ", "pub use ", "pub(crate) use ", "pub(super) use "].iter().find_map(|p| line.strip_prefix(p));
        match (&mut statement, opens) {
            (Some(open), _) => open.push_str(line),
            (None, Some(tree)) => statement = Some(tree.to_string()),
            (None, None) => {
                rest.push_str(line);
                rest.push('\n');
            }
        }
        if let Some(tree) = statement.take_if(|s| s.trim_end().ends_with(';')) {
            expand(tree.trim_end().trim_end_matches(';'), "", &mut paths);
        }
    }
    for prefix in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(at) = rest[from..].find(prefix) {
            let start = from + at;
            let end = rest[start..]
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .map_or(rest.len(), |e| start + e);
            paths.push(rest[start..end].trim_end_matches(':').to_string());
            from = end.max(start + prefix.len());
        }
    }
    paths
}

/// Expands one `use` tree under `base` into paths.
fn expand(tree: &str, base: &str, out: &mut Vec<String>) {
    let tree = tree.trim();
    let join = |a: &str, b: &str| if a.is_empty() { b.to_string() } else { format!("{a}::{b}") };
    match tree.find('{') {
        None => {
            let path = tree.split(" as ").next().unwrap_or(tree).trim();
            if !path.is_empty() && path != "self" {
                out.push(join(base, path));
            } else if path == "self" {
                out.push(base.to_string());
            }
        }
        Some(open) => {
            let head = tree[..open].trim().trim_end_matches("::");
            let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
            let base = join(base, head);
            let (mut depth, mut part) = (0, String::new());
            for c in inner.chars() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        expand(&part, &base, out);
                        part.clear();
                        continue;
                    }
                    _ => {}
                }
                part.push(c);
            }
            expand(&part, &base, out);
        }
    }
}

/// The module a path named in `module` leads to, if it is one of the crate's (the longest prefix
/// that is a module file).
fn target(module: &str, path: &str, known: &BTreeMap<String, PathBuf>, is_dir_module: bool) -> Option<String> {
    let mut parts: Vec<String> =
        if module.is_empty() { Vec::new() } else { module.split("::").map(String::from).collect() };
    // `super` of a file module is its parent; of a `mod.rs` module too (the folder's parent).
    let _ = is_dir_module;
    let mut segments = path.split("::").filter(|s| !s.is_empty()).peekable();
    let mut absolute: Vec<String> = match segments.peek().copied() {
        Some("crate") => {
            segments.next();
            Vec::new()
        }
        Some("super") => {
            while segments.peek() == Some(&"super") {
                segments.next();
                parts.pop();
            }
            parts
        }
        Some("self") => {
            segments.next();
            parts
        }
        Some(first) if known.contains_key(&join_module(&parts, first)) => parts,
        _ => return None,
    };
    let mut found = None;
    for segment in segments {
        absolute.push(segment.to_string());
        let candidate = absolute.join("::");
        if known.contains_key(&candidate) {
            found = Some(candidate);
        }
    }
    found
}

fn join_module(parts: &[String], next: &str) -> String {
    let mut all = parts.to_vec();
    all.push(next.to_string());
    all.join("::")
}

/// The import graph: module -> the modules it names.
fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let known = modules(src);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, file) in &known {
        let code = production_code(&std::fs::read_to_string(file).expect("readable source"));
        let is_dir_module = file.ends_with("mod.rs");
        let targets = edges.entry(module.clone()).or_default();
        for path in named_paths(&code) {
            if let Some(to) = target(module, &path, &known, is_dir_module).filter(|to| to != module) {
                targets.insert(to);
            }
        }
    }
    edges
}

/// Strongly connected components of more than one module (Tarjan's algorithm).
fn cycles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct Walk<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        found: Vec<Vec<String>>,
    }
    impl<'a> Walk<'a> {
        fn visit(&mut self, v: &'a str) {
            let i = self.index.len();
            self.index.insert(v, i);
            self.low.insert(v, i);
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.edges.get(v).into_iter().flatten() {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v, low);
                } else if self.on_stack.contains(w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    component.push(w.to_string());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.found.push(component);
                }
            }
        }
    }
    let mut walk = Walk {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in edges.keys() {
        if !walk.index.contains_key(v.as_str()) {
            walk.visit(v);
        }
    }
    walk.found
}

#[test]
fn no_import_cycle_spans_more_than_one_file() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let edges = graph(&src);
    assert!(edges.len() > 40 && edges["daemon::connection"].contains("protocol::wire"), "the graph reads the sources");
    let found = cycles(&edges);
    let show = |c: &Vec<String>| {
        let inside: Vec<String> = c
            .iter()
            .flat_map(|a| edges[a].iter().filter(|b| c.contains(b)).map(move |b| format!("  {a} -> {b}")))
            .collect();
        format!("{}:\n{}", c.join(", "), inside.join("\n"))
    };
    assert!(found.is_empty(), "import cycles:\n{}", found.iter().map(show).collect::<Vec<_>>().join("\n"));
}

#[test]
fn the_graph_reader_sees_use_trees_paths_and_test_blocks() {
    let mut paths =
        named_paths("use crate::a::{b, c::{d, e as f}};\n/// [`crate::doc`]\nfn x() { super::g::h(); } // crate::no\n");
    paths.sort();
    assert_eq!(paths, ["crate::a::b", "crate::a::c::d", "crate::a::c::e", "super::g::h"]);
    let code = production_code("use crate::x;\n#[cfg(test)]\nmod tests {\n    use crate::y;\n}\nfn z() {}\n");
    assert!(code.contains("crate::x") && !code.contains("crate::y") && code.contains("fn z"));
    let edges = BTreeMap::from([
        ("a".to_string(), BTreeSet::from(["b".to_string()])),
        ("b".to_string(), BTreeSet::from(["a".to_string()])),
        ("c".to_string(), BTreeSet::new()),
    ]);
    assert_eq!(cycles(&edges), [vec!["a".to_string(), "b".to_string()]]);
}
