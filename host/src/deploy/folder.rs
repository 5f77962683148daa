//! What the deploy folder holds: `<name>.wasm` is plugin `<name>`, and
//! `<name>.toml` beside it its settings. Hidden files, temporary files and
//! names that are not plugin names are ignored (a `.wasm` or `.toml` with a
//! bad name is logged, since it is probably a mistake).

use std::path::{Path, PathBuf};

/// What a path in the deploy folder is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeployFile {
    /// `<name>.wasm`.
    Plugin(String),
    /// `<name>.toml`.
    Settings(String),
}

impl DeployFile {
    /// The plugin it belongs to.
    pub fn name(&self) -> &str {
        match self {
            DeployFile::Plugin(name) | DeployFile::Settings(name) => name,
        }
    }
}

/// Classifies a path of the deploy folder; `None` for anything to ignore.
pub fn classify(path: &Path) -> Option<DeployFile> {
    let file = path.file_name()?.to_str()?;
    let (stem, ext) = file.rsplit_once('.')?;
    if !crate::names::is_plugin(stem) {
        if !file.starts_with('.') && matches!(ext, "wasm" | "toml") {
            tracing::warn!(file, "ignored: a plugin name is [a-z0-9][a-z0-9_-]*, at most 63 bytes");
        }
        return None;
    }
    match ext {
        "wasm" => Some(DeployFile::Plugin(stem.to_owned())),
        "toml" => Some(DeployFile::Settings(stem.to_owned())),
        _ => None,
    }
}

/// The plugins in `dir`: `(name, path of <name>.wasm)`, sorted by name.
pub fn plugin_files(dir: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if let Some(DeployFile::Plugin(name)) = classify(&path)
            && path.is_file()
        {
            files.push((name, path));
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plugin_files_count() {
        assert_eq!(
            classify(Path::new("d/echo.wasm")),
            Some(DeployFile::Plugin("echo".into()))
        );
        assert_eq!(
            classify(Path::new("d/echo.toml")),
            Some(DeployFile::Settings("echo".into()))
        );
        for ignored in [
            "d/.echo.wasm",
            "d/echo.wasm.tmp",
            "d/echo.wasm~",
            "d/.echo.wasm.123.tmp",
            "d/Echo.wasm",
            "d/echo.cwasm",
            "d/README",
        ] {
            assert_eq!(classify(Path::new(ignored)), None, "{ignored}");
        }
    }
}
