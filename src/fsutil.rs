//! Crash-safe file writing (temp file, fsync, rename, fsync of the directory) and private state
//! folders (0700, files 0600), whatever the umask.

use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

/// Suffix marking temporary files; leftovers of a crash are safe to delete.
pub const TEMP_MARK: &str = ".tmp-";

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// This process's effective user id.
pub(crate) fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// Bytes an unprivileged user may still write to the file system holding `path`.
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "a path with a NUL byte"))?;
    let mut stats = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c_path` is a NUL-terminated string that outlives the call; `stats` points to
    // writable memory of the struct's size, which statvfs fills when it returns 0.
    if unsafe { libc::statvfs(c_path.as_ptr(), stats.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it initialized the struct.
    let stats = unsafe { stats.assume_init() };
    Ok(stats.f_bavail.saturating_mul(stats.f_frsize))
}

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

/// Creates `dir` (and missing parents) as 0700, or makes an existing one 0700: state folders are
/// private whatever the umask. A folder we do not own is left as it is, with a warning.
pub fn private_dir(dir: &Path) -> Result<()> {
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| Error::io(dir, e))?;
    let mode = std::fs::metadata(dir).map_err(|e| Error::io(dir, e))?.permissions().mode();
    if mode & 0o077 != 0 {
        if let Err(e) = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)) {
            tracing::warn!(dir = %dir.display(), error = %e, "state folder is readable by others and cannot be made private");
        }
    }
    Ok(())
}

/// Writes `parts` to `path` atomically: readers see the old file or the whole new one. The file
/// gets exactly `mode` (e.g. 0o600 for state), whatever the umask.
pub fn write_atomic(path: &Path, parts: &[&[u8]], mode: u32) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!("{name}{TEMP_MARK}{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed)));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(|e| Error::io(&tmp, e))?;
        file.set_permissions(std::fs::Permissions::from_mode(mode)).map_err(|e| Error::io(&tmp, e))?;
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

/// The memory limit of this process's cgroup (v2 `memory.max`, what systemd's `MemoryMax=`
/// sets), in bytes; None when there is none or it cannot be read.
pub(crate) fn cgroup_memory_max() -> Option<u64> {
    let membership = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = membership.lines().find_map(|l| l.strip_prefix("0::"))?;
    let max = std::fs::read_to_string(format!("/sys/fs/cgroup{}/memory.max", path.trim_end())).ok()?;
    max.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_is_private_whatever_the_umask() {
        // SAFETY: umask has no preconditions; 022 is what a shell usually sets.
        let old = unsafe { libc::umask(0o022) };
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/state");
        private_dir(&dir).unwrap();
        write_atomic(&dir.join("f"), &[b"x"], 0o600).unwrap();
        let loose = root.path().join("loose");
        std::fs::create_dir(&loose).unwrap();
        private_dir(&loose).unwrap();
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("f")), 0o600);
        assert_eq!(mode(&loose), 0o700, "an existing folder is made private");
    }
}
