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
use crate::model::ModelKind;

/// The public Hub.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// A recommended model, pinned: `stctl models pull NAME` fetches this repository at this
/// revision, this ONNX file (the CPU variant), into the model folder NAME.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Alias {
    /// The name to pull it by, and its folder's name.
    pub name: &'static str,
    /// `owner/name` on the Hub.
    pub repo: &'static str,
    /// The commit it is pinned to (the Hub's files get re-uploaded).
    pub revision: &'static str,
    /// The ONNX file to take.
    pub onnx_file: &'static str,
    /// What it is, in a few words.
    pub about: &'static str,
}

/// The recommended models (revisions as the Hub's pages showed them on 2026-11-25).
pub const ALIASES: &[Alias] = &[
    Alias {
        name: "small",
        repo: "onnx-community/Qwen3-0.6B-ONNX",
        revision: "da1453100cf3ff33ef56d17983fc7a8648706db6",
        onnx_file: "onnx/model_q4.onnx",
        about: "Qwen3 0.6B instruct, int4 weights, float32 KV cache (Apache-2.0, ~0.9 GB)",
    },
    Alias {
        name: "large",
        repo: "onnx-community/Llama-3.2-1B-Instruct",
        revision: "c5b77c42b9a13105f54d55be507e1a65b5b8149b",
        onnx_file: "onnx/model_q4.onnx",
        about: "Llama 3.2 1B instruct, int4 weights, float32 KV cache (Llama 3.2 licence, ~1.7 GB)",
    },
    Alias {
        name: "embed",
        repo: "sentence-transformers/all-MiniLM-L6-v2",
        revision: "c9745ed1d9f207416be6d2e6f8de32d1f16199bf",
        onnx_file: "onnx/model.onnx",
        about: "all-MiniLM-L6-v2 sentence embeddings, 384 dimensions (Apache-2.0, 90 MB)",
    },
    Alias {
        name: "rerank",
        repo: "cross-encoder/ms-marco-MiniLM-L6-v2",
        revision: "ce0834f22110de6d9222af7a7a03628121708969",
        onnx_file: "onnx/model.onnx",
        about: "MS MARCO MiniLM-L6 cross-encoder reranker (Apache-2.0, 90 MB)",
    },
];

/// The recommended model of a kind (what a fresh install is told to pull).
pub fn recommended(kind: ModelKind) -> &'static Alias {
    alias(kind.recommended_alias()).expect("every kind has a recommended model")
}

/// The alias named `name`.
pub fn alias(name: &str) -> Option<&'static Alias> {
    ALIASES.iter().find(|a| a.name == name)
}

/// The ONNX files a pull takes when none is named, best first: the graph at the top, then the
/// CPU variants of the transformers.js layout (int4 weights, int8, float32 in `onnx/model.onnx`).
const CPU_VARIANTS: &[&str] = &[
    "model.onnx",
    "onnx/model.onnx",
    "onnx/model_q4.onnx",
    "onnx/model_int8.onnx",
    "onnx/model_quantized.onnx",
    "onnx/model_uint8.onnx",
];

/// Why the engine cannot serve an ONNX variant, judged by its file name (float16 activations
/// and KV cache: the WebGPU and GPU variants).
fn unservable_variant(file: &str) -> Option<&'static str> {
    let stem = file.rsplit('/').next().unwrap_or(file).trim_end_matches(".onnx");
    (stem.ends_with("_fp16") || stem.ends_with("_q4f16") || stem.ends_with("_bnb4f16")).then_some(
        "a float16 variant (for WebGPU and GPUs: float16 KV cache); steadytext serves float32 KV caches, pull the _q4, _int8 or float32 file",
    )
}

