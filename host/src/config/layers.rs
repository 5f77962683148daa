//! Configuration layers as TOML tables: the `BATON_*` environment turned
//! into one, and merging one table over another key by key.

/// The `BATON_*` variables as a TOML table.
pub fn env_layer(env: impl IntoIterator<Item = (String, String)>) -> toml::Table {
    let mut table = toml::Table::new();
    for (key, value) in env {
        let Some(path) = key.strip_prefix("BATON_") else {
            continue;
        };
        let parts: Vec<String> = path.split("__").map(|p| p.to_ascii_lowercase()).collect();
        let value = format!("v = {value}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or(toml::Value::String(value));
        insert_path(&mut table, &parts, value);
    }
    table
}

fn insert_path(table: &mut toml::Table, path: &[String], value: toml::Value) {
    match path {
        [] => {}
        [last] => {
            table.insert(last.clone(), value);
        }
        [first, rest @ ..] => {
            let entry = table
                .entry(first.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let toml::Value::Table(inner) = entry {
                insert_path(inner, rest, value);
            }
        }
    }
}

pub fn merge(into: &mut toml::Table, from: toml::Table) {
    for (key, value) in from {
        match (into.get_mut(&key), value) {
            (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}
