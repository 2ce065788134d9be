//! Giving up privileges before any model is loaded: a daemon started as root (only with
//! `--allow-root`) becomes the `steadytext` user, sets `PR_SET_NO_NEW_PRIVS`, and drops every
//! capability; then it checks that no capability is left. Runs before any thread exists.

use std::ffi::CString;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// The user a daemon started as root switches to.
pub const SERVICE_USER: &str = "steadytext";

/// Drops privileges. As root (which needs `allow_root`): becomes [`SERVICE_USER`] when that user
/// exists, handing it `state_dir` and the socket files it must remove at exit; otherwise (no
/// such user, e.g. a build machine) it stays uid 0, without any capability. In every case it
/// sets no-new-privileges, empties every capability set and checks that they are empty.
pub fn drop_privileges(allow_root: bool, state_dir: &Path, owned: &[&Path]) -> Result<()> {
    use caps::CapSet;
    let root = crate::fsutil::euid() == 0;
    if root && !allow_root {
        bail!("refusing to run as root: run as the steadytext user (the systemd unit does), or pass --allow-root to switch to it (with every capability dropped)");
    }
    // SAFETY: prctl with these arguments only sets a flag on this process.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error()).context("cannot set no-new-privileges");
    }
    // Emptying the bounding set needs CAP_SETPCAP: it works as root and is a no-op otherwise
    // (the unit's empty CapabilityBoundingSet= has emptied it already).
    for cap in caps::all() {
        caps::drop(None, CapSet::Bounding, cap).ok();
    }
    if root {
        match service_user()? {
            Some((uid, gid)) => become_user(uid, gid, state_dir, owned)?,
            None => tracing::warn!(
                "running as root: there is no {SERVICE_USER} user to switch to (create it with `systemd-sysusers`, the package does); every capability is dropped"
            ),
        }
    }
    caps::clear(None, CapSet::Ambient).ok();
    // capset(2) only where something is held: the unit's seccomp filter refuses the call itself.
    for set in [CapSet::Inheritable, CapSet::Effective, CapSet::Permitted] {
        if !caps::read(None, set).with_context(|| format!("cannot read the {set:?} capabilities"))?.is_empty() {
            caps::clear(None, set).with_context(|| format!("cannot drop the {set:?} capabilities"))?;
        }
    }
    for set in [CapSet::Effective, CapSet::Permitted, CapSet::Inheritable, CapSet::Ambient] {
        let left = caps::read(None, set).with_context(|| format!("cannot read the {set:?} capabilities"))?;
        if !left.is_empty() {
            bail!("capabilities left in the {set:?} set after dropping them all: {left:?}");
        }
    }
    let bounding = caps::read(None, CapSet::Bounding).map(|c| c.len()).unwrap_or(0);
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    tracing::info!(uid, bounding_set = bounding, "no capabilities held (effective, permitted, inheritable, ambient)");
    Ok(())
}

/// The uid and gid of [`SERVICE_USER`], if it exists.
fn service_user() -> Result<Option<(u32, u32)>> {
    let name = CString::new(SERVICE_USER).expect("no NUL in the name");
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 4096];
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer refers to live buffers of the given sizes.
    let rc = unsafe { libc::getpwnam_r(name.as_ptr(), &mut pwd, buf.as_mut_ptr(), buf.len(), &mut found) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc)).context("cannot look up the steadytext user");
    }
    Ok((!found.is_null()).then_some((pwd.pw_uid, pwd.pw_gid)))
}

/// Hands `state_dir` and `owned` to the user, then switches to it for good.
fn become_user(uid: u32, gid: u32, state_dir: &Path, owned: &[&Path]) -> Result<()> {
    crate::fsutil::private_dir(state_dir).context("cannot create the state folder")?;
    for path in std::iter::once(state_dir).chain(owned.iter().copied()) {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .with_context(|| format!("cannot give {} to the {SERVICE_USER} user", path.display()))?;
    }
    // SAFETY: plain syscalls; no other thread exists yet, so the switch covers the whole process.
    unsafe {
        if libc::setgroups(0, std::ptr::null()) != 0 || libc::setgid(gid) != 0 || libc::setuid(uid) != 0 {
            return Err(std::io::Error::last_os_error()).context("cannot switch to the steadytext user");
        }
        if libc::setuid(0) == 0 {
            bail!("switched to the {SERVICE_USER} user but could switch back to root");
        }
    }
    tracing::info!(uid, gid, "started as root: switched to the {SERVICE_USER} user");
    Ok(())
}
