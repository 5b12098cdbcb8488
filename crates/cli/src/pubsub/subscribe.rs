//! `tern sub`: subscribe (again after each reconnection, as mosquitto_sub does) and print each
//! message until `-C` messages, `-W` seconds, `-E` (the SUBACK), `--retained-only`'s first
//! fresh message, or a signal.

use std::time::Duration;

use bytes::Bytes;
use tern_client::{
    Backoff, Client, Event, Message, Pending, QoS, ReasonCode, SubAck, SubscriptionOptions,
};

use super::args::{ConnArgs, PacketProperties, parse_qos};
use super::format::Output;
use super::{Tool, complain, connect_failed, debug_observer, topic_matches};

/// Subscribe to topics and print the messages, as mosquitto_sub does (same options, output
/// and exit codes).
#[derive(clap::Args, Debug, Clone)]
pub struct SubArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    /// A topic filter to subscribe to (repeat for several).
    #[arg(short = 't', long = "topic")]
    pub topics: Vec<String>,
    /// QoS of the subscriptions.
    #[arg(short = 'q', long = "qos", value_parser = parse_qos, default_value = "0")]
    pub qos: QoS,
    /// Unsubscribe from a filter after connecting (repeat for several).
    #[arg(short = 'U', long = "unsubscribe")]
    pub unsubscribe: Vec<String>,
    /// Exit after this many messages.
    #[arg(short = 'C', long = "count")]
    pub count: Option<u64>,
    /// Exit after this many seconds (status 27, "Timed out").
    #[arg(short = 'W', long = "timeout")]
    pub timeout: Option<u64>,
    /// Exit once the subscriptions are acknowledged.
    #[arg(short = 'E', long = "exit-after-subscribe")]
    pub exit_after_subscribe: bool,
    /// Do not print retained (stale) messages.
    #[arg(short = 'R', long = "no-retained")]
    pub no_retained: bool,
    /// Print only retained messages; exit at the first message that is not.
    #[arg(long = "retained-only")]
    pub retained_only: bool,
    /// Clear each retained message received (publish an empty retained message).
    #[arg(long = "remove-retained")]
    pub remove_retained: bool,
    /// Do not print messages whose topic matches this filter (repeat for several).
    #[arg(short = 'T', long = "filter-out")]
    pub filter_out: Vec<String>,
    /// Print "topic payload".
    #[arg(short = 'v', long = "verbose")]
    pub verbose: bool,
    /// Output format (% codes of mosquitto_sub).
    #[arg(short = 'F', long = "format", allow_hyphen_values = true)]
    pub format: Option<String>,
    /// No newline after each message.
    #[arg(short = 'N', long = "no-eol")]
    pub no_eol: bool,
    /// Accepted for compatibility (JSON is printed on one line).
    #[arg(long)]
    pub pretty: bool,
}

/// Status of `-W` expiring, as mosquitto_sub's.
const TIMED_OUT: i32 = 27;

