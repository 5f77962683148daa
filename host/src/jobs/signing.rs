//! Standard Webhooks signatures (standard-webhooks 1.0): a secret is
//! `whsec_` + base64 of its key bytes; a message is signed as
//! `v1,` + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")) in the
//! `webhook-signature` header, beside `webhook-id` and `webhook-timestamp`
//! (Unix seconds).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The prefix of a secret.
pub const SECRET_PREFIX: &str = "whsec_";

/// A new random secret (24 key bytes, as Svix's).
pub fn new_secret() -> Result<String, String> {
    let mut key = [0u8; 24];
    getrandom::fill(&mut key).map_err(|e| format!("no randomness for a secret: {e}"))?;
    Ok(format!("{SECRET_PREFIX}{}", STANDARD.encode(key)))
}

/// The key bytes of `secret`, or why it is not one.
pub fn key_of(secret: &str) -> Result<Vec<u8>, String> {
    let encoded = secret
        .strip_prefix(SECRET_PREFIX)
        .ok_or_else(|| format!("a webhook secret starts with {SECRET_PREFIX:?}"))?;
    let key = STANDARD
        .decode(encoded)
        .map_err(|e| format!("a webhook secret is {SECRET_PREFIX} and base64: {e}"))?;
    if !(16..=64).contains(&key.len()) {
        return Err("a webhook secret has 16 to 64 key bytes".into());
    }
    Ok(key)
}

/// The `webhook-signature` value of a message.
pub fn signature(key: &[u8], id: &str, timestamp: u64, body: &[u8]) -> String {
    // HMAC takes a key of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC keys have any length"));
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks reference libraries.
    #[test]
    fn signs_as_the_reference_libraries() {
        let key = key_of("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("a valid secret");
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            signature(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn secrets_are_checked() {
        let secret = new_secret().expect("randomness");
        assert_eq!(key_of(&secret).expect("valid").len(), 24);
        assert!(key_of("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(key_of("whsec_!!").is_err());
        assert!(key_of("whsec_AAAA").is_err(), "too short");
    }
}
