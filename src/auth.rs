//! The API key TCP clients must present: read once (systemd credential `api-key`, else the
//! configured file), kept only as a sha256 digest, compared in constant time.

use std::path::Path;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::{Error, Result};

/// Shortest key accepted, in bytes (after trimming whitespace).
pub const MIN_KEY_BYTES: usize = 16;

/// Name of the systemd credential holding the key (`LoadCredential=api-key:FILE`).
pub const CREDENTIAL: &str = "api-key";

/// A loaded API key.
pub struct ApiKey([u8; 32]);

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(..)")
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.trim().as_bytes()).into()
}

impl ApiKey {
    /// A key from its text; surrounding whitespace (a file's newline) is ignored.
    pub fn new(secret: &str, source: &str) -> Result<Self> {
        if secret.trim().len() < MIN_KEY_BYTES {
            return Err(Error::Config(format!(
                "the API key in {source} is shorter than {MIN_KEY_BYTES} characters; make one with `openssl rand -hex 32`"
            )));
        }
        Ok(ApiKey(digest(secret)))
    }

    /// Whether `given` is the key (constant time in the key's contents).
    pub fn verify(&self, given: &str) -> bool {
        digest(given).ct_eq(&self.0).into()
    }

    /// The key from the systemd credential `api-key` (`$CREDENTIALS_DIRECTORY`), else from
    /// `file`; None when neither is there.
    pub fn load(file: Option<&Path>) -> Result<Option<Self>> {
        if let Some(text) = crate::env::credential(CREDENTIAL)? {
            return Self::new(&text, &format!("the credential {CREDENTIAL}")).map(Some);
        }
        let Some(file) = file else { return Ok(None) };
        let text = crate::config::read_private_file(file)?;
        Self::new(&text, &file.display().to_string()).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_verify_exactly_and_short_keys_are_refused() {
        let key = ApiKey::new("0123456789abcdef0123\n", "test").unwrap();
        assert!(key.verify("0123456789abcdef0123"));
        assert!(!key.verify("0123456789abcdef0124"));
        assert!(!key.verify(""));
        assert!(ApiKey::new("short", "test").is_err());
        assert_eq!(format!("{key:?}"), "ApiKey(..)", "the key never reaches a log");
    }

    #[test]
    fn the_key_file_is_read_when_there_is_no_credential() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "a-key-of-enough-length\n").unwrap();
        let mode = |m| std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(m)).unwrap();
        if std::env::var_os("CREDENTIALS_DIRECTORY").is_none() {
            mode(0o644);
            let open = ApiKey::load(Some(&path)).unwrap_err().to_string();
            assert!(open.contains("mode 0644") && open.contains("chmod 600"), "{open}");
            mode(0o640);
            assert!(ApiKey::load(Some(&path)).unwrap().unwrap().verify("a-key-of-enough-length"));
            assert!(ApiKey::load(None).unwrap().is_none());
        }
        assert!(ApiKey::load(Some(&dir.path().join("missing"))).is_err());
    }
}
