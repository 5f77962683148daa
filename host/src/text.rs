//! Bounding text that comes from plugins, clients or wasmtime before the host
//! stores, logs or sends it: log lines, error messages and close reasons are
//! all cut at a byte limit, on a character boundary.

/// The longest prefix of `text` of at most `max` bytes that ends on a
/// character boundary.
pub fn prefix(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// `text` cut to at most `max` bytes, the cut marked with `…`.
pub fn ellipsized(mut text: String, max: usize) -> String {
    if text.len() > max {
        let end = prefix(&text, max).len();
        text.truncate(end);
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_fall_on_character_boundaries() {
        assert_eq!(prefix("ééé", 5), "éé");
        assert_eq!(prefix("abc", 3), "abc");
        assert_eq!(prefix("abc", 0), "");
        assert_eq!(ellipsized("ééé".into(), 3), "é…");
        assert_eq!(ellipsized("abc".into(), 3), "abc");
    }
}

/// Bytes in JSON as standard base64 text (`#[serde(with = ...)]`).
pub mod base64_bytes {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes the bytes as base64.
    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    /// Reads base64 text back into bytes.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}
