//! The host's files import each other without a cycle: `host/src` is
//! layered, each file using only files below it (the map in `lib.rs` lists
//! them bottom up).
//!
//! The check reads the code, not a list: every path that names the crate
//! (`crate::a::b::C`, in `use` trees with their braces and in expressions) is
//! resolved to the deepest file that defines a prefix of it, which is the
//! file it depends on. Paths through a child module the file declares
//! (`mod watch;` … `watch::spawn`) count the same way, and so does
//! `use super::…` at the top level of a file, relative to that file's module
//! (inside an inline `mod tests { … }` it names the file itself and is
//! ignored). Comments (doc links among them) are not dependencies. Declaring
//! a child module is not an import; a parent that uses a child's names does
//! import it.
//!
//! `BATON_LAYERING_SRC=path/to/src` points the check at another tree (e.g.
//! an older checkout, to see what it reports there).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module path: `["tenant", "state"]` for `tenant/state.rs`.
type ModPath = Vec<String>;

/// Every `.rs` file under `src`, by module path.
fn modules(src: &Path) -> BTreeMap<ModPath, PathBuf> {
    let mut found = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read host/src") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let relative = path.strip_prefix(src).expect("under src").with_extension("");
            let mut parts: ModPath = relative.iter().map(|p| p.to_string_lossy().into_owned()).collect();
            if matches!(parts.last().map(String::as_str), Some("mod" | "lib" | "main")) {
                parts.pop();
            }
            if parts.is_empty() && path.file_name().is_some_and(|n| n == "main.rs") {
                // The binary is its own crate root; it uses the library by name.
                continue;
            }
            found.insert(parts, path);
        }
    }
    found
}

/// The code of a file without its comments (line comments, doc comments and
/// block comments), so that doc links do not count as imports.
fn without_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    let mut in_string = false;
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            match c {
                '\\' => out.extend(chars.next()),
                '"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match (c, chars.peek()) {
            ('"', _) => {
                in_string = true;
                out.push(c);
            }
            ('/', Some('/')) => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            ('/', Some('*')) => {
                chars.next();
                let mut last = ' ';
                for c in chars.by_ref() {
                    if last == '*' && c == '/' {
                        break;
                    }
                    last = c;
                }
            }
            _ => out.push(c),
        }
    }
    out
}

/// Expands the use tree or path starting at `text` (just after `crate::` or
/// `super::`) into full paths relative to that root.
fn expand(text: &str) -> Vec<ModPath> {
    fn tree(s: &[u8], at: &mut usize, prefix: &ModPath, out: &mut Vec<ModPath>) {
        let mut path = prefix.clone();
        loop {
            while *at < s.len() && s[*at].is_ascii_whitespace() {
                *at += 1;
            }
            if *at < s.len() && s[*at] == b'{' {
                *at += 1;
                loop {
                    tree(s, at, &path, out);
                    while *at < s.len() && s[*at].is_ascii_whitespace() {
                        *at += 1;
                    }
                    match s.get(*at) {
                        Some(b',') => *at += 1,
                        Some(b'}') => {
                            *at += 1;
                            return;
                        }
                        _ => return,
                    }
                    while *at < s.len() && s[*at].is_ascii_whitespace() {
                        *at += 1;
                    }
                    if s.get(*at) == Some(&b'}') {
                        *at += 1;
                        return;
                    }
                }
            }
            let start = *at;
            while *at < s.len() && (s[*at].is_ascii_alphanumeric() || s[*at] == b'_') {
                *at += 1;
            }
            if start == *at {
                out.push(path);
                return;
            }
            let ident = String::from_utf8_lossy(&s[start..*at]).into_owned();
            if ident != "self" {
                path.push(ident);
            }
            if s[*at..].starts_with(b"::") {
                *at += 2;
            } else {
                out.push(path);
                return;
            }
        }
    }
    let mut out = Vec::new();
    tree(text.as_bytes(), &mut 0, &Vec::new(), &mut out);
    out
}

/// The modules a file declares in files of their own (`mod x;`).
fn declared_children(code: &str) -> Vec<String> {
    code.lines()
        .filter_map(|line| {
            let line = line.trim();
            let rest = line.strip_prefix("mod ").or_else(|| {
                let (visibility, rest) = line.split_once(' ')?;
                visibility.starts_with("pub").then_some(rest)?.strip_prefix("mod ")
            })?;
            Some(rest.strip_suffix(';')?.trim().to_owned())
        })
        .collect()
}

/// The file a path names: the deepest module that is a prefix of it.
fn resolve(path: &[String], files: &BTreeMap<ModPath, PathBuf>) -> Option<ModPath> {
    (0..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|p| files.contains_key(p))
}

