//! What only the daemon answers: `stctl status|metrics|ping|reload`.

use std::time::Instant;

use anyhow::Result;

use steadytext::client::{render_status, Session};
use steadytext::protocol::{Method, Pong, Reloaded, Status};

/// The daemon's status, for people or as JSON.
pub fn status(session: &Session, json: bool) -> Result<()> {
    let status: Status = session.ask(Method::Status)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", render_status(&status));
    }
    Ok(())
}

/// Re-reads the daemon's configuration and models, and waits until it is done.
pub fn reload(session: &Session) -> Result<()> {
    let reloaded: Reloaded = session.ask(Method::Reload)?;
    println!("reloaded: {}", reloaded.status);
    Ok(())
}

/// The daemon's metrics in the Prometheus text format.
pub fn metrics(session: &Session) -> Result<()> {
    let metrics: String = session.ask(Method::Metrics)?;
    print!("{metrics}");
    Ok(())
}

/// Checks that the daemon answers, and how fast.
pub fn ping(session: &Session) -> Result<()> {
    let started = Instant::now();
    let pong: Pong = session.ask(Method::Ping)?;
    println!(
        "pong from steadytextd {} (protocol {}) in {:.3} ms",
        pong.version,
        pong.protocol,
        started.elapsed().as_secs_f64() * 1e3
    );
    Ok(())
}
