//! `tern bench`: a load generator with a delivery check, aimed at any MQTT broker. It owns the
//! entry point (runtime, printing, exit status) and the library API (`run`) the smoke test uses;
//! the scenarios, the client, the checker and the report live in the modules below.

mod args;
mod check;
mod client;
mod payload;
mod report;
mod scenarios;
mod stats;
mod sys;
mod transport;

use std::io::Write;
use std::time::Duration;

use anyhow::Context;

pub use args::{BenchArgs, BenchConfig, Scenario};
pub use check::{DeliveryCounts, Verdict};
pub use report::{BrokerFigures, ConnFigures, MessageFigures, Report};
pub use scenarios::run;
pub use stats::Percentiles;
pub use transport::{TlsOptions, Transport};

/// `tern bench`: runs the scenario, prints the summary (and JSON with `--json`), and exits with
/// status 1 when the delivery check fails.
pub fn main(args: BenchArgs) -> anyhow::Result<()> {
    let config = BenchConfig::from_args(&args)?;
    // One thread by default (a current-thread runtime): the bench shares the machine with the
    // broker, and on a small machine (2 cores) a multi-thread runtime would take the broker's
    // second core and add cross-thread wake-ups to every closed-loop step. One core is capped and
    // measured: the report gives the bench's CPU share, and warns when it nears 100%, which is
    // when --threads N (a multi-thread runtime) is worth it.
    let mut builder = if config.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(config.threads);
        builder
    };
    let runtime = builder
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let report = runtime.block_on(run(&config))?;
    runtime.shutdown_timeout(Duration::from_millis(200));

    if config.json {
        eprint!("{}", report.summary());
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{}", report.to_json())?;
        stdout.flush()?;
    } else {
        print!("{}", report.summary());
        std::io::stdout().flush()?;
    }
    if !report.verdict.pass {
        std::process::exit(1);
    }
    Ok(())
}
