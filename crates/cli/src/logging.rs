//! The log subscriber of `tern serve`: `log_format = "text"` (human) or `"json"` (one JSON
//! object a line: `timestamp`, `level`, `target`, `fields` with `message` and the event's own
//! fields, e.g. `event = "connect"`), and a filter a reload can replace (`log_level`).

use anyhow::Context;
use tern_server::LogFormat;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, reload};

/// Installs the subscriber; a reload of the configuration changes its filter (unless
/// `RUST_LOG` is set, which then stays in force).
pub(crate) fn init(level: &str, format: LogFormat) -> anyhow::Result<()> {
    let from_env = std::env::var("RUST_LOG")
        .ok()
        .filter(|directive| !directive.is_empty());
    let filter = match &from_env {
        Some(directive) => EnvFilter::try_new(directive),
        None => EnvFilter::try_new(level),
    }
    .context("invalid log level")?;
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
            )
            .init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .init(),
    }
    if from_env.is_none() {
        tern_server::set_log_level_reloader(Box::new(move |level: &str| {
            let filter = EnvFilter::try_new(level).map_err(|error| error.to_string())?;
            handle.reload(filter).map_err(|error| error.to_string())
        }));
    } else {
        // Neither a reload nor a restart would apply the file's level: say so, rather than
        // "needs a restart".
        tern_server::set_log_level_reloader(Box::new(|_: &str| {
            Err("overridden by RUST_LOG, which stays in force (unset it and restart)".to_owned())
        }));
    }
    Ok(())
}