/// Which files each file imports.
fn imports(files: &BTreeMap<ModPath, PathBuf>) -> BTreeMap<ModPath, BTreeSet<ModPath>> {
    let mut graph = BTreeMap::new();
    for (module, file) in files {
        let code = without_comments(&std::fs::read_to_string(file).expect("read source"));
        let mut targets = Vec::new();
        for (at, _) in code.match_indices("crate::") {
            let before = code[..at].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue; // e.g. `$crate::`, `my_crate::`
            }
            targets.extend(expand(&code[at + "crate::".len()..]));
        }
        for child in declared_children(&code) {
            let prefix = format!("{child}::");
            for (at, _) in code.match_indices(&prefix) {
                let before = code[..at].chars().next_back();
                if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                    continue; // a longer name, or a path through something else
                }
                let base: ModPath = module.iter().cloned().chain([child.clone()]).collect();
                for tail in expand(&code[at + prefix.len()..]) {
                    targets.push(base.iter().cloned().chain(tail).collect());
                }
            }
        }
        for line in code.lines() {
            let Some(rest) = line
                .strip_prefix("use super::")
                .or_else(|| line.strip_prefix("pub use super::"))
            else {
                continue;
            };
            // `super` of `a/b.rs` is `a`, and of `a/b/mod.rs` too.
            let Some((_, parent)) = module.split_last() else {
                continue;
            };
            for tail in expand(rest) {
                targets.push(parent.iter().cloned().chain(tail).collect());
            }
        }
        let uses: BTreeSet<ModPath> = targets
            .iter()
            .filter_map(|path| resolve(path, files))
            .filter(|target| target != module)
            .collect();
        graph.insert(module.clone(), uses);
    }
    graph
}

/// The cycles of the graph: its strongly connected components of more than
/// one file (Tarjan's algorithm).
fn cycles(graph: &BTreeMap<ModPath, BTreeSet<ModPath>>) -> Vec<Vec<ModPath>> {
    struct Walk<'a> {
        graph: &'a BTreeMap<ModPath, BTreeSet<ModPath>>,
        index: BTreeMap<&'a ModPath, usize>,
        low: BTreeMap<&'a ModPath, usize>,
        stack: Vec<&'a ModPath>,
        on_stack: BTreeSet<&'a ModPath>,
        found: Vec<Vec<ModPath>>,
    }
    impl<'a> Walk<'a> {
        fn visit(&mut self, v: &'a ModPath) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in &self.graph[v] {
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[w].min(self.low[v]);
                    self.low.insert(v, low);
                } else if self.on_stack.contains(w) {
                    let low = self.index[w].min(self.low[v]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    component.push(w.clone());
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
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !walk.index.contains_key(v) {
            walk.visit(v);
        }
    }
    walk.found
}

fn name(module: &ModPath) -> String {
    if module.is_empty() {
        "lib".into()
    } else {
        module.join("/")
    }
}

#[test]
fn host_files_import_each_other_without_a_cycle() {
    let src = std::env::var_os("BATON_LAYERING_SRC")
        .map_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), PathBuf::from);
    let files = modules(&src);
    let graph = imports(&files);
    let arrows: usize = graph.values().map(BTreeSet::len).sum();
    // A reader that found nothing would pass vacuously.
    assert!(
        files.len() > 30 && arrows > 80,
        "read {} files, {arrows} imports",
        files.len()
    );
    let found = cycles(&graph);
    let report: Vec<String> = found
        .iter()
        .map(|c| c.iter().map(name).collect::<Vec<_>>().join(" <-> "))
        .collect();
    assert!(
        found.is_empty(),
        "{} files, {arrows} imports: files in host/src import each other in a circle \
         (move the shared data type to a file below both):\n{}",
        files.len(),
        report.join("\n")
    );
    eprintln!("host/src: {} files, {arrows} imports, no cycle", files.len());
}

#[test]
fn the_reader_sees_use_trees_and_cycles() {
    let paths = expand("tenant::{self, state::{Status, TenantShared}, Command};");
    assert_eq!(
        paths,
        vec![
            vec!["tenant".to_owned()],
            vec!["tenant".into(), "state".into(), "Status".into()],
            vec!["tenant".into(), "state".into(), "TenantShared".into()],
            vec!["tenant".into(), "Command".into()],
        ]
    );
    assert_eq!(
        declared_children("mod a;\npub(crate) mod b;\nmod c {\n"),
        vec!["a", "b"]
    );
    assert_eq!(
        without_comments("a // crate::x\nb /* crate::y */ \"//\""),
        "a \nb  \"//\""
    );
    let m = |s: &str| -> ModPath { s.split('/').map(str::to_owned).collect() };
    let graph: BTreeMap<ModPath, BTreeSet<ModPath>> = [
        (m("a"), [m("b")].into()),
        (m("b"), [m("c")].into()),
        (m("c"), [m("a")].into()),
        (m("d"), [m("a")].into()),
    ]
    .into();
    assert_eq!(cycles(&graph), vec![vec![m("a"), m("b"), m("c")]]);
}