/// What to pull.
#[derive(Debug, Clone)]
pub struct Pull {
    /// `owner/name`.
    pub repo: String,
    /// Branch, tag or commit.
    pub revision: String,
    /// The ONNX file to take (default: the first CPU variant present, see `CPU_VARIANTS`).
    pub onnx_file: Option<String>,
    /// Folder that receives the model folder.
    pub model_dir: PathBuf,
    /// The model folder's name: the alias, else the repository's name.
    pub folder: String,
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
    /// A pull of `repo` (`owner/name`, or an alias: then pinned, into the folder of its name)
    /// with the endpoint and token from the environment.
    pub fn new(repo: &str, model_dir: &Path) -> Result<Self> {
        let (endpoint, token) = crate::env::hub();
        let endpoint = endpoint.unwrap_or_else(|| DEFAULT_ENDPOINT.into());
        if let Some(a) = alias(repo) {
            return Ok(Pull {
                repo: a.repo.into(),
                revision: a.revision.into(),
                onnx_file: Some(a.onnx_file.into()),
                model_dir: model_dir.to_path_buf(),
                folder: a.name.into(),
                endpoint,
                token,
            });
        }
        if repo.split('/').count() != 2 || repo.split('/').any(|p| p.is_empty() || p == "." || p == "..") {
            let names: Vec<&str> = ALIASES.iter().map(|a| a.name).collect();
            return Err(Error::InvalidRequest(format!(
                "{repo:?} is neither a Hub repository name like owner/name nor a recommended model ({})",
                names.join(", ")
            )));
        }
        Ok(Pull {
            repo: repo.to_string(),
            revision: "main".into(),
            onnx_file: None,
            model_dir: model_dir.to_path_buf(),
            folder: repo.rsplit('/').next().unwrap_or(repo).to_string(),
            endpoint,
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
        let sibling = |name: &str| info.siblings.iter().find(|s| s.rfilename == name);
        // A graph beside a genai_config.json in a subfolder (onnxruntime-genai's layout, e.g.
        // `cpu_and_mobile/cpu-int4-rtn-block-32/`) makes that subfolder the model folder: its
        // files come to the top, and the repository's top-level ones fill in what it lacks.
        let base = match onnx.rsplit_once('/') {
            Some((dir, _)) if sibling(&format!("{dir}/genai_config.json")).is_some() => format!("{dir}/"),
            _ => String::new(),
        };
        let top = |name: &str| sibling(&format!("{base}{name}")).or_else(|| sibling(name));
        if top("tokenizer.json").is_none() {
            return Err(hub_error(
                &self.repo,
                format!("the repository has no {base}tokenizer.json; steadytext needs the fast tokenizer file"),
            ));
        }
        let dest = self.model_dir.join(&self.folder);
        for name in std::iter::once(&"tokenizer.json").chain(crate::model::CONFIG_FILES) {
            if let Some(s) = top(name) {
                self.fetch(&agent, &info.sha, s, &dest.join(name), progress)?;
            }
        }
        // The graph keeps its place when model discovery finds it there (`model.onnx`,
        // `onnx/model*.onnx`, or where genai_config.json says), else it becomes `model.onnx`; its
        // external data go beside it under the names the graph gives them.
        let kept = onnx == "model.onnx"
            || onnx.strip_prefix("onnx/").is_some_and(|f| f.starts_with("model") && !f.contains('/'));
        let graph = match onnx.strip_prefix(&base) {
            Some(file) if !base.is_empty() => dest.join(file),
            _ if kept => dest.join(&onnx),
            _ => dest.join("model.onnx"),
        };
        self.fetch(&agent, &info.sha, sibling(&onnx).expect("picked among the siblings"), &graph, progress)?;
        let onnx_dir = onnx.rsplit_once('/').map(|(d, _)| format!("{d}/")).unwrap_or_default();
        for location in crate::onnx_proto::external_data(&graph)? {
            let name = format!("{onnx_dir}{location}");
            let data = sibling(&name).ok_or_else(|| {
                hub_error(&self.repo, format!("{onnx} keeps weights in {name}, which the repository does not have"))
            })?;
            self.fetch(&agent, &info.sha, data, &graph.with_file_name(&location), progress)?;
        }
        let files = crate::model::ModelFiles::discover(&dest)?;
        crate::store::Manifest::record(&files, &format!("hub:{}@{}", self.repo, info.sha))?.write(&dest)?;
        Ok(dest)
    }

    /// Downloads one file of the repository to `target`, unless it is there with the right hash.
    fn fetch(
        &self,
        agent: &ureq::Agent,
        commit: &str,
        s: &Sibling,
        target: &Path,
        progress: &indicatif::MultiProgress,
    ) -> Result<()> {
        let expected = match (&s.lfs, &s.blob_id) {
            (Some(lfs), _) => Expected::Sha256(lfs.sha256.clone()),
            (None, Some(blob)) => Expected::GitBlobSha1(blob.clone()),
            (None, None) => return Err(hub_error(&self.repo, format!("the Hub gave no hash for {}", s.rfilename))),
        };
        if matches_hash(target, &expected) {
            return Ok(());
        }
        let size = s.lfs.as_ref().map(|l| l.size).or(s.size).unwrap_or(0);
        let url = format!("{}/{}/resolve/{}/{}", self.endpoint, self.repo, commit, s.rfilename);
        self.download(agent, &url, target, &expected, size, progress)
    }

    fn pick_onnx(&self, info: &RepoInfo) -> Result<String> {
        let has = |f: &str| info.siblings.iter().any(|s| s.rfilename == f);
        if let Some(f) = &self.onnx_file {
            if !has(f) {
                return Err(hub_error(&self.repo, format!("no file {f} in the repository")));
            }
            if let Some(why) = unservable_variant(f) {
                return Err(hub_error(&self.repo, format!("{f} is {why}")));
            }
            return Ok(f.clone());
        }
        if let Some(f) = CPU_VARIANTS.iter().find(|f| has(f)) {
            return Ok(f.to_string());
        }
        let all: Vec<&str> =
            info.siblings.iter().map(|s| s.rfilename.as_str()).filter(|f| f.ends_with(".onnx")).collect();
        Err(hub_error(
            &self.repo,
            if all.is_empty() {
                "the repository has no ONNX file; pull an ONNX export of the model".to_string()
            } else if all.iter().all(|f| unservable_variant(f).is_some()) {
                format!("its ONNX files ({}) are float16 variants for WebGPU and GPUs; steadytext serves float32 KV caches: pull a CPU export (_q4, _int8, float32)", all.join(", "))
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
        // Enterable by whoever may enter the model folder, whatever the umask.
        for folder in dir.ancestors().take_while(|d| d.starts_with(&self.model_dir) && *d != self.model_dir) {
            std::fs::set_permissions(folder, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .map_err(|e| Error::io(folder, e))?;
        }
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
            // Model files are not secrets: readable by whoever may enter the model folder, whatever
            // the umask (the daemon's user reads what root pulled).
            file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
                .map_err(|e| Error::io(&tmp, e))?;
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
