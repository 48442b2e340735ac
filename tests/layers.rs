//! The shape of the code, held: every `crate::` path in `src/` is read, and an import that runs
//! against the layers, that the "never" list forbids, or that closes a cycle fails this test.
//!
//! Modules are the top-level ones (`src/foo.rs` with `src/foo/`). From the bottom up:
//! | rank | modules |
//! |---|---|
//! | 0 | `error`, `metrics`, `access_log`: leaves |
//! | 1 | `policy`: configuration |
//! | 2 | `request`, `auth`, `params`, `rules`, `ratelimit`, `upstream`, `conn`, `trace`: the phases |
//! | 3 | `proxy` (runs the phases), `admin`, `sandbox` |
//! | 4 | `app`, `reload`: the process |
//! | 5 | `cli`: the command line |
//!
//! A module may import its own rank or lower. Never, whatever the ranks: rules -> upstream (rules
//! judge, the proxy fetches); auth -> upstream; policy -> proxy; proxy -> sandbox; admin ->
//! proxy; sandbox -> request or params (the sandbox reads requests with a reader of its own: an
//! oracle that shares the parser under test cannot catch its bugs); reload -> cli; error -> any.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

const RANKS: &[(&str, u8)] = &[
    ("error", 0),
    ("metrics", 0),
    ("access_log", 0),
    ("policy", 1),
    ("request", 2),
    ("auth", 2),
    ("params", 2),
    ("rules", 2),
    ("ratelimit", 2),
    ("upstream", 2),
    ("conn", 2),
    ("trace", 2),
    ("proxy", 3),
    ("admin", 3),
    ("sandbox", 3),
    ("app", 4),
    ("reload", 4),
    ("cli", 5),
];

/// (from, to) pairs forbidden whatever the ranks; `*` for any module.
const NEVER: &[(&str, &str)] = &[
    ("rules", "upstream"),
    ("auth", "upstream"),
    ("policy", "proxy"),
    ("proxy", "sandbox"),
    ("admin", "proxy"),
    ("sandbox", "request"),
    ("sandbox", "params"),
    ("reload", "cli"),
    ("error", "*"),
];

/// Names the crate root re-exports, and the module each comes from.
const REEXPORTS: &[(&str, &str)] = &[("Gateway", "app"), ("serve", "app"), ("Runtime", "proxy")];

type Graph = BTreeMap<String, BTreeMap<String, String>>;

/// Every import between top-level modules: from -> to -> the first place seen (`file:line`).
fn graph(src: &Path) -> Graph {
    let mut graph = Graph::new();
    let mut files = Vec::new();
    collect(src, &mut files);
    for file in files {
        let rel = file
            .strip_prefix(src)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let module = rel
            .split('/')
            .next()
            .unwrap()
            .trim_end_matches(".rs")
            .to_string();
        if module == "lib" || module == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        for (target, line) in imports(&text) {
            if target != module {
                graph
                    .entry(module.clone())
                    .or_default()
                    .entry(target)
                    .or_insert_with(|| format!("src/{rel}:{line}"));
            }
        }
    }
    graph
}

fn collect(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules a file's code names through `crate::`, with the line of each: paths
/// (`crate::policy::Policy`) and grouped imports (`use crate::{auth, policy::Policy};`, over
/// several lines). Comments are skipped.
fn imports(text: &str) -> Vec<(String, usize)> {
    let code: Vec<&str> = text
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("//") {
                ""
            } else {
                l
            }
        })
        .collect();
    let mut found = Vec::new();
    let mut i = 0;
    while i < code.len() {
        let line = code[i];
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            if let Some(group) = after.strip_prefix('{') {
                // A group, possibly over several lines: read to its closing brace.
                let mut text = group.to_string();
                let mut j = i;
                while !balanced(&text) && j + 1 < code.len() {
                    j += 1;
                    text.push(' ');
                    text.push_str(code[j]);
                }
                for item in top_level_items(&text) {
                    found.push((resolve(&item), i + 1));
                }
                rest = "";
            } else {
                let name: String = after
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                found.push((resolve(&name), i + 1));
                rest = &after[name.len()..];
            }
        }
        i += 1;
    }
    found.retain(|(name, _)| !name.is_empty() && name != "self");
    found
}

