//! Cache snapshots on disk: a fixed header (magic, format version, creation time, payload length,
//! checksum) followed by an `rkyv` archive that is validated before use. Files are written
//! atomically; a damaged or foreign file is moved aside, never trusted.

use std::io::Read;
use std::path::{Path, PathBuf};

use rkyv::rancor::Error as RkyvError;
use rkyv::util::AlignedVec;
use rkyv::{Archive, Deserialize, Serialize};

use crate::engine::logprobs::StepLogprobs;
use crate::error::{Error, Result};
use crate::fsutil::{private_dir, write_atomic, TEMP_MARK};

/// First bytes of every snapshot file.
pub const MAGIC: [u8; 8] = *b"STXCACHE";
/// Version of the layout below. Version 1 files (before log-probabilities) are read and
/// converted; any other version is refused.
pub const FORMAT_VERSION: u32 = 2;
/// Header size; the archive starts at this (16-aligned) offset.
pub const HEADER_LEN: usize = 64;
/// Snapshots kept on disk (the newest ones).
pub const KEEP: usize = 2;

/// The archived payload.
#[derive(Debug, Clone, PartialEq, Archive, Serialize, Deserialize, Default)]
pub struct SnapshotData {
    /// Creation time, milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// Digests of the models the entries belong to; entries refer to them by index.
    pub models: Vec<String>,
    /// Logical clock of the generation map.
    pub generation_clock: u64,
    /// Logical clock of the embedding map.
    pub embedding_clock: u64,
    /// Generation entries.
    pub generation: Vec<GenerationRecord>,
    /// Embedding entries.
    pub embedding: Vec<EmbeddingRecord>,
}

/// One cached generation.
#[derive(Debug, Clone, PartialEq, Archive, Serialize, Deserialize)]
pub struct GenerationRecord {
    /// Cache key.
    pub key: [u8; 32],
    /// Index into `models`.
    pub model: u32,
    /// Aged hit count.
    pub hits: u32,
    /// Logical time of last use.
    pub last_used: u64,
    /// Generated text.
    pub text: String,
    /// Generated token ids.
    pub token_ids: Vec<u32>,
    /// Prompt length in tokens.
    pub prompt_tokens: u32,
    /// Finish reason code.
    pub finish_reason: u8,
    /// Log-probabilities, when the request asked for them.
    pub logprobs: Option<Vec<StepLogprobs>>,
}

/// The layout of format version 1, read to carry a cache over an upgrade.
mod v1 {
    use rkyv::{Archive, Deserialize, Serialize};

    use super::EmbeddingRecord;

    /// Version 1's payload.
    #[derive(Archive, Serialize, Deserialize)]
    pub struct SnapshotData {
        pub created_unix_ms: u64,
        pub models: Vec<String>,
        pub generation_clock: u64,
        pub embedding_clock: u64,
        pub generation: Vec<GenerationRecord>,
        pub embedding: Vec<EmbeddingRecord>,
    }

    /// Version 1's generation entry (no log-probabilities).
    #[derive(Archive, Serialize, Deserialize)]
    pub struct GenerationRecord {
        pub key: [u8; 32],
        pub model: u32,
        pub hits: u32,
        pub last_used: u64,
        pub text: String,
        pub token_ids: Vec<u32>,
        pub prompt_tokens: u32,
        pub finish_reason: u8,
    }

    impl From<SnapshotData> for super::SnapshotData {
        fn from(old: SnapshotData) -> Self {
            super::SnapshotData {
                created_unix_ms: old.created_unix_ms,
                models: old.models,
                generation_clock: old.generation_clock,
                embedding_clock: old.embedding_clock,
                generation: old
                    .generation
                    .into_iter()
                    .map(|g| super::GenerationRecord {
                        key: g.key,
                        model: g.model,
                        hits: g.hits,
                        last_used: g.last_used,
                        text: g.text,
                        token_ids: g.token_ids,
                        prompt_tokens: g.prompt_tokens,
                        finish_reason: g.finish_reason,
                        logprobs: None,
                    })
                    .collect(),
                embedding: old.embedding,
            }
        }
    }
}

/// One cached embedding.
#[derive(Debug, Clone, PartialEq, Archive, Serialize, Deserialize)]
pub struct EmbeddingRecord {
    /// Cache key.
    pub key: [u8; 32],
    /// Index into `models`.
    pub model: u32,
    /// Aged hit count.
    pub hits: u32,
    /// Logical time of last use.
    pub last_used: u64,
    /// The vector.
    pub vector: Vec<f32>,
}

