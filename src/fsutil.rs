//! Crash-safe file writing: temp file, fsync, rename, fsync of the directory.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

/// Suffix marking temporary files; leftovers of a crash are safe to delete.
pub const TEMP_MARK: &str = ".tmp-";

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Streams `path` through sha256; returns its length and hex digest.
pub fn sha256_file(path: &Path) -> std::io::Result<(u64, String)> {
    use sha2::{Digest, Sha256};
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok((len, hex::encode(hasher.finalize())));
        }
        len += n as u64;
        hasher.update(&buf[..n]);
    }
}

/// Writes `parts` to `path` atomically: readers see the old file or the whole new one.
pub fn write_atomic(path: &Path, parts: &[&[u8]]) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!("{name}{TEMP_MARK}{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed)));
    let result = (|| {
        let mut file =
            std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp).map_err(|e| Error::io(&tmp, e))?;
        for part in parts {
            file.write_all(part).map_err(|e| Error::io(&tmp, e))?;
        }
        file.sync_all().map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::io(dir, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
