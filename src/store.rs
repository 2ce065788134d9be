//! The model store: the folders under the model folder, managed like a package manager's. Each
//! folder pulled or imported by steadytext carries a manifest (`steadytext-manifest.json`): where
//! it came from, and the size, modification time and sha256 of every file. Listing trusts the
//! manifest's digest while sizes and times still match (no re-hashing of gigabytes); `verify`
//! re-hashes.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::{ModelFiles, ModelKind};

/// The manifest's file name inside a model folder.
pub const MANIFEST: &str = "steadytext-manifest.json";

/// One file of a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    /// Path inside the model folder.
    pub path: String,
    /// Bytes.
    pub size: u64,
    /// Modification time (nanoseconds since the epoch) when recorded.
    pub mtime_ns: i128,
    /// Hex sha256 of the content.
    pub sha256: String,
}

/// Where a model folder came from and what it held then.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// `hub:owner/name@commit` or `import:/path`.
    pub source: String,
    /// The model's digest (see [`ModelFiles::digest`]) when recorded.
    pub digest: String,
    /// Every file the digest covers.
    pub files: Vec<ManifestFile>,
}

/// One model folder as `stctl models list` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Listed {
    /// Folder name (what requests and the configuration call it).
    pub name: String,
    /// The folder.
    pub dir: PathBuf,
    /// What it does; None when its configs do not say.
    pub task: Option<ModelKind>,
    /// Bytes on disk (all files of the folder).
    pub size: u64,
    /// The digest: the manifest's while its files' sizes and times match, else computed.
    pub digest: Option<String>,
    /// The manifest's source; None for folders put there by hand.
    pub source: Option<String>,
    /// Why the folder cannot be served, when it cannot.
    pub problem: Option<String>,
}

fn mtime_ns(meta: &std::fs::Metadata) -> i128 {
    use std::os::unix::fs::MetadataExt;
    i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec())
}

fn folder_name(dir: &Path) -> String {
    dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

fn relative(dir: &Path, path: &Path) -> String {
    path.strip_prefix(dir).unwrap_or(path).to_string_lossy().into_owned()
}

impl Manifest {
    /// Records `files` (the folder's digested files) as they are now.
    pub fn record(files: &ModelFiles, source: &str) -> Result<Self> {
        let mut listed = Vec::new();
        for path in files.digested_files() {
            let meta = std::fs::metadata(&path).map_err(|e| Error::io(&path, e))?;
            let (size, sha256) = crate::fsutil::sha256_file(&path).map_err(|e| Error::io(&path, e))?;
            listed.push(ManifestFile { path: relative(&files.dir, &path), size, mtime_ns: mtime_ns(&meta), sha256 });
        }
        Ok(Manifest { source: source.to_string(), digest: files.digest()?, files: listed })
    }

    /// Writes it into the folder, crash-safely.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let text = serde_json::to_vec_pretty(self).map_err(|e| Error::model(folder_name(dir), e.to_string()))?;
        crate::fsutil::write_atomic(&dir.join(MANIFEST), &[&text], 0o644)
    }

    /// Reads a folder's manifest; None when it has none.
    pub fn read(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join(MANIFEST);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                Error::model(
                    folder_name(dir),
                    format!("{} is damaged ({e}); run `stctl models verify`", path.display()),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(&path, e)),
        }
    }

    /// Whether every file still has its recorded size and modification time (cheap).
    fn unchanged(&self, dir: &Path) -> bool {
        self.files.iter().all(|f| {
            std::fs::metadata(dir.join(&f.path)).is_ok_and(|m| m.len() == f.size && mtime_ns(&m) == f.mtime_ns)
        })
    }

    /// Files whose content no longer has the recorded sha256 (re-hashing all of them).
    pub fn changed_files(&self, dir: &Path) -> Vec<String> {
        self.files
            .iter()
            .filter(|f| crate::fsutil::sha256_file(&dir.join(&f.path)).map(|(_, h)| h != f.sha256).unwrap_or(true))
            .map(|f| f.path.clone())
            .collect()
    }
}

fn folder_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.file_type() {
                    Ok(t) if t.is_dir() => folder_size(&e.path()),
                    _ => e.metadata().map(|m| m.len()).unwrap_or(0),
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Lists the model folders under `model_dir`, by name.
pub fn list(model_dir: &Path) -> Result<Vec<Listed>> {
    Ok(folders(model_dir)?.iter().map(|dir| describe(dir)).collect())
}

/// [`list`] without hashing: a folder's digest only from its current manifest (cheap enough to
/// answer a client's listing each time it asks).
pub fn list_unhashed(model_dir: &Path) -> Result<Vec<Listed>> {
    Ok(folders(model_dir)?.iter().map(|dir| describe_with(dir, false)).collect())
}

/// The model folders under `model_dir` (hidden ones left out), sorted.
fn folders(model_dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(model_dir).map_err(|e| Error::io(model_dir, e))?;
    let mut dirs: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()) && !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| e.path())
        .collect();
    dirs.sort();
    Ok(dirs)
}

/// The digest a folder's manifest records, while its files keep their sizes and times (no
/// hashing); None without a (readable, current) manifest.
pub fn recorded_digest(dir: &Path) -> Option<String> {
    Manifest::read(dir).ok().flatten().filter(|m| m.unchanged(dir)).map(|m| m.digest)
}