/// Serializes `data`, made by the engine `engine` ([`crate::engine::fingerprint`]), into the file
/// format (header + archive).
pub fn encode(data: &SnapshotData, engine: u64) -> Result<Vec<u8>> {
    let payload =
        rkyv::to_bytes::<RkyvError>(data).map_err(|e| Error::Snapshot(format!("cannot serialize the cache: {e}")))?;
    Ok(frame(FORMAT_VERSION, data.created_unix_ms, engine, &payload))
}

/// Header and payload of a file of format `version`.
fn frame(version: u32, created: u64, engine: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&header(version, created, engine, payload));
    out.extend_from_slice(payload);
    out
}

/// Header layout: magic, format version, (4 spare), creation time, payload length, checksum,
/// engine fingerprint, (8 spare).
fn header(version: u32, created: u64, engine: u64, payload: &[u8]) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&version.to_le_bytes());
    h[16..24].copy_from_slice(&created.to_le_bytes());
    h[24..32].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    h[48..56].copy_from_slice(&engine.to_le_bytes());
    let sum = checksum(&h, payload);
    h[32..48].copy_from_slice(&sum.to_le_bytes());
    h
}

/// xxh3-128 over every header byte except the checksum field, then the payload.
fn checksum(header: &[u8], payload: &[u8]) -> u128 {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    hasher.update(&header[0..32]);
    hasher.update(&header[48..HEADER_LEN]);
    hasher.update(payload);
    hasher.digest128()
}

/// A validated snapshot, read into aligned memory; access the archive without copying.
#[derive(Debug)]
pub struct Loaded {
    payload: AlignedVec<16>,
    engine: u64,
}

impl Loaded {
    /// The fingerprint of the engine that made it (0: unknown).
    pub fn engine(&self) -> u64 {
        self.engine
    }

    /// The archived data (validated at load).
    pub fn data(&self) -> &ArchivedSnapshotData {
        // SAFETY: `decode` ran the validating `rkyv::access` on exactly these bytes.
        unsafe { rkyv::access_unchecked::<ArchivedSnapshotData>(&self.payload) }
    }
}

/// Checks and opens a snapshot held in `bytes`; every failure is an error, never a panic.
pub fn decode(bytes: &[u8]) -> std::result::Result<Loaded, String> {
    if bytes.len() < HEADER_LEN {
        return Err(format!("truncated: {} bytes, shorter than the header", bytes.len()));
    }
    let (h, rest) = bytes.split_at(HEADER_LEN);
    if h[0..8] != MAGIC {
        return Err("not a steadytext cache snapshot (bad magic)".into());
    }
    let version = u32::from_le_bytes(h[8..12].try_into().expect("4 bytes"));
    if version != FORMAT_VERSION && version != 1 {
        return Err(format!("format version {version}, this build reads 1 and {FORMAT_VERSION}"));
    }
    let len = u64::from_le_bytes(h[24..32].try_into().expect("8 bytes"));
    if len != rest.len() as u64 {
        return Err(format!("truncated or padded: header says {len} payload bytes, file has {}", rest.len()));
    }
    let sum = u128::from_le_bytes(h[32..48].try_into().expect("16 bytes"));
    if checksum(h, rest) != sum {
        return Err("checksum mismatch (damaged file)".into());
    }
    let engine = u64::from_le_bytes(h[48..56].try_into().expect("8 bytes"));
    let loaded = if version == 1 { upgrade_v1(rest)? } else { decode_payload(rest)? };
    Ok(Loaded { engine, ..loaded })
}

/// Validates a version 1 payload and re-archives it in the current layout.
fn upgrade_v1(rest: &[u8]) -> std::result::Result<Loaded, String> {
    let mut payload = AlignedVec::<16>::with_capacity(rest.len());
    payload.extend_from_slice(rest);
    let old = rkyv::from_bytes::<v1::SnapshotData, RkyvError>(&payload)
        .map_err(|e| format!("invalid version 1 archive: {e}"))?;
    let current = rkyv::to_bytes::<RkyvError>(&SnapshotData::from(old))
        .map_err(|e| format!("cannot convert a version 1 archive: {e}"))?;
    decode_payload(&current)
}

