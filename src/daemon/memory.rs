//! Giving memory back to the system after large work (glibc keeps freed memory in its arenas).

/// Requests (and jobs) larger than this many bytes leave memory behind that is worth giving back.
pub(crate) const LARGE_REQUEST_BYTES: usize = 1 << 20;

/// Returns freed heap memory to the system (glibc keeps it in its arenas otherwise).
pub(crate) fn release_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}
