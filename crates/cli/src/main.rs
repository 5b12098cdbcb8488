//! `tern`: the MQTT broker and the tools beside it.

// Data from the network must never panic the broker: no unwrap or expect outside tests.
#![warn(clippy::unwrap_used, clippy::expect_used)]
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tern::{bench, ctl, passwd, pubsub};
use tern_server::{Server, ServerConfig};

mod logging;

/// Time the broker gives its connections to close at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(4);

#[derive(Parser)]
#[command(name = "tern", version, about = "Tern, an MQTT broker")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker.
    Serve(ServeArgs),
    /// Load-test a running broker and check every delivery.
    Bench(Box<bench::BenchArgs>),
    /// Add, change or delete a user in a password file (argon2id; reads and keeps
    /// Mosquitto's formats). Flags as `mosquitto_passwd`: -c, -b, -D.
    Passwd(passwd::PasswdArgs),
    /// Publish a message, as mosquitto_pub does (same options, output and exit codes).
    #[command(disable_help_flag = true)]
    Pub(Box<pubsub::PubArgs>),
    /// Subscribe and print messages, as mosquitto_sub does (same options, output and exit codes).
    #[command(disable_help_flag = true)]
    Sub(Box<pubsub::SubArgs>),
    /// Check a configuration file (syntax, values, listeners and their certificates) without
    /// starting anything; exits 0 when it can be used.
    CheckConfig {
        /// The configuration file (TOML).
        file: PathBuf,
    },
    /// Ask a running broker's admin API (clients, sessions, retained, kick, publish, stats...).
    Ctl(ctl::CtlArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on for MQTT over TCP (repeat for several); default 127.0.0.1:1883.
    #[arg(long = "listen", value_name = "ADDR:PORT")]
    listen: Vec<SocketAddr>,
    /// Configuration file (TOML).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Directory of the store (sessions, queued and retained messages); default ./tern-data.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Keep everything in memory: no data directory, nothing survives a restart
    /// (same as durability = "memory").
    #[arg(long, conflicts_with = "data_dir")]
    in_memory: bool,
    /// Log filter: error, warn, info, debug, trace (RUST_LOG takes precedence).
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<String>,
    /// Let clients without a username in (same as `allow_anonymous = true` in `[auth]`):
    /// needed to listen on a non-loopback address without a password file.
    #[arg(long)]
    allow_anonymous: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::try_parse().unwrap_or_else(|error| {
        // mosquitto_pub and mosquitto_sub exit 1 on a usage error; so do `tern pub`/`tern sub`.
        let tool = std::env::args().nth(1);
        if error.use_stderr() && matches!(tool.as_deref(), Some("pub" | "sub")) {
            let _ = error.print();
            std::process::exit(1);
        }
        error.exit()
    });
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Bench(args) => bench::main(*args),
        Command::Passwd(args) => passwd::main(args),
        Command::CheckConfig { file } => check_config(&file),
        Command::Ctl(args) => ctl::main(args),
        Command::Pub(args) => std::process::exit(pubsub::pub_main(*args)),
        Command::Sub(args) => std::process::exit(pubsub::sub_main(*args)),
    }
}

fn check_config(file: &std::path::Path) -> anyhow::Result<()> {
    let config = ServerConfig::from_file(file)?;
    tern_server::check_config(&config)
        .with_context(|| format!("{} cannot be used", file.display()))?;
    for warning in config.admin.warnings() {
        eprintln!("warning: {warning}");
    }
    println!(
        "{}: ok ({} listener{})",
        file.display(),
        config.listen.len() + config.listeners.len(),
        if config.listen.len() + config.listeners.len() == 1 {
            ""
        } else {
            "s"
        }
    );
    Ok(())
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => ServerConfig::from_file(path)?,
        None => ServerConfig::default(),
    };
    let overrides = tern_server::Overrides {
        listen: (!args.listen.is_empty()).then(|| args.listen.clone()),
        log_level: args.log_level.clone(),
        data_dir: args.data_dir.clone(),
        in_memory: args.in_memory,
        allow_anonymous: args.allow_anonymous,
    };
    overrides.apply(&mut config);
    logging::init(&config.log_level, config.log_format)?;
    let overridden = overrides.keys();
    if !overridden.is_empty() {
        tracing::info!(
            keys = ?overridden,
            "the command line overrides these keys of the configuration (a reload keeps them)"
        );
    }

    // The connections are served by the server's worker threads, each with its own event
    // loop; this one runs the signals, the broker's timers and the shutdown.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(async move {
        // Handled from here on: binding (the store's recovery) can take a while, and a SIGHUP
        // meanwhile must not kill the process (its default action).
        #[cfg(unix)]
        let hangup = hangup_signal();
        let server = Server::bind(config).await?;
        #[cfg(unix)]
        tokio::spawn(reload_on_sighup(hangup, server.config_reloader()));
        server.run(shutdown_signal(), SHUTDOWN_GRACE).await?;
        anyhow::Ok(())
    })?;
    runtime.shutdown_timeout(Duration::from_millis(500));
    Ok(())
}

/// The SIGHUP stream; from its creation on, SIGHUP no longer ends the process.
#[cfg(unix)]
fn hangup_signal() -> Option<tokio::signal::unix::Signal> {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::hangup()) {
        Ok(hangup) => Some(hangup),
        Err(error) => {
            tracing::warn!(%error, "cannot handle SIGHUP: TLS reloads only when files change");
            None
        }
    }
}

/// Reloads the configuration file and what it names (log level, TLS certificates, password
/// and ACL files) on each SIGHUP, as the admin API's reload does; the report (what was
/// applied, what needs a restart) is logged.
#[cfg(unix)]
async fn reload_on_sighup(
    hangup: Option<tokio::signal::unix::Signal>,
    reloader: tern_server::ConfigReloader,
) {
    let Some(mut hangup) = hangup else {
        return;
    };
    while hangup.recv().await.is_some() {
        tracing::info!(
            "SIGHUP: reloading TLS certificates, password and ACL files, and the configuration"
        );
        reloader.reload().await;
    }
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