/// Does `text` (after a group's `{`) close the group?
fn balanced(text: &str) -> bool {
    let mut depth = 1i32;
    for c in text.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            _ => {}
        }
        if depth == 0 {
            return true;
        }
    }
    false
}

/// The first path segment of each item of a group (`a, b::{c, d}, e::f}` -> a, b, e).
fn top_level_items(text: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut depth = 0i32;
    let mut current = String::new();
    for c in text.chars() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        if depth == 0 {
            current.push(c);
        }
    }
    items.push(current);
    items
        .iter()
        .map(|item| {
            item.trim()
                .split("::")
                .next()
                .unwrap_or_default()
                .trim()
                .to_string()
        })
        .filter(|s| !s.is_empty())
        .collect()
}

fn resolve(name: &str) -> String {
    REEXPORTS
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(name, |(_, module)| module)
        .to_string()
}

/// Every broken rule of the graph, in words.
fn violations(graph: &Graph) -> Vec<String> {
    let rank = |m: &str| RANKS.iter().find(|(n, _)| *n == m).map(|(_, r)| *r);
    let mut out = Vec::new();
    for (from, targets) in graph {
        let Some(from_rank) = rank(from) else {
            out.push(format!("module `{from}` has no rank: add it to RANKS"));
            continue;
        };
        for (to, place) in targets {
            let Some(to_rank) = rank(to) else {
                out.push(format!(
                    "{place}: `{from}` imports `{to}`, which has no rank"
                ));
                continue;
            };
            if to_rank > from_rank {
                out.push(format!(
                    "{place}: `{from}` (rank {from_rank}) imports `{to}` (rank {to_rank}), a higher layer"
                ));
            }
            if NEVER
                .iter()
                .any(|(f, t)| f == from && (*t == "*" || t == to))
            {
                out.push(format!(
                    "{place}: `{from}` imports `{to}`, which is never allowed"
                ));
            }
        }
    }
    for cycle in cycles(graph) {
        out.push(format!("import cycle: {}", cycle.join(" -> ")));
    }
    out
}

/// The cycles of the graph, each once (as found by a depth-first search from each module).
fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    fn visit(
        graph: &Graph,
        node: &str,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        out: &mut Vec<Vec<String>>,
    ) {
        if let Some(at) = stack.iter().position(|n| n == node) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(node.to_string());
            out.push(cycle);
            return;
        }
        if done.contains(node) {
            return;
        }
        stack.push(node.to_string());
        for next in graph.get(node).into_iter().flat_map(|t| t.keys()) {
            visit(graph, next, stack, done, out);
        }
        stack.pop();
        done.insert(node.to_string());
    }
    let mut out = Vec::new();
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        visit(graph, node, &mut Vec::new(), &mut done, &mut out);
    }
    out
}

#[test]
fn the_layers_hold() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = graph(&src);
    let broken = violations(&graph);
    assert!(
        broken.is_empty(),
        "the layers of ARCHITECTURE (tests/layers.rs) are broken:\n  {}",
        broken.join("\n  ")
    );
}

/// The check can fail: each kind of break is reported.
#[test]
fn the_layer_check_reports_each_kind_of_break() {
    let file = "use crate::{\n    auth::Principal,\n    upstream::{self, x},\n};\nfn f() { crate::policy::load(); }\n// crate::sandbox::x\n";
    let found: Vec<String> = imports(file).into_iter().map(|(m, _)| m).collect();
    assert_eq!(found, ["auth", "upstream", "policy"]);
    let mut graph = Graph::new();
    let mut edge = |from: &str, to: &str| {
        graph
            .entry(from.into())
            .or_default()
            .insert(to.into(), "src/x.rs:1".into());
    };
    edge("rules", "upstream"); // never
    edge("policy", "proxy"); // against the layers, and never
    edge("request", "auth");
    edge("auth", "request"); // a cycle
    edge("error", "metrics"); // error imports nothing
    let broken = violations(&graph).join("\n");
    assert!(
        broken.contains("`rules` imports `upstream`, which is never allowed"),
        "{broken}"
    );
    assert!(
        broken.contains("`policy` (rank 1) imports `proxy` (rank 3)"),
        "{broken}"
    );
    assert!(
        broken.contains("import cycle: auth -> request -> auth"),
        "{broken}"
    );
    assert!(
        broken.contains("`error` imports `metrics`, which is never allowed"),
        "{broken}"
    );
}
