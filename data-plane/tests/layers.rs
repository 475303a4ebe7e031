//! The data plane's layers, checked on its sources (rust-analyzer's tidy tests do the same):
//! every `crate::` path outside comments and test code must name a module of the same layer
//! or of a layer below. The table is [`LAYERS`]; ARCHITECTURE.md states the same.

use std::fs;
use std::path::{Path, PathBuf};

/// The data plane's top-level modules, bottom layer first. A module may import its own layer's
/// modules only if it is that module (`runtime/router` may use `crate::runtime`), and any
/// module of a lower layer.
const LAYERS: &[(&str, &[&str])] = &[
    // Leaf utilities: they import nothing of the crate.
    (
        "leaf",
        &[
            "background",
            "clock",
            "config",
            "error",
            "metrics",
            "report",
            "telemetry",
        ],
    ),
    // HTTP on the wire: codec, exchanges, pools, bodies, deadlines, hyper's glue.
    ("transport", &["transport"]),
    // The plugin trait, its phase API, the factory and the plugins.
    ("plugins", &["plugins"]),
    // A snapshot compiled: router, upstreams with balancers and health, batch plans, chains.
    ("compiled config", &["runtime"]),
    // The one `ArcSwap<Runtime>` with readiness and metrics.
    ("state", &["state"]),
    // The request path, and the config stream beside it.
    ("request path", &["proxy", "xds"]),
    // The status listener, which answers with the proxy's body type.
    ("status", &["status"]),
];

/// Files that are not the data plane's own code: test support and the crate root, which
/// wires every layer together.
fn exempt(relative: &Path) -> bool {
    let name = relative
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    relative.parent() == Some(Path::new("")) && matches!(name, "lib.rs" | "main.rs")
        || name == "test_support.rs"
        || name == "tests.rs"
        || name.ends_with("_tests.rs")
}

/// The layer index of top-level module `module`.
fn layer_of(module: &str) -> Option<usize> {
    LAYERS
        .iter()
        .position(|(_, modules)| modules.contains(&module))
}

/// The top-level modules a line's code names through `crate::` (`crate::a::b`, `crate::{a, b}`).
fn crate_paths(code: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let after = &rest[at + "crate::".len()..];
        let preceded = rest[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_');
        if !preceded {
            if let Some(group) = after.strip_prefix('{') {
                let group = group.split('}').next().unwrap_or_default();
                for item in group.split(',') {
                    let name = item.trim().split("::").next().unwrap_or_default();
                    if !name.is_empty() {
                        found.push(name.to_owned());
                    }
                }
            } else {
                let name: String = after
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                found.push(name);
            }
        }
        rest = after;
    }
    found
}

/// The lines of `source` that are code the crate is built from: comments, and `#[cfg(test)]`
/// modules written inline, left out.
fn code_lines(source: &str) -> Vec<(usize, &str)> {
    let mut lines = Vec::new();
    let mut in_test_module = false;
    let mut cfg_test = false;
    for (number, line) in source.lines().enumerate() {
        let trimmed = line.trim_start();
        if in_test_module {
            in_test_module = line != "}";
            continue;
        }
        if cfg_test && trimmed.starts_with("mod ") && trimmed.ends_with('{') {
            in_test_module = true;
            continue;
        }
        cfg_test = trimmed == "#[cfg(test)]";
        if trimmed.starts_with("//") {
            continue;
        }
        lines.push((number + 1, line));
    }
    lines
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .expect("src/ is readable")
        .map(|e| e.expect("a readable entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The data plane's own source files (not [`exempt`]), each as its path under `src` and text.
fn own_sources(src: &Path) -> Vec<(PathBuf, String)> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files
        .into_iter()
        .filter_map(|path| {
            let relative = path.strip_prefix(src).expect("under src/").to_path_buf();
            let source = fs::read_to_string(&path).expect("a readable source file");
            (!exempt(&relative)).then_some((relative, source))
        })
        .collect()
}

/// Every import of a layer above the importing module's, as `file:line: message`.
fn violations(src: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for (relative, source) in own_sources(src) {
        let top = relative
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .unwrap_or_default()
            .trim_end_matches(".rs")
            .to_owned();
        let Some(own) = layer_of(&top) else {
            found.push(format!(
                "{}: module `{top}` is in no layer",
                relative.display()
            ));
            continue;
        };
        for (number, line) in code_lines(&source) {
            for module in crate_paths(line) {
                if module == top {
                    continue;
                }
                match layer_of(&module) {
                    Some(layer) if layer < own => {}
                    Some(layer) => found.push(format!(
                        "{}:{number}: `{top}` ({}) imports `crate::{module}` ({}), which is not below it",
                        relative.display(),
                        LAYERS[own].0,
                        LAYERS[layer].0,
                    )),
                    None => found.push(format!(
                        "{}:{number}: `{top}` imports `crate::{module}`, which is in no layer \
                         (a re-export at the crate root hides its layer)",
                        relative.display(),
                    )),
                }
            }
        }
    }
    found
}

#[test]
fn each_layer_imports_only_the_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let found = violations(&src);
    assert!(
        found.is_empty(),
        "imports against the layers (the table is LAYERS in {}):\n{}",
        file!(),
        found.join("\n")
    );
}

#[test]
fn the_checker_reads_paths_and_skips_comments_and_tests() {
    assert_eq!(
        crate_paths("use crate::runtime::{Runtime, x}; crate::clock::now() + crate::{a, b::c}"),
        ["runtime", "clock", "a", "b"]
    );
    assert!(crate_paths("use gateway_crate::x; // crate::proxy").len() == 1);
    let source = "use crate::a;\n// use crate::b;\n#[cfg(test)]\nmod tests {\n    use crate::c;\n}\nuse crate::d;\n";
    let kept: Vec<&str> = code_lines(source).into_iter().map(|(_, l)| l).collect();
    assert_eq!(kept, ["use crate::a;", "#[cfg(test)]", "use crate::d;"]);
}

/// Every deadline armed outside `transport/deadline.rs`, as `file:line`.
fn deadlines_elsewhere(src: &Path) -> Vec<String> {
    const ARMING: &[&str] = &["time::timeout(", "time::timeout_at(", "time::sleep_until("];
    let mut found = Vec::new();
    for (relative, source) in own_sources(src) {
        if relative == Path::new("transport/deadline.rs") {
            continue;
        }
        for (number, line) in code_lines(&source) {
            if ARMING.iter().any(|arming| line.contains(arming)) {
                found.push(format!("{}:{number}: {}", relative.display(), line.trim()));
            }
        }
    }
    found
}

/// One deadline mechanism: time limits are instants armed through `transport::deadline`
/// (`within`, `timer`, `timer_by`). A pause (a probe interval, a backoff) is a plain sleep and
/// bounds nothing.
#[test]
fn every_deadline_goes_through_the_deadline_module() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let found = deadlines_elsewhere(&src);
    assert!(
        found.is_empty(),
        "deadlines armed outside transport/deadline.rs:\n{}",
        found.join("\n")
    );
}
