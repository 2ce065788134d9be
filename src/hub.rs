//! Pulling model folders from the Hugging Face Hub (or any server speaking its API, chosen with
//! `HF_ENDPOINT`). Every file is checked against the hash the Hub publishes (sha256 for LFS files,
//! the git blob sha1 otherwise) and written atomically; a bad download leaves nothing behind.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use sha1::Sha1;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::fsutil::TEMP_MARK;

/// The public Hub.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// What to pull.
#[derive(Debug, Clone)]
pub struct Pull {
    /// `owner/name`.
    pub repo: String,
    /// Branch, tag or commit.
    pub revision: String,
    /// The ONNX file to take (default `model.onnx`, else `onnx/model.onnx`).
    pub onnx_file: Option<String>,
    /// Folder that receives the model folder (named after the repository).
    pub model_dir: PathBuf,
    /// API endpoint (`HF_ENDPOINT`).
    pub endpoint: String,
    /// Access token (`HF_TOKEN`), for gated or private repositories.
    pub token: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RepoInfo {
    sha: String,
    siblings: Vec<Sibling>,
}

#[derive(Debug, Deserialize)]
struct Sibling {
    rfilename: String,
    #[serde(rename = "blobId")]
    blob_id: Option<String>,
    size: Option<u64>,
    lfs: Option<Lfs>,
}

#[derive(Debug, Deserialize)]
struct Lfs {
    sha256: String,
    size: u64,
}

/// How a downloaded file is checked.
enum Expected {
    Sha256(String),
    GitBlobSha1(String),
}

fn hub_error(repo: &str, reason: impl Into<String>) -> Error {
    Error::Hub { repo: repo.to_string(), reason: reason.into() }
}

impl Pull {
    /// A pull of `repo` with the endpoint and token from the environment.
    pub fn new(repo: &str, model_dir: &Path) -> Result<Self> {
        if repo.split('/').count() != 2 || repo.split('/').any(|p| p.is_empty() || p == "." || p == "..") {
            return Err(Error::InvalidRequest(format!("{repo:?} is not a Hub repository name like owner/name")));
        }
        let (endpoint, token) = crate::config::env::hub();
        Ok(Pull {
            repo: repo.to_string(),
            revision: "main".into(),
            onnx_file: None,
            model_dir: model_dir.to_path_buf(),
            endpoint: endpoint.unwrap_or_else(|| DEFAULT_ENDPOINT.into()),
            token,
        })
    }