pub async fn run(args: SubArgs) -> i32 {
    let quiet = args.conn.quiet;
    if args.no_retained && args.retained_only {
        eprintln!("\nError: Combining '-R' and '--retained-only' makes no sense.");
        return 1;
    }
    let properties = match PacketProperties::parse(&args.conn.properties, args.conn.version) {
        Ok(properties) => properties,
        Err(error) => {
            complain(quiet, &error.to_string());
            return 1;
        }
    };
    let (mut options, url_topic) = match args.conn.client_options("tern_sub_", &properties) {
        Ok(options) => options,
        Err(error) => {
            complain(quiet, &error.to_string());
            return 1;
        }
    };
    let mut filters = args.topics.clone();
    filters.extend(url_topic);
    if filters.is_empty() {
        eprintln!(
            "Error: You must specify a topic to subscribe to.\n\nUse 'tern sub --help' to see usage."
        );
        return 1;
    }
    for filter in filters.iter().chain(&args.filter_out) {
        if tern_codec::topic::validate_topic_filter(filter).is_err() {
            eprintln!(
                "Error: Invalid subscription topic '{filter}', are all '+' and '#' wildcards correct?"
            );
            return 1;
        }
    }
    // As mosquitto_sub: a lost connection is made again (every second at first).
    options.reconnect = Some(Backoff {
        initial: Duration::from_secs(1),
        max: Duration::from_secs(30),
        factor: 2.0,
        jitter: 0.25,
    });
    if args.conn.debug {
        options.observer = Some(debug_observer(options.client_id.clone(), options.version));
    }
    let v5 = options.version.is_v5();
    let (client, mut events, _) = match Client::connect(options).await {
        Ok(connected) => connected,
        Err(error) => return connect_failed(&error, Tool::Sub, quiet),
    };
    let output = Output {
        verbose: args.verbose,
        format: args.format.clone(),
        eol: !args.no_eol,
    };
    let mut suback = subscribe(&client, &args, &filters, &properties).await;
    let deadline = args
        .timeout
        .map(|secs| tokio::time::Instant::now() + Duration::from_secs(secs));
    let mut received = 0u64;
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    // Signals and -W end with "disconnect with will" (MQTT 5), as mosquitto_sub's handler.
    let with_will = if v5 {
        ReasonCode::DisconnectWithWillMessage
    } else {
        ReasonCode::NORMAL_DISCONNECTION
    };
    loop {
        // Biased, SUBACK first: it resolves as the packet is read, before the messages that
        // follow it become events, so -E exits before printing them (as mosquitto_sub).
        tokio::select! {
            biased;
            ack = wait_suback(&mut suback) => {
                suback = None;
                // An error means the connection went: the next Connected subscribes again.
                if ack.is_ok() && args.exit_after_subscribe {
                    let normal = ReasonCode::NORMAL_DISCONNECTION;
                    let _ = client.disconnect_with(normal, properties.disconnect.clone()).await;
                    return 0;
                }
            }
            event = events.recv() => match event {
                Some(Event::Message(message)) => {
                    match handle(&client, &args, &output, &message, &mut received).await {
                        Handled::Continue => {}
                        Handled::Exit(status) => {
                            let _ = client.disconnect_with(ReasonCode::NORMAL_DISCONNECTION, properties.disconnect.clone()).await;
                            return status;
                        }
                    }
                }
                Some(Event::Connected(_)) => {
                    // mosquitto_sub subscribes on every connection.
                    suback = subscribe(&client, &args, &filters, &properties).await;
                }
                Some(Event::Disconnected(_) | Event::Reconnecting { .. }) => {}
                None => {
                    complain(quiet, "Error: The connection was lost.");
                    return 7;
                }
            },
            () = sleep_until(deadline) => {
                complain(quiet, "Timed out");
                let _ = client.disconnect_with(with_will, properties.disconnect.clone()).await;
                return TIMED_OUT;
            }
            () = &mut shutdown => {
                let _ = client.disconnect_with(with_will, properties.disconnect.clone()).await;
                return 0;
            }
        }
    }
}

enum Handled {
    Continue,
    Exit(i32),
}

async fn handle(
    client: &Client,
    args: &SubArgs,
    output: &Output,
    message: &Message,
    received: &mut u64,
) -> Handled {
    if args.retained_only && !message.retain {
        return Handled::Exit(0);
    }
    if message.retain && args.no_retained {
        return Handled::Continue;
    }
    if args
        .filter_out
        .iter()
        .any(|f| topic_matches(f, &message.topic))
    {
        return Handled::Continue;
    }
    if args.remove_retained && message.retain {
        let mut clear = Message::new(message.topic.clone(), Bytes::new(), QoS::AtLeastOnce);
        clear.retain = true;
        // Answered in the background; a failure shows as the retained message staying.
        let _ = client.publish(clear).await;
    }
    let mut stdout = std::io::stdout().lock();
    if output
        .write(&mut stdout, message, message.packet_id)
        .is_err()
    {
        // stdout is gone (a closed pipe): nothing more can be printed.
        return Handled::Exit(1);
    }
    drop(stdout);
    *received += 1;
    match args.count {
        Some(count) if *received >= count => Handled::Exit(0),
        _ => Handled::Continue,
    }
}

async fn subscribe(
    client: &Client,
    args: &SubArgs,
    filters: &[String],
    properties: &PacketProperties,
) -> Option<Pending<SubAck>> {
    let options = SubscriptionOptions {
        qos: args.qos,
        ..SubscriptionOptions::default()
    };
    let pending = client
        .subscribe(
            filters.iter().map(|f| (f.clone(), options)),
            properties.subscribe.clone(),
        )
        .await
        .ok();
    if !args.unsubscribe.is_empty() {
        // Fire and forget, as mosquitto_sub's -U.
        let _ = client
            .unsubscribe(
                args.unsubscribe.iter().cloned(),
                properties.unsubscribe.clone(),
            )
            .await;
    }
    pending
}

async fn wait_suback(
    pending: &mut Option<Pending<SubAck>>,
) -> Result<SubAck, tern_client::ClientError> {
    match pending {
        Some(pending) => pending.await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut terminate) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
