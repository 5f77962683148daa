//! The host's configuration, as `baton serve` reads it: a TOML file, then
//! `BATON_*` variables. Any input is accepted or refused with an error, never
//! a panic; an accepted configuration printed by `--print-config` reads back
//! as the same configuration (its admin token aside, which is redacted).
//!
//! Input: the file's text, then a NUL, then `KEY=VALUE` lines of environment.

#![no_main]

use baton::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (file, env) = text.split_once('\0').unwrap_or((&text, ""));
    let env: Vec<(String, String)> = env
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect();
    let Ok(config) = Config::from_sources(Some(("fuzz.toml".into(), file.to_owned())), env, toml::Table::new()) else {
        return;
    };
    let printed = config.to_toml();
    let mut again = Config::from_sources(Some(("printed".into(), printed.clone())), [], toml::Table::new())
        .unwrap_or_else(|e| panic!("--print-config output does not read back: {e}\n{printed}"));
    let mut original = config;
    original.admin_token = None;
    again.admin_token = None;
    assert_eq!(
        original, again,
        "--print-config output reads back differently:\n{printed}"
    );
});
