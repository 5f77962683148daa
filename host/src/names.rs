//! Names of plugins and tenants: `[a-z0-9][a-z0-9_-]*`, at most 63 bytes.
//! They appear in paths, file names, metric labels and storage keys, so
//! nothing else is accepted anywhere.

/// The longest name.
pub const MAX_LEN: usize = 63;

fn is_name(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_LEN
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_' || *b == b'-')
}

/// Whether `s` is a valid plugin name (the stem of `<name>.wasm`).
pub fn is_plugin(s: &str) -> bool {
    is_name(s)
}

/// Whether `s` is a valid tenant name.
pub fn is_tenant(s: &str) -> bool {
    is_name(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["echo", "a", "0", "chat-v2", "my_plugin"] {
            assert!(is_plugin(good), "{good}");
        }
        for bad in ["", "-x", "_x", "Echo", "a.b", "a/b", "é", &"a".repeat(64)] {
            assert!(!is_plugin(bad), "{bad}");
        }
    }
}
