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

/// Where `tenant` falls among all names, in basis points (0 to 9,999):
/// the first eight bytes of the SHA-256 of the name. A rollout by percent
/// takes the tenants below its share; computed once per tenant task.
pub fn share_of(tenant: &str) -> u16 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(tenant.as_bytes());
    let head = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
    (head % 10_000) as u16
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