    fn agent(&self) -> ureq::Agent {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(30)))
            .user_agent(concat!("steadytext/", env!("CARGO_PKG_VERSION")))
            .build()
            .into()
    }

    fn get(&self, agent: &ureq::Agent, url: &str) -> Result<ureq::http::Response<ureq::Body>> {
        let mut req = agent.get(url);
        if let Some(t) = &self.token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        let resp = req
            .call()
            .map_err(|e| hub_error(&self.repo, format!("cannot reach {url}: {e}; check the network or HF_ENDPOINT")))?;
        match resp.status().as_u16() {
            200 => Ok(resp),
            401 | 403 => Err(hub_error(
                &self.repo,
                format!("{url}: access denied; set HF_TOKEN to a token that may read this repository"),
            )),
            404 => Err(hub_error(&self.repo, format!("{url}: not found; check the repository name and --revision"))),
            code => Err(hub_error(&self.repo, format!("{url}: HTTP {code}"))),
        }
    }

    /// Downloads the model into `model_dir/<name>`; returns that folder. Files already present
    /// with the right hash are kept.
    pub fn run(&self, progress: &indicatif::MultiProgress) -> Result<PathBuf> {
        let agent = self.agent();
        let api = format!("{}/api/models/{}/revision/{}?blobs=true", self.endpoint, self.repo, self.revision);
        let text = self
            .get(&agent, &api)?
            .body_mut()
            .read_to_string()
            .map_err(|e| hub_error(&self.repo, format!("cannot read {api}: {e}")))?;
        let info: RepoInfo = serde_json::from_str(&text)
            .map_err(|e| hub_error(&self.repo, format!("unexpected answer from {api}: {e}")))?;
        let onnx = self.pick_onnx(&info)?;
        let is_config = |f: &str| f == "tokenizer.json" || crate::model::CONFIG_FILES.contains(&f);
        let mut wanted: Vec<&Sibling> = info.siblings.iter().filter(|s| is_config(&s.rfilename)).collect();
        wanted.extend(info.siblings.iter().filter(|s| {
            s.rfilename == onnx
                || (s.rfilename.starts_with(&onnx) && (s.rfilename.contains("_data") || s.rfilename.contains(".data")))
        }));
        if !wanted.iter().any(|s| s.rfilename == "tokenizer.json") {
            return Err(hub_error(
                &self.repo,
                "the repository has no tokenizer.json; steadytext needs the fast tokenizer file",
            ));
        }
        let name = self.repo.rsplit('/').next().unwrap_or(&self.repo);
        let dest = self.model_dir.join(name);
        for s in wanted {
            // The ONNX graph lands where model discovery looks for it.
            let target = if s.rfilename == onnx { dest.join("model.onnx") } else { dest.join(&s.rfilename) };
            let target = if s.rfilename.starts_with(&onnx) && s.rfilename != onnx {
                dest.join(format!("model.onnx{}", &s.rfilename[onnx.len()..]))
            } else {
                target
            };
            let expected = match (&s.lfs, &s.blob_id) {
                (Some(lfs), _) => Expected::Sha256(lfs.sha256.clone()),
                (None, Some(blob)) => Expected::GitBlobSha1(blob.clone()),
                (None, None) => return Err(hub_error(&self.repo, format!("the Hub gave no hash for {}", s.rfilename))),
            };
            let size = s.lfs.as_ref().map(|l| l.size).or(s.size).unwrap_or(0);
            if matches_hash(&target, &expected) {
                continue;
            }
            let url = format!("{}/{}/resolve/{}/{}", self.endpoint, self.repo, info.sha, s.rfilename);
            self.download(&agent, &url, &target, &expected, size, progress)?;
        }
        let files = crate::model::ModelFiles::discover(&dest)?;
        crate::store::Manifest::record(&files, &format!("hub:{}@{}", self.repo, info.sha))?.write(&dest)?;
        Ok(dest)
    }

    fn pick_onnx(&self, info: &RepoInfo) -> Result<String> {
        let has = |f: &str| info.siblings.iter().any(|s| s.rfilename == f);
        if let Some(f) = &self.onnx_file {
            return if has(f) {
                Ok(f.clone())
            } else {
                Err(hub_error(&self.repo, format!("no file {f} in the repository")))
            };
        }
        for f in ["model.onnx", "onnx/model.onnx"] {
            if has(f) {
                return Ok(f.to_string());
            }
        }
        let all: Vec<&str> =
            info.siblings.iter().map(|s| s.rfilename.as_str()).filter(|f| f.ends_with(".onnx")).collect();
        Err(hub_error(
            &self.repo,
            if all.is_empty() {
                "the repository has no ONNX file; pull an ONNX export of the model".to_string()
            } else {
                format!("no model.onnx; choose one with --onnx-file: {}", all.join(", "))
            },
        ))
    }

    fn download(
        &self,
        agent: &ureq::Agent,
        url: &str,
        target: &Path,
        expected: &Expected,
        size: u64,
        progress: &indicatif::MultiProgress,
    ) -> Result<()> {
        let dir = target.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let file_name = target.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = dir.join(format!("{file_name}{TEMP_MARK}{}", std::process::id()));
        let bar = progress.add(indicatif::ProgressBar::new(size));
        bar.set_style(
            indicatif::ProgressStyle::with_template("{msg:30} {bar:30} {bytes:>10}/{total_bytes:10} {bytes_per_sec}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_message(file_name.clone());
        let result = (|| {
            let mut resp = self.get(agent, url)?;
            let mut reader = resp.body_mut().as_reader();
            let mut file = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
            let mut sha256 = Sha256::new();
            let mut buf = vec![0u8; 1 << 16];
            let mut len = 0u64;
            let mut chunks: Vec<u8> = Vec::new();
            loop {
                let n = reader
                    .read(&mut buf)
                    .map_err(|e| hub_error(&self.repo, format!("{url}: download broke off: {e}")))?;
                if n == 0 {
                    break;
                }
                sha256.update(&buf[..n]);
                if matches!(expected, Expected::GitBlobSha1(_)) {
                    chunks.extend_from_slice(&buf[..n]);
                }
                file.write_all(&buf[..n]).map_err(|e| Error::io(&tmp, e))?;
                len += n as u64;
                bar.set_position(len);
            }
            let ok = match expected {
                Expected::Sha256(want) => hex::encode(sha256.finalize()) == *want,
                Expected::GitBlobSha1(want) => git_blob_sha1(&chunks) == *want,
            };
            if !ok {
                return Err(hub_error(&self.repo, format!("{url}: the downloaded bytes do not match the hash the Hub published; nothing was kept, try again")));
            }
            file.sync_all().map_err(|e| Error::io(&tmp, e))?;
            std::fs::rename(&tmp, target).map_err(|e| Error::io(target, e))?;
            std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::io(dir, e))
        })();
        bar.finish_and_clear();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}

/// Whether `path` exists and has the expected content hash.
fn matches_hash(path: &Path, expected: &Expected) -> bool {
    match expected {
        Expected::Sha256(want) => crate::fsutil::sha256_file(path).is_ok_and(|(_, got)| got == *want),
        Expected::GitBlobSha1(want) => std::fs::read(path).is_ok_and(|bytes| git_blob_sha1(&bytes) == *want),
    }
}

/// The id git gives a file's content: sha1 over `blob <len>\0` and the bytes.
fn git_blob_sha1(bytes: &[u8]) -> String {
    let mut h = Sha1::new();
    h.update(format!("blob {}\0", bytes.len()).as_bytes());
    h.update(bytes);
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_names_are_checked() {
        let dir = Path::new("/tmp");
        assert!(Pull::new("owner/name", dir).is_ok());
        for bad in ["name", "a/b/c", "../x", "a/..", "/x"] {
            assert!(Pull::new(bad, dir).is_err(), "{bad}");
        }
    }
}
