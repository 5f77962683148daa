//! Every plugin built from `plugins/` is used by some test: a fixture nobody
//! uses is dead weight or a forgotten test.

#[test]
fn every_built_plugin_is_used_by_a_test() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/integration");
    let mut sources = String::new();
    for entry in std::fs::read_dir(&dir).expect("tests folder") {
        let path = entry.expect("entry").path();
        if path.file_name().is_some_and(|n| n != "fixtures.rs") && path.extension().is_some_and(|e| e == "rs") {
            sources.push_str(&std::fs::read_to_string(&path).expect("source"));
        }
    }
    let words: std::collections::HashSet<&str> = sources
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .collect();
    for (name, _) in baton_test_plugins::ALL {
        let constant = name.to_uppercase().replace('-', "_");
        assert!(
            words.contains(constant.as_str()),
            "plugin {name} (baton_test_plugins::{constant}) is used by no test"
        );
    }
}