/// Validates a snapshot's payload (the rkyv archive after the header). The checksum guards
/// against damage, not against someone who can write the state folder: this validation is what
/// keeps a crafted archive from doing harm.
pub fn decode_payload(rest: &[u8]) -> std::result::Result<Loaded, String> {
    let mut payload = AlignedVec::<16>::with_capacity(rest.len());
    payload.extend_from_slice(rest);
    rkyv::access::<ArchivedSnapshotData, RkyvError>(&payload).map_err(|e| format!("invalid archive: {e}"))?;
    Ok(Loaded { payload, engine: 0 })
}

fn snapshot_name(created_unix_ms: u64) -> String {
    format!("cache-{created_unix_ms:016}.snapshot")
}

fn is_snapshot(name: &str) -> bool {
    name.starts_with("cache-") && name.ends_with(".snapshot") && !name.contains(TEMP_MARK)
}

/// Writes a snapshot into `dir` atomically and prunes older ones; returns its path and size.
pub fn write(dir: &Path, data: &SnapshotData, engine: u64) -> Result<(PathBuf, u64)> {
    private_dir(dir)?;
    let bytes = encode(data, engine)?;
    let path = dir.join(snapshot_name(data.created_unix_ms));
    write_atomic(&path, &[&bytes], 0o600)?;
    let mut existing = list(dir);
    existing.retain(|p| p != &path);
    for old in existing.into_iter().skip(KEEP - 1) {
        let _ = std::fs::remove_file(old);
    }
    Ok((path, bytes.len() as u64))
}

/// Snapshot files in `dir`, newest first.
fn list(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(is_snapshot))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files.reverse();
    files
}

/// Moves the snapshots of `old` (where an earlier layout kept them) into `dir` when `dir` has
/// none: the cache survives the move of its folder. Returns how many moved.
pub fn adopt(old: &Path, dir: &Path) -> usize {
    if old == dir || !list(dir).is_empty() {
        return 0;
    }
    let mut moved = 0;
    for path in list(old) {
        let Some(name) = path.file_name() else { continue };
        match private_dir(dir).and_then(|_| std::fs::rename(&path, dir.join(name)).map_err(|e| Error::io(&path, e))) {
            Ok(()) => moved += 1,
            Err(e) => tracing::warn!(error = %e, "cannot move a cache snapshot to the cache folder; it starts empty"),
        }
    }
    moved
}

