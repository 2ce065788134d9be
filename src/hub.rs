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
    /// How the export is laid out, and so whether its sequences batch.
    pub layout: Layout,
    /// What it is, in a few words.
    pub about: &'static str,
}

/// The layout of a pinned export, as `stctl models pull --list` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// An onnxruntime-genai folder (GroupQueryAttention over one shared KV buffer): generations
    /// batch with each other.
    Genai,
    /// A sentence-transformers or cross-encoder export (an encoder: its texts batch).
    Encoder,
}

impl Layout {
    /// The `--list` column.
    pub fn describe(self) -> &'static str {
        match self {
            Layout::Genai => "onnxruntime-genai folder, generations batch",
            Layout::Encoder => "encoder, texts batch",
        }
    }
}

/// The recommended models. Every pin is a commit that public material names beside the same
/// repository (the Hub itself cannot be reached from where this was written, so the files were
/// not fetched from it; the folder listings below are what those sources show):
/// - `small`: commit "Add optimized models for ORT GenAI (#3)" of onnx-community/Qwen3-0.6B-ONNX,
///   with the folder onnxruntime/cpu_and_mobile/cpu-int4-kld-block-128 (chat_template.jinja,
///   config.json, genai_config.json, model.onnx of 524,589,133 bytes with its weights inside,
///   tokenizer.json, tokenizer_config.json): github.com/john-rocky/edge-llm-bench,
///   models/ortgenai-recipes.json.
/// - `large`: github.com/StephaneDelcroix/procrastinate, Services/OnnxModelManager.cs (branch
///   add-llama-3.2-models) pins onnx-community/Llama-3.2-1B-Instruct-GENAI-ONNX at this commit,
///   folder cpu_and_mobile/cpu-int4-rtn-block-32-acc-level-4, 1,866,090,000 bytes; the Hub's page
///   of onnx-community/Llama-3.2-1B-Instruct-ONNX shows the same short id (e983c74) at the head
///   of its main branch. The file names (model.onnx, model.onnx.data, genai_config.json,
///   tokenizer files) are what onnxruntime-genai's builder writes (src/python/py/models/builders/base.py:
///   `filename` "model.onnx", data `model.onnx.data`) and what public download lists of that
///   folder name.
/// - `embed`: github.com/Pogryziony/SAM-architecture-research,
///   benchmarks/pins/sentence_transformers_all_minilm_l6_v2.json.
/// - `rerank`: github.com/micchyboy237/jet_python_modules, jet/models/resolve_onnx_symlinks.sh
///   (a Hub cache snapshot path at this commit).
///
/// Earlier pins of `small` (its transformers.js file `onnx/model_q4.onnx`: one sequence at a
/// time) and of `large` (onnx-community/Llama-3.2-1B-Instruct@c5b77c42..., a commit no public
/// material names) are replaced.
pub const ALIASES: &[Alias] = &[
    Alias {
        name: "small",
        repo: "onnx-community/Qwen3-0.6B-ONNX",
        revision: "da1453100cf3ff33ef56d17983fc7a8648706db6",
        onnx_file: "onnxruntime/cpu_and_mobile/cpu-int4-kld-block-128/model.onnx",
        layout: Layout::Genai,
        about: "Qwen3 0.6B, int4 weights (accuracy level 4), float32 KV cache (Apache-2.0, ~0.5 GB)",
    },
    Alias {
        name: "large",
        repo: "onnx-community/Llama-3.2-1B-Instruct-GENAI-ONNX",
        revision: "e983c740a38fcfa57fb4d124b18b644974c3d966",
        onnx_file: "cpu_and_mobile/cpu-int4-rtn-block-32-acc-level-4/model.onnx",
        layout: Layout::Genai,
        about: "Llama 3.2 1B instruct, int4 weights (accuracy level 4), float32 KV cache (Llama 3.2 licence, ~1.9 GB)",
    },
    Alias {
        name: "embed",
        repo: "sentence-transformers/all-MiniLM-L6-v2",
        revision: "c9745ed1d9f207416be6d2e6f8de32d1f16199bf",
        onnx_file: "onnx/model.onnx",
        layout: Layout::Encoder,
        about: "all-MiniLM-L6-v2 sentence embeddings, 384 dimensions (Apache-2.0, 90 MB)",
    },
    Alias {
        name: "rerank",
        repo: "cross-encoder/ms-marco-MiniLM-L6-v2",
        revision: "ce0834f22110de6d9222af7a7a03628121708969",
        onnx_file: "onnx/model.onnx",
        layout: Layout::Encoder,
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

/// The ONNX files a pull takes when none is named and the repository has no onnxruntime-genai
/// CPU folder, best first: the graph at the top, then the CPU variants of the transformers.js
/// layout (float32 in `onnx/model.onnx`, int8, int4).
const CPU_VARIANTS: &[&str] = &[
    "model.onnx",
    "onnx/model.onnx",
    "onnx/model_q4.onnx",
    "onnx/model_int8.onnx",
    "onnx/model_quantized.onnx",
    "onnx/model_uint8.onnx",
];

/// The same for a decoder (its config.json says so): int4 and int8 before float32, whose file
/// is four to eight times the size (Llama 3.2 1B's transformers.js float32 graph is ~5 GB).
const DECODER_VARIANTS: &[&str] = &[
    "model.onnx",
    "onnx/model_q4.onnx",
    "onnx/model_int8.onnx",
    "onnx/model_quantized.onnx",
    "onnx/model_uint8.onnx",
    "onnx/model.onnx",
];

/// Folder names of onnxruntime-genai's GPU variants (`cuda/`, `dml/`, `gpu/gpu-int4-...`,
/// `webgpu/`) and of float16 ones.
const GPU_FOLDER_MARKS: &[&str] = &["cuda", "dml", "gpu", "fp16"];

/// Why the engine cannot serve an ONNX variant, judged by its path before anything is
/// downloaded: float16 activations and KV cache (the WebGPU and GPU variants of the
/// transformers.js layout), or a folder of GPU variants.
fn unservable_variant(file: &str) -> Option<&'static str> {
    let (folders, name) = file.rsplit_once('/').unwrap_or(("", file));
    let stem = name.trim_end_matches(".onnx");
    if stem.ends_with("_fp16") || stem.ends_with("_q4f16") || stem.ends_with("_bnb4f16") {
        return Some(
            "a float16 variant (for WebGPU and GPUs: float16 KV cache); steadytext serves float32 KV caches, pull the _q4, _int8 or float32 file",
        );
    }
    let gpu = folders.split('/').any(|f| {
        let f = f.to_ascii_lowercase();
        GPU_FOLDER_MARKS.iter().any(|m| f.contains(m))
    });
    gpu.then_some("in a folder of GPU variants (CUDA, DirectML, WebGPU or float16); steadytext serves the CPU ones: pull a cpu folder's graph")
}

/// Why a genai folder's `genai_config.json` (`genai`) shows it cannot be served: it was built for
/// another execution provider than the CPU (its session options name one), or it keeps a
/// windowed KV cache. None when it can.
fn genai_unservable(genai: &serde_json::Value) -> Option<String> {
    let providers = genai.pointer("/model/decoder/session_options/provider_options").and_then(|p| p.as_array());
    let other = providers
        .into_iter()
        .flatten()
        .filter_map(|p| p.as_object())
        .flat_map(|p| p.keys())
        .find(|k| !k.eq_ignore_ascii_case("cpu"));
    if let Some(provider) = other {
        return Some(format!(
            "built for the {provider} execution provider (model.decoder.session_options.provider_options); steadytext runs genai folders on the CPU: pull a cpu folder's graph"
        ));
    }
    crate::model::genai_windowed(genai)
}

/// Why a downloaded graph cannot be served, judged by its inputs' types (read from its header,
/// its weights not needed): a float16 or bfloat16 KV cache (WebGPU and GPU exports).
fn float16_cache(graph: &Path) -> Result<Option<String>> {
    let inputs = crate::onnx_proto::graph_inputs(graph)?;
    Ok(inputs
        .iter()
        .find(|i| i.name.contains("past") && i.elem_type.is_some_and(|t| t != crate::onnx_proto::FLOAT32))
        .map(|i| {
            format!(
                "its KV cache input `{}` is not float32 (ONNX type {}): a float16 variant for WebGPU or GPUs; steadytext serves float32 KV caches, pull a CPU variant (_q4, _int8, float32, a cpu genai folder)",
                i.name,
                i.elem_type.unwrap_or_default()
            )
        }))
}

/// The graph of the best onnxruntime-genai CPU folder of `files` (a folder with a
/// genai_config.json beside a `.onnx` file, named for the CPU, not for a GPU): int4 folders
/// first, then by name, so the choice is the same every time.
fn genai_cpu_graph<'f>(files: &[&'f str]) -> Option<&'f str> {
    let mut graphs: Vec<&str> = files
        .iter()
        .copied()
        .filter(|f| f.ends_with(".onnx") && unservable_variant(f).is_none())
        .filter(|f| {
            let dir = f.rsplit_once('/').map_or("", |(d, _)| d);
            dir.to_ascii_lowercase().contains("cpu") && files.contains(&format!("{dir}/genai_config.json").as_str())
        })
        .collect();
    graphs.sort_by_key(|f| (!f.contains("int4"), *f));
    graphs.first().copied()
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
    /// with the right hash are kept. `say` gets the plan (files, sizes) before anything is
    /// downloaded. A variant steadytext cannot serve is refused as early as its files tell: by its
    /// path and its genai_config.json before any download, by its graph's KV inputs before its
    /// weights; a folder this pull created is then removed.
    pub fn run(&self, progress: &indicatif::MultiProgress, say: &mut dyn FnMut(&str)) -> Result<PathBuf> {
        let agent = self.agent();
        let api = format!("{}/api/models/{}/revision/{}?blobs=true", self.endpoint, self.repo, self.revision);
        let text = self
            .get(&agent, &api)?
            .body_mut()
            .read_to_string()
            .map_err(|e| hub_error(&self.repo, format!("cannot read {api}: {e}")))?;
        let info: RepoInfo = serde_json::from_str(&text)
            .map_err(|e| hub_error(&self.repo, format!("unexpected answer from {api}: {e}")))?;
        let onnx = self.pick_onnx(&agent, &info)?;
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
        if let Some(genai) = top("genai_config.json") {
            let json = self.small_json(&agent, &info.sha, &genai.rfilename)?;
            if let Some(why) = genai_unservable(&json) {
                return Err(hub_error(&self.repo, format!("{}: {why}", genai.rfilename)));
            }
        }
        let dest = self.model_dir.join(&self.folder);
        let small: Vec<(&Sibling, PathBuf)> = std::iter::once(&"tokenizer.json")
            .chain(crate::model::CONFIG_FILES)
            .filter_map(|name| top(name).map(|s| (s, dest.join(name))))
            .collect();
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
        // The weights beside the graph, by the names exporters give them (`model.onnx.data`,
        // `model.onnx_data`, `model.onnx_data_1`): what the graph names is checked once it is here.
        let weights = info.siblings.iter().filter(|s| {
            s.rfilename.strip_prefix(onnx.as_str()).is_some_and(|rest| rest.starts_with('.') || rest.starts_with('_'))
        });
        let beside = |s: &Sibling| graph.with_file_name(s.rfilename.rsplit('/').next().unwrap_or(&s.rfilename));
        let planned: Vec<(&Sibling, PathBuf)> = small
            .iter()
            .cloned()
            .chain(sibling(&onnx).map(|s| (s, graph.clone())))
            .chain(weights.map(|s| (s, beside(s))))
            .collect();
        let size = |s: &Sibling| s.lfs.as_ref().map(|l| l.size).or(s.size).unwrap_or(0);
        let total: u64 = planned.iter().map(|(s, _)| size(s)).sum();
        // Files already there at their size are most likely kept (their hash decides).
        let needed: u64 = planned
            .iter()
            .filter(|(s, target)| std::fs::metadata(target).map_or(true, |m| m.len() != size(s)))
            .map(|(s, _)| size(s))
            .sum();
        say(&format!(
            "pulling {}@{} {onnx}: {} files, {} (the graph and its weights {}), {} to download",
            self.repo,
            &info.sha[..info.sha.len().min(12)],
            planned.len(),
            indicatif::HumanBytes(total),
            indicatif::HumanBytes(planned.iter().skip(small.len()).map(|(s, _)| size(s)).sum()),
            indicatif::HumanBytes(needed),
        ));
        std::fs::create_dir_all(&self.model_dir).map_err(|e| Error::io(&self.model_dir, e))?;
        let free = crate::fsutil::free_bytes(&self.model_dir).map_err(|e| Error::io(&self.model_dir, e))?;
        if free < needed {
            return Err(hub_error(
                &self.repo,
                format!(
                    "the pull needs {} more and {} has {} free; free some space or pull into another --model-dir",
                    indicatif::HumanBytes(needed),
                    self.model_dir.display(),
                    indicatif::HumanBytes(free)
                ),
            ));
        }
        let created = !dest.exists();
        let refuse = |why: String| {
            if created {
                let _ = std::fs::remove_dir_all(&dest);
            }
            hub_error(&self.repo, why)
        };
        for (s, target) in &small {
            self.fetch(&agent, &info.sha, s, target, progress)?;
        }
        self.fetch(&agent, &info.sha, sibling(&onnx).expect("picked among the siblings"), &graph, progress)?;
        if let Some(why) = float16_cache(&graph)? {
            let _ = std::fs::remove_file(&graph);
            return Err(refuse(format!("{onnx}: {why}")));
        }
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

    fn pick_onnx(&self, agent: &ureq::Agent, info: &RepoInfo) -> Result<String> {
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
        let names: Vec<&str> = info.siblings.iter().map(|s| s.rfilename.as_str()).collect();
        if let Some(f) = genai_cpu_graph(&names) {
            return Ok(f.to_string());
        }
        let first = |order: &[&str]| order.iter().find(|f| has(f)).map(|f| f.to_string());
        let (plain, decoder) = (first(CPU_VARIANTS), first(DECODER_VARIANTS));
        // config.json is read only when the choice depends on it.
        if plain != decoder && self.is_decoder(agent, info)? {
            return Ok(decoder.expect("the same files as the plain order"));
        }
        if let Some(f) = plain {
            return Ok(f);
        }
        let all: Vec<&str> = names.into_iter().filter(|f| f.ends_with(".onnx")).collect();
        Err(hub_error(
            &self.repo,
            if all.is_empty() {
                "the repository has no ONNX file; pull an ONNX export of the model".to_string()
            } else if all.iter().all(|f| unservable_variant(f).is_some()) {
                format!("its ONNX files ({}) are float16 or GPU variants; steadytext serves float32 KV caches on the CPU: pull a CPU export (_q4, _int8, float32, a cpu genai folder)", all.join(", "))
            } else {
                format!("no model.onnx; choose one with --onnx-file: {}", all.join(", "))
            },
        ))
    }

    /// Whether the repository's top-level config.json describes a decoder (read before any
    /// graph is chosen; a repository without one is not taken for a decoder).
    fn is_decoder(&self, agent: &ureq::Agent, info: &RepoInfo) -> Result<bool> {
        if !info.siblings.iter().any(|s| s.rfilename == "config.json") {
            return Ok(false);
        }
        let config = self.small_json(agent, &info.sha, "config.json")?;
        Ok(crate::model::kind_from_config(&config) == Some(ModelKind::Generation))
    }

    /// A small JSON file of the repository (a config), read into memory, not kept.
    fn small_json(&self, agent: &ureq::Agent, commit: &str, file: &str) -> Result<serde_json::Value> {
        /// Config files are a few kilobytes; a larger one is not read.
        const CONFIG_LIMIT: u64 = 1 << 20;
        let url = format!("{}/{}/resolve/{}/{}", self.endpoint, self.repo, commit, file);
        let text = self
            .get(agent, &url)?
            .body_mut()
            .with_config()
            .limit(CONFIG_LIMIT)
            .read_to_string()
            .map_err(|e| hub_error(&self.repo, format!("cannot read {url}: {e}")))?;
        serde_json::from_str(&text).map_err(|e| hub_error(&self.repo, format!("{url} is not JSON: {e}")))
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

    #[test]
    fn a_genai_config_for_another_device_or_with_windowed_layers_is_refused() {
        let with = |decoder: serde_json::Value| serde_json::json!({"model": {"decoder": decoder}});
        let providers = |p: serde_json::Value| with(serde_json::json!({"session_options": {"provider_options": p}}));
        assert_eq!(genai_unservable(&providers(serde_json::json!([]))), None);
        assert_eq!(genai_unservable(&providers(serde_json::json!([{"CPU": {}}]))), None);
        for other in ["cuda", "dml", "webgpu", "NvTensorRtRtx"] {
            let why = genai_unservable(&providers(serde_json::json!([{ other: {} }]))).unwrap();
            assert!(why.contains(&format!("the {other} execution provider")), "{why}");
        }
        let windowed = with(serde_json::json!({"sliding_window": {"window_size": 512}}));
        assert!(genai_unservable(&windowed).unwrap().contains("sliding_window"));
    }

    #[test]
    fn gpu_and_float16_variants_are_known_by_their_path() {
        for gpu in
            ["cuda/cuda-int4-rtn-block-32/model.onnx", "directml/dml-int4/model.onnx", "gpu/gpu-int4-awq/model.onnx"]
        {
            assert!(unservable_variant(gpu).is_some_and(|why| why.contains("GPU")), "{gpu}");
        }
        assert!(unservable_variant("webgpu/model.onnx").is_some());
        assert!(unservable_variant("onnx/model_q4f16.onnx").is_some_and(|why| why.contains("float16")));
        for cpu in ["cpu_and_mobile/cpu-int4-rtn-block-32-acc-level-4/model.onnx", "onnx/model_q4.onnx", "model.onnx"] {
            assert_eq!(unservable_variant(cpu), None, "{cpu}");
        }
    }

    #[test]
    fn the_genai_cpu_folder_is_chosen_int4_first_and_never_a_gpu_one() {
        let files = [
            "cuda/cuda-int4-rtn-block-32/genai_config.json",
            "cuda/cuda-int4-rtn-block-32/model.onnx",
            "cpu_and_mobile/cpu-fp32/genai_config.json",
            "cpu_and_mobile/cpu-fp32/model.onnx",
            "cpu_and_mobile/cpu-int4-rtn-block-32/genai_config.json",
            "cpu_and_mobile/cpu-int4-rtn-block-32/model.onnx",
            "cpu_and_mobile/cpu-int4-rtn-block-32/model.onnx.data",
            "onnx/model_q4.onnx",
        ];
        assert_eq!(genai_cpu_graph(&files), Some("cpu_and_mobile/cpu-int4-rtn-block-32/model.onnx"));
        assert_eq!(genai_cpu_graph(&files[..4]), Some("cpu_and_mobile/cpu-fp32/model.onnx"));
        assert_eq!(genai_cpu_graph(&files[..2]), None, "a GPU folder is never taken");
        assert_eq!(genai_cpu_graph(&["cpu/model.onnx", "onnx/model_q4.onnx"]), None, "no genai_config.json beside it");
    }

    #[test]
    fn every_alias_is_a_servable_cpu_export() {
        for a in ALIASES {
            assert_eq!(unservable_variant(a.onnx_file), None, "{}", a.name);
            assert_eq!(a.revision.len(), 40, "{}: a full commit id", a.name);
        }
    }
}