/// One folder's listing; a folder that cannot be served is listed with the reason.
pub fn describe(dir: &Path) -> Listed {
    describe_with(dir, true)
}

/// [`describe`]; without `hash`, the digest only from a current manifest.
fn describe_with(dir: &Path, hash: bool) -> Listed {
    let mut listed = Listed {
        name: folder_name(dir),
        dir: dir.to_path_buf(),
        task: None,
        size: folder_size(dir),
        digest: None,
        source: None,
        problem: None,
    };
    let outcome = (|| -> Result<()> {
        let manifest = Manifest::read(dir)?;
        listed.source = manifest.as_ref().map(|m| m.source.clone());
        let files = ModelFiles::discover(dir)?;
        listed.task = files.kind()?;
        listed.digest = match manifest {
            Some(m) if m.unchanged(dir) => Some(m.digest),
            _ if hash => Some(files.digest()?),
            _ => None,
        };
        Ok(())
    })();
    listed.problem = outcome.err().map(|e| e.to_string());
    listed
}

/// `verify`'s finding for one folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verified {
    /// Folder name.
    pub name: String,
    /// Files whose content changed since the manifest was written (empty: intact).
    pub changed: Vec<String>,
    /// Whether the folder has a manifest at all.
    pub has_manifest: bool,
}

/// Re-hashes a folder's files against its manifest.
pub fn verify(dir: &Path) -> Result<Verified> {
    let name = folder_name(dir);
    if !dir.is_dir() {
        return Err(Error::model(&name, format!("no such model folder {}", dir.display())));
    }
    Ok(match Manifest::read(dir)? {
        Some(m) => Verified { name, changed: m.changed_files(dir), has_manifest: true },
        None => Verified { name, changed: Vec::new(), has_manifest: false },
    })
}

/// Checks that this user may add and remove model folders in `model_dir` (made when absent); a
/// refusal says who may and what else to do.
pub fn check_writable(model_dir: &Path) -> Result<()> {
    let probe = model_dir.join(format!(".write-check-{}", std::process::id()));
    let tried = std::fs::create_dir_all(model_dir).and_then(|_| std::fs::File::create(&probe));
    match tried {
        Ok(_) => std::fs::remove_file(&probe).map_err(|e| Error::io(&probe, e)),
        Err(e) if matches!(e.kind(), std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem) => {
            let said = format!(
                "{e}; models are installed by the folder's owner (the system folder: root, e.g. `sudo stctl models ...`); for models of your own pass --model-dir ~/.local/state/steadytext/models (the default once it exists)"
            );
            Err(Error::io(model_dir, std::io::Error::new(e.kind(), said)))
        }
        Err(e) => Err(Error::io(model_dir, e)),
    }
}

/// Removes a model folder: renamed out of sight first (one step), then deleted.
pub fn remove(dir: &Path) -> Result<()> {
    let name = folder_name(dir);
    if !dir.join(MANIFEST).is_file() && ModelFiles::discover(dir).is_err() {
        return Err(Error::model(&name, format!("{} is not a model folder; nothing was removed", dir.display())));
    }
    let parent = dir.parent().unwrap_or(Path::new("."));
    let doomed = parent.join(format!(".{name}.removing-{}", std::process::id()));
    std::fs::rename(dir, &doomed).map_err(|e| Error::io(dir, e))?;
    std::fs::File::open(parent).and_then(|d| d.sync_all()).map_err(|e| Error::io(parent, e))?;
    std::fs::remove_dir_all(&doomed).map_err(|e| Error::io(&doomed, e))
}

/// Copies the model folder `from` into `model_dir/name` (checking its layout first) and records a
/// manifest; the folder appears whole or not at all.
pub fn import(from: &Path, model_dir: &Path, name: &str) -> Result<PathBuf> {
    if name.is_empty() || name.starts_with('.') || name.contains('/') {
        return Err(Error::InvalidRequest(format!("{name:?} is not a model folder name")));
    }
    let files = ModelFiles::discover(from)?;
    files.kind()?.ok_or_else(|| {
        Error::model(
            name,
            "its configs do not say what it does (no genai_config.json, pooling config or architectures)",
        )
    })?;
    let dest = model_dir.join(name);
    if dest.exists() {
        return Err(Error::model(
            name,
            format!("{} exists; remove it first (`stctl models rm {name}`)", dest.display()),
        ));
    }
    check_writable(model_dir)?;
    let staging = model_dir.join(format!(".{name}.importing-{}", std::process::id()));
    let copied = (|| {
        for path in files.digested_files() {
            let target = staging.join(relative(&files.dir, &path));
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
            }
            std::fs::copy(&path, &target)
                .and_then(|_| std::fs::File::open(&target)?.sync_all())
                .map_err(|e| Error::io(&target, e))?;
        }
        let copy = ModelFiles::discover(&staging)?;
        let source = format!("import:{}", from.canonicalize().unwrap_or(from.to_path_buf()).display());
        Manifest::record(&copy, &source)?.write(&staging)?;
        std::fs::rename(&staging, &dest).map_err(|e| Error::io(&dest, e))?;
        std::fs::File::open(model_dir).and_then(|d| d.sync_all()).map_err(|e| Error::io(model_dir, e))
    })();
    if copied.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    copied.map(|()| dest)
}