/// Loads the newest valid snapshot of `dir`. Damaged or foreign files are logged and renamed to
/// `*.rejected`; leftovers of interrupted writes are removed.
pub fn load_newest(dir: &Path) -> Option<(PathBuf, Loaded)> {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for entry in rd.flatten() {
            if entry.file_name().to_string_lossy().contains(TEMP_MARK) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    for path in list(dir) {
        let read = std::fs::File::open(&path).and_then(|mut f| {
            let mut bytes = Vec::new();
            f.read_to_end(&mut bytes).map(|_| bytes)
        });
        let outcome = read.map_err(|e| e.to_string()).and_then(|bytes| decode(&bytes));
        match outcome {
            Ok(loaded) => return Some((path, loaded)),
            Err(why) => {
                let aside = path.with_extension("snapshot.rejected");
                tracing::warn!(path = %path.display(), reason = %why, moved_to = %aside.display(), "ignoring a cache snapshot");
                let _ = std::fs::rename(&path, &aside);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::logprobs::TokenLogprob;

    #[test]
    fn snapshots_move_to_a_new_folder_once() {
        let (old, new) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (written, _) = write(old.path(), &sample(), 7).unwrap();
        std::fs::write(old.path().join("models-note"), b"not a snapshot").unwrap();
        assert_eq!(adopt(old.path(), new.path()), 1);
        let (found, loaded) = load_newest(new.path()).unwrap();
        assert_eq!((found.file_name(), loaded.engine), (written.file_name(), 7));
        assert!(old.path().join("models-note").exists() && list(old.path()).is_empty());
        // A folder with snapshots of its own keeps them and takes none.
        write(old.path(), &SnapshotData { created_unix_ms: 1, ..sample() }, 7).unwrap();
        assert_eq!(adopt(old.path(), new.path()), 0);
        assert_eq!(list(old.path()).len(), 1);
    }

    fn sample() -> SnapshotData {
        SnapshotData {
            created_unix_ms: 1_700_000_000_000,
            models: vec!["sha256:aa".into(), "sha256:bb".into()],
            generation_clock: 9,
            embedding_clock: 4,
            generation: vec![GenerationRecord {
                key: [7; 32],
                model: 0,
                hits: 3,
                last_used: 8,
                text: "héllo".into(),
                token_ids: vec![1, 2, 3],
                prompt_tokens: 12,
                finish_reason: 1,
                logprobs: Some(vec![StepLogprobs {
                    chosen: TokenLogprob { token_id: 1, token: "h".into(), logprob: -0.25 },
                    top_logprobs: vec![TokenLogprob { token_id: 9, token: "é".into(), logprob: -1.5 }],
                    followed: Vec::new(),
                }]),
            }],
            embedding: vec![EmbeddingRecord {
                key: [9; 32],
                model: 1,
                hits: 1,
                last_used: 2,
                vector: vec![0.5, -1.25, f32::MIN_POSITIVE],
            }],
        }
    }

    #[test]
    fn round_trip() {
        let data = sample();
        let bytes = encode(&data, 7).unwrap();
        let loaded = decode(&bytes).unwrap();
        assert_eq!(loaded.engine(), 7);
        let back: SnapshotData = rkyv::deserialize::<SnapshotData, RkyvError>(loaded.data()).unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn damage_is_always_detected_never_a_panic() {
        let bytes = encode(&sample(), 7).unwrap();
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for len in 0..bytes.len() {
            assert!(decode(&bytes[..len]).is_err(), "truncation to {len} accepted");
        }
        for i in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[i / 8] ^= 1 << (i % 8);
            assert!(decode(&b).is_err(), "bit flip {i} accepted");
        }
        for _ in 0..2000 {
            let n = (next() % 512) as usize;
            let junk: Vec<u8> = (0..n).map(|_| next() as u8).collect();
            assert!(decode(&junk).is_err());
            let mut with_magic = bytes[..HEADER_LEN].to_vec();
            with_magic.extend_from_slice(&junk);
            assert!(decode(&with_magic).is_err());
        }
    }

    #[test]
    fn foreign_version_is_refused() {
        let mut bytes = encode(&sample(), 7).unwrap();
        bytes[8] = 3;
        assert!(decode(&bytes).unwrap_err().contains("format version 3"));
    }

    #[test]
    fn a_version_1_file_is_read_into_the_current_layout() {
        let current = sample();
        let old = v1::SnapshotData {
            created_unix_ms: current.created_unix_ms,
            models: current.models.clone(),
            generation_clock: current.generation_clock,
            embedding_clock: current.embedding_clock,
            generation: current
                .generation
                .iter()
                .map(|g| v1::GenerationRecord {
                    key: g.key,
                    model: g.model,
                    hits: g.hits,
                    last_used: g.last_used,
                    text: g.text.clone(),
                    token_ids: g.token_ids.clone(),
                    prompt_tokens: g.prompt_tokens,
                    finish_reason: g.finish_reason,
                })
                .collect(),
            embedding: current.embedding.clone(),
        };
        let payload = rkyv::to_bytes::<RkyvError>(&old).unwrap();
        let bytes = frame(1, old.created_unix_ms, 7, &payload);
        let loaded = decode(&bytes).unwrap();
        let back: SnapshotData = rkyv::deserialize::<SnapshotData, RkyvError>(loaded.data()).unwrap();
        let mut expected = current;
        expected.generation[0].logprobs = None;
        assert_eq!(back, expected);
        let mut damaged = bytes.clone();
        damaged[HEADER_LEN + 3] ^= 1;
        assert!(decode(&damaged).is_err());
    }

    #[test]
    fn newest_valid_wins_and_bad_ones_are_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let mut old = sample();
        old.created_unix_ms = 1;
        write(dir.path(), &old, 7).unwrap();
        let mut new = sample();
        new.created_unix_ms = 2;
        let (newest, _) = write(dir.path(), &new, 7).unwrap();
        std::fs::write(&newest, b"STXCACHE garbage").unwrap();
        std::fs::write(dir.path().join(format!("cache-x.snapshot{TEMP_MARK}1-1")), b"partial").unwrap();
        let (path, loaded) = load_newest(dir.path()).unwrap();
        assert!(path.ends_with(snapshot_name(1)));
        assert_eq!(loaded.data().created_unix_ms, 1);
        assert!(dir.path().join(format!("{}.rejected", snapshot_name(2))).exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2, "temp file removed");
    }

    #[test]
    fn only_the_newest_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        for t in 1..=5 {
            write(dir.path(), &SnapshotData { created_unix_ms: t, ..Default::default() }, 7).unwrap();
        }
        assert_eq!(list(dir.path()).len(), KEEP);
    }
}
