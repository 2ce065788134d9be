//! Files holding secrets (API keys, TLS keys and certificates): bounded in size, and private
//! ones refused when other users may read or change them.

use std::path::Path;

use crate::error::{Error, Result};

use super::MAX_SECRET_BYTES;

/// Reads a private file (an API key, a TLS private key) after checking that other users can
/// neither read nor change it (as ssh does for private keys): the owner and its group only.
pub(crate) fn read_private_file(path: &Path) -> Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).map_err(|e| Error::io(path, e))?.permissions().mode() & 0o777;
    if mode & 0o027 != 0 {
        return Err(Error::Config(format!(
            "{} is open to other users (mode {mode:04o}): it holds a secret; `chmod 600` it (or 640 for the \
             daemon's group), or pass it as a systemd credential",
            path.display()
        )));
    }
    read_secret_file(path)
}

/// Reads a key or certificate file of at most [`MAX_SECRET_BYTES`].
pub(crate) fn read_secret_file(path: &Path) -> Result<String> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::Read::take(file, MAX_SECRET_BYTES + 1), &mut text)
        .map_err(|e| Error::io(path, e))?;
    if text.len() as u64 > MAX_SECRET_BYTES {
        return Err(Error::Config(format!("{} is larger than {MAX_SECRET_BYTES} bytes", path.display())));
    }
    Ok(text)
}
