//! SIGHUP and the `reload` method.

use std::sync::Arc;

use crate::auth::ApiKey;
use crate::config::Config;

use super::notify;
use super::state::Daemon;

/// SIGHUP and the `reload` method: re-read the configuration, load models that had failed to,
/// and reload models whose files or names changed; one reload at a time. On failure the previous
/// configuration and models stay in force.
pub(crate) async fn reload(daemon: &Daemon) -> crate::error::Result<()> {
    let _turn = daemon.reload_turn().await;
    notify::reloading();
    tracing::info!("reloading configuration");
    let outcome = async {
        let config = Arc::new(Config::load(daemon.config_path())?);
        if let Some(key) = ApiKey::load(config.daemon.api_key_file.as_deref())? {
            daemon.set_api_key(key);
        }
        daemon.registry().settled().await;
        // Models that failed to load are tried again (pulled since, or configured anew).
        daemon.registry().retry_failed(&config);
        daemon.registry().settled().await;
        for (worker, config) in daemon.registry().reloadable(&config) {
            match worker.reload(config).await? {
                Some(info) => {
                    tracing::info!(kind = worker.kind().as_str(), model = %info.name, digest = %info.digest, "model reloaded")
                }
                None => tracing::info!(kind = worker.kind().as_str(), "model unchanged"),
            }
        }
        daemon.set_config(config);
        Ok::<_, crate::Error>(())
    }
    .await;
    if let Err(e) = &outcome {
        tracing::error!(error = %e, "reload failed; keeping the previous configuration and models");
    }
    notify::ready(&daemon.status_line());
    outcome
}
