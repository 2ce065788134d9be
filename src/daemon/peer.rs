//! Who is on the other end of a connection (`SO_PEERCRED` on Unix sockets, the address on TCP),
//! for per-peer connection caps and for admin methods.

use std::collections::HashMap;
use std::ffi::CString;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// The other end of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Peer {
    /// A local process, by user and primary group id.
    Local {
        /// User id.
        uid: u32,
        /// Primary group id.
        gid: u32,
    },
    /// A TCP client, by address.
    Remote(IpAddr),
}

/// What connections are counted by: the user, or the address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum PeerKey {
    Uid(u32),
    Ip(IpAddr),
}

impl Peer {
    /// The peer of a Unix stream (None if the kernel does not say).
    pub(crate) fn of_unix(stream: &tokio::net::UnixStream) -> Option<Peer> {
        stream.peer_cred().ok().map(|c| Peer::Local { uid: c.uid(), gid: c.gid() })
    }

    /// Whether it came over TCP (and must authenticate first).
    pub(crate) fn is_tcp(&self) -> bool {
        matches!(self, Peer::Remote(_))
    }

    fn key(&self) -> PeerKey {
        match *self {
            Peer::Local { uid, .. } => PeerKey::Uid(uid),
            Peer::Remote(ip) => PeerKey::Ip(ip),
        }
    }

    /// Whether it may run admin methods (`cache.clear`, `cache.snapshot`): root, the daemon's
    /// own user, or a member of the admin group. TCP clients never are.
    pub(crate) fn is_admin(&self, admin_gid: Option<u32>) -> bool {
        let Peer::Local { uid, gid } = *self else { return false };
        if uid == 0 || uid == crate::fsutil::euid() {
            return true;
        }
        admin_gid.is_some_and(|admin| gid == admin || groups_of(uid).contains(&admin))
    }
}

/// The supplementary groups of the user `uid` (empty when it cannot be looked up).
fn groups_of(uid: u32) -> Vec<u32> {
    let Some((name, gid)) = user(uid) else { return Vec::new() };
    let Ok(name) = CString::new(name) else { return Vec::new() };
    let mut groups = vec![0 as libc::gid_t; 64];
    for _ in 0..4 {
        let mut n = groups.len() as libc::c_int;
        // SAFETY: name is NUL-terminated; groups has room for n entries; n is updated on return.
        let rc = unsafe { libc::getgrouplist(name.as_ptr(), gid, groups.as_mut_ptr(), &mut n) };
        if rc >= 0 {
            groups.truncate(n.max(0) as usize);
            return groups;
        }
        groups.resize((n.max(0) as usize).max(groups.len() * 2), 0);
    }
    Vec::new()
}

/// Name and primary group of the user `uid`.
fn user(uid: u32) -> Option<(String, u32)> {
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 4096];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer refers to live buffers of the given sizes; result is set by the call.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) };
    if rc != 0 || result.is_null() {
        return None;
    }
    // SAFETY: on success pw_name points to a NUL-terminated string inside buf.
    let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) }.to_string_lossy().into_owned();
    Some((name, pwd.pw_gid))
}

/// The id of the group named `name`.
pub(crate) fn group_id(name: &str) -> Option<u32> {
    let name = CString::new(name).ok()?;
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 4096];
    let mut result: *mut libc::group = std::ptr::null_mut();
    // SAFETY: as in `user`.
    let rc = unsafe { libc::getgrnam_r(name.as_ptr(), &mut grp, buf.as_mut_ptr(), buf.len(), &mut result) };
    (rc == 0 && !result.is_null()).then_some(grp.gr_gid)
}

/// Whether the peer of the socket `fd` has closed it (on a Unix socket a full close; over TCP, `tcp`, a FIN
/// counts too: a closed client cannot be told from one that only shut down its sending side).
pub(crate) fn hung_up(fd: std::os::fd::RawFd, tcp: bool) -> bool {
    let events = if tcp { libc::POLLRDHUP } else { 0 };
    let mut pfd = libc::pollfd { fd, events, revents: 0 };
    // SAFETY: one valid pollfd, zero timeout; the caller's fd is a live socket of its connection.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    n > 0 && pfd.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLRDHUP) != 0
}

/// Open connections per peer.
#[derive(Default)]
pub(crate) struct PeerTable(Arc<Mutex<HashMap<PeerKey, usize>>>);

/// One counted connection; uncounted on drop.
pub(crate) struct PeerSlot {
    table: Arc<Mutex<HashMap<PeerKey, usize>>>,
    key: PeerKey,
}

impl PeerTable {
    /// Counts a connection of `peer`, unless it already has `max` open; returns how many it has.
    pub(crate) fn admit(&self, peer: &Peer, max: usize) -> Result<PeerSlot, usize> {
        let mut table = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let open = table.entry(peer.key()).or_default();
        if *open >= max {
            return Err(*open);
        }
        *open += 1;
        Ok(PeerSlot { table: self.0.clone(), key: peer.key() })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(open) = table.get_mut(&self.key) {
            *open -= 1;
            if *open == 0 {
                table.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_peer_gets_its_own_cap() {
        let table = PeerTable::default();
        let alice = Peer::Local { uid: 1000, gid: 1000 };
        let bob = Peer::Local { uid: 1001, gid: 1001 };
        let a1 = table.admit(&alice, 2).unwrap();
        let _a2 = table.admit(&alice, 2).unwrap();
        assert_eq!(table.admit(&alice, 2).err(), Some(2));
        assert!(table.admit(&bob, 2).is_ok(), "another user is not affected");
        drop(a1);
        assert!(table.admit(&alice, 2).is_ok(), "a closed connection frees its slot");
    }

    #[test]
    fn admins_are_root_the_daemon_user_or_the_admin_group() {
        assert!(Peer::Local { uid: 0, gid: 0 }.is_admin(None));
        let me = crate::fsutil::euid();
        assert!(Peer::Local { uid: me, gid: 12345 }.is_admin(None));
        let stranger = Peer::Local { uid: 54321, gid: 54321 };
        if me != 54321 {
            assert!(!stranger.is_admin(None));
            assert!(stranger.is_admin(Some(54321)), "primary group");
        }
        assert!(!Peer::Remote("127.0.0.1".parse().unwrap()).is_admin(Some(0)));
        assert_eq!(group_id("root"), Some(0));
    }
}
