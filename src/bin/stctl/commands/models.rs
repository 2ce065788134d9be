//! `stctl models list|pull|verify|rm|import` and `stctl pull`: the model folder.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use steadytext::client::{Client, ClientError, Session};
use steadytext::model::ModelFiles;
use steadytext::protocol::{Method, NoParams, Status};
use steadytext::{hub, store};

use crate::cli::{ModelsCommand, PullArgs};

/// Downloads a model folder from the Hub (or lists the recommended ones).
pub fn pull(session: &Session, args: PullArgs) -> Result<()> {
    let Some(repo) = args.repo.filter(|_| !args.list) else {
        for a in hub::ALIASES {
            println!(
                "{:8} {}@{} {}\n         {}\n         {}",
                a.name,
                a.repo,
                a.revision,
                a.onnx_file,
                a.layout.describe(),
                a.about
            );
        }
        return Ok(());
    };
    let model_dir = args.model_dir.as_deref().unwrap_or(&session.config().model_dir);
    let mut pull = hub::Pull::new(&repo, model_dir)?;
    store::check_writable(model_dir)?;
    if let Some(revision) = args.revision {
        pull.revision = revision;
    }
    if let Some(onnx_file) = args.onnx_file {
        pull.onnx_file = Some(onnx_file);
    }
    let progress = indicatif::MultiProgress::new();
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        progress.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let dest = pull.run(&progress, &mut |line| eprintln!("{line}"))?;
    let digest = ModelFiles::discover(&dest)?.digest()?;
    println!("{} ({digest})", dest.display());
    Ok(())
}

/// The folders of the models the daemon has loaded; None when no daemon runs.
fn loaded_dirs(session: &Session) -> Result<Option<Vec<PathBuf>>> {
    let status: Status = match Client::connect_with(session.target(), session.client_options().clone()) {
        Ok(mut client) => client.request(Method::Status, &NoParams {})?,
        Err(ClientError::Unreachable { .. }) => return Ok(None),
        Err(e) => return Err(anyhow::Error::new(e).context("cannot ask the daemon which models it serves")),
    };
    Ok(Some(status.models.iter().map(|m| m.dir.canonicalize().unwrap_or(m.dir.clone())).collect()))
}

/// Runs a `models` command.
pub fn run(session: &Session, command: ModelsCommand) -> Result<()> {
    let folder = |model_dir: Option<PathBuf>| model_dir.unwrap_or_else(|| session.config().model_dir.clone());
    match command {
        ModelsCommand::Pull(args) => pull(session, args),
        ModelsCommand::List { json, model_dir } => list(session, &folder(model_dir), json),
        ModelsCommand::Verify { name, model_dir } => verify(&folder(model_dir), name),
        ModelsCommand::Rm { name, force, model_dir } => remove(session, &folder(model_dir), &name, force),
        ModelsCommand::Import { dir, name, model_dir } => import(&dir, &folder(model_dir), name),
    }
}

/// Every model folder under `dir`: task, size, digest, source, whether a default and loaded.
fn list(session: &Session, dir: &Path, json: bool) -> Result<()> {
    let listed = store::list(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    let loaded = loaded_dirs(session).unwrap_or(None).unwrap_or_default();
    let config = session.config();
    let defaults = [&config.generation_model, &config.embedding_model, &config.rerank_model];
    let rows: Vec<(store::Listed, bool, bool)> = listed
        .into_iter()
        .map(|l| {
            let is_default = defaults.iter().any(|d| **d == l.name || Path::new(d.as_str()) == l.dir);
            let is_loaded = loaded.contains(&l.dir.canonicalize().unwrap_or(l.dir.clone()));
            (l, is_default, is_loaded)
        })
        .collect();
    if json {
        let out: Vec<Value> = rows
            .iter()
            .map(|(l, d, ld)| {
                let mut v = serde_json::to_value(l).unwrap_or_default();
                v["default"] = json!(d);
                v["loaded"] = json!(ld);
                v
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("{:<32} {:<10} {:>9}  {:<19} {:<7} SOURCE", "NAME", "TASK", "SIZE", "DIGEST", "STATE");
    for (l, is_default, is_loaded) in rows {
        let task = l.task.map(|t| format!("{t:?}").to_lowercase()).unwrap_or_else(|| "?".into());
        let digest: String = l.digest.as_deref().map(|d| d.chars().take(19).collect()).unwrap_or_else(|| "-".into());
        let state = match (is_default, is_loaded) {
            (_, true) => "loaded",
            (true, false) => "default",
            _ => "",
        };
        let source = l.problem.map(|p| format!("unusable: {p}")).or(l.source).unwrap_or_else(|| "(by hand)".into());
        println!(
            "{:<32} {:<10} {:>8.1}M  {:<19} {:<7} {source}",
            l.name,
            task,
            l.size as f64 / 1048576.0,
            digest,
            state
        );
    }
    Ok(())
}

/// Re-hashes the files of `name` (all models when None) against their manifests.
fn verify(dir: &Path, name: Option<String>) -> Result<()> {
    let targets: Vec<PathBuf> = match name {
        Some(n) => vec![dir.join(n)],
        None => store::list(dir)?.into_iter().map(|l| l.dir).collect(),
    };
    let mut damaged = 0;
    for target in targets {
        let v = store::verify(&target)?;
        if !v.has_manifest {
            println!("{}: no manifest (not pulled or imported by stctl); nothing to check against", v.name);
        } else if v.changed.is_empty() {
            println!("{}: ok", v.name);
        } else {
            damaged += 1;
            println!("{}: CHANGED since it was recorded: {}", v.name, v.changed.join(", "));
        }
    }
    if damaged > 0 {
        bail!("{damaged} model(s) changed on disk; pull or import them again (`stctl models rm NAME` first)");
    }
    Ok(())
}

/// Removes the model folder `name`, unless the daemon serves it (or `force`).
fn remove(session: &Session, dir: &Path, name: &str, force: bool) -> Result<()> {
    let target = dir.join(name);
    if !target.is_dir() {
        bail!("no model folder {}", target.display());
    }
    store::check_writable(target.parent().unwrap_or(&target))?;
    let canonical = target.canonicalize().unwrap_or(target.clone());
    let served = match loaded_dirs(session) {
        Ok(loaded) => loaded.unwrap_or_default().contains(&canonical),
        Err(e) if force => {
            eprintln!("stctl: {e:#}; removing anyway (--force)");
            false
        }
        Err(e) => return Err(e.context("pass --force to remove it without asking")),
    };
    if served && !force {
        bail!("the daemon serves {name}; configure another model and reload it (`systemctl reload steadytext`), or pass --force");
    }
    store::remove(&target)?;
    println!("removed {}", target.display());
    Ok(())
}

/// Copies the local folder `from` into `dir`, as `name` (default: its own name).
fn import(from: &Path, dir: &Path, name: Option<String>) -> Result<()> {
    let name = match name {
        Some(n) => n,
        None => from
            .canonicalize()
            .with_context(|| format!("no folder {}", from.display()))?
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .context("give the model a name with --name")?,
    };
    let dest = store::import(from, dir, &name)?;
    let digest = ModelFiles::discover(&dest)?.digest()?;
    println!("{} ({digest})", dest.display());
    Ok(())
}
