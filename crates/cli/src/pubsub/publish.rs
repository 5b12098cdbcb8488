//! `tern pub`: connect, publish one message (`-m`, `-f`, `-s`, `-n`, with `--repeat`) or one
//! per line of stdin (`-l`), wait for the acknowledgements, disconnect.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use tern_client::{Client, ClientError, Message, Pending, PublishOutcome, QoS, ReasonCode};
use tokio::sync::mpsc;

use super::args::{ConnArgs, PacketProperties, parse_qos};
use super::{Tool, complain, connect_failed, debug_observer, reason_string};

/// Publish to an MQTT broker, as mosquitto_pub does (same options, output and exit codes).
#[derive(clap::Args, Debug, Clone)]
pub struct PubArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    /// The topic to publish to.
    #[arg(short = 't', long = "topic")]
    pub topic: Option<String>,
    /// The message.
    #[arg(
        short = 'm',
        long = "message",
        group = "payload",
        allow_hyphen_values = true
    )]
    pub message: Option<String>,
    /// Send the contents of a file as the message.
    #[arg(short = 'f', long = "file", group = "payload")]
    pub file: Option<PathBuf>,
    /// Send each line of stdin as a message.
    #[arg(short = 'l', long = "stdin-line", group = "payload")]
    pub lines: bool,
    /// Send a zero-length message.
    #[arg(short = 'n', long = "null-message", group = "payload")]
    pub null: bool,
    /// Send all of stdin as one message.
    #[arg(short = 's', long = "stdin-file", group = "payload")]
    pub stdin: bool,
    /// QoS: 0, 1 or 2.
    #[arg(short = 'q', long = "qos", value_parser = parse_qos, default_value = "0")]
    pub qos: QoS,
    /// Retain the message.
    #[arg(short = 'r', long = "retain")]
    pub retain: bool,
    /// The most QoS 1 and 2 messages in flight.
    #[arg(short = 'M', long = "max-inflight", default_value_t = 20)]
    pub max_inflight: u16,
    /// Publish the message this many times (-m, -f, -s, -n).
    #[arg(long = "repeat", default_value_t = 1)]
    pub repeat: u32,
    /// Seconds between repeats.
    #[arg(long = "repeat-delay", default_value_t = 0.0)]
    pub repeat_delay: f64,
}

enum Source {
    One(Bytes),
    Lines,
}

/// Messages published and not yet acknowledged beyond which `-l` waits for the oldest.
const LINES_OUTSTANDING: usize = 1024;

pub async fn run(args: PubArgs) -> i32 {
    let quiet = args.conn.quiet;
    let properties = match PacketProperties::parse(&args.conn.properties, args.conn.version) {
        Ok(properties) => properties,
        Err(error) => {
            complain(quiet, &error.to_string());
            return 1;
        }
    };
    let (mut options, url_topic) = match args.conn.client_options("tern_pub_", &properties) {
        Ok(options) => options,
        Err(error) => {
            complain(quiet, &error.to_string());
            return 1;
        }
    };
    let Some(topic) = args.topic.clone().or(url_topic) else {
        return usage("Error: Both topic and message must be supplied.");
    };
    let source = match source(&args).await {
        Ok(Some(source)) => source,
        Ok(None) => return usage("Error: Both topic and message must be supplied."),
        Err(text) => {
            complain(quiet, &text);
            return 1;
        }
    };
    options.max_inflight = args.max_inflight.max(1);
    if args.conn.debug {
        options.observer = Some(debug_observer(options.client_id.clone(), options.version));
    }
    let (client, mut events, _) = match Client::connect(options).await {
        Ok(connected) => connected,
        Err(error) => return connect_failed(&error, Tool::Pub, quiet),
    };
    // Nothing arrives that tern pub prints; the events are read so the client never waits.
    tokio::spawn(async move { while events.recv().await.is_some() {} });

    let publish = |payload: Bytes| {
        let mut message = Message::new(topic.clone(), payload, args.qos);
        message.retain = args.retain;
        message.properties = properties.publish.clone();
        let client = &client;
        async move { client.publish(message).await }
    };
    let mut status = 0;
    let mut outstanding: VecDeque<Pending<PublishOutcome>> = VecDeque::new();
    let mut mid = 0u32;
    match source {
        Source::One(payload) => {
            for n in 0..args.repeat.max(1) {
                if n > 0 && args.repeat_delay > 0.0 {
                    tokio::time::sleep(Duration::from_secs_f64(args.repeat_delay)).await;
                }
                match publish(payload.clone()).await {
                    Ok(pending) => {
                        mid += 1;
                        status = status.max(settle(pending, mid, quiet).await);
                    }
                    Err(error) => return failed(&error, quiet),
                }
            }
        }
        Source::Lines => {
            let mut lines = stdin_lines();
            while let Some(line) = lines.recv().await {
                let line = match line {
                    Ok(line) => line,
                    Err(error) => {
                        complain(quiet, &format!("Error: {error}"));
                        return 1;
                    }
                };
                match publish(line).await {
                    Ok(pending) => outstanding.push_back(pending),
                    Err(error) => return failed(&error, quiet),
                }
                while outstanding.len() > LINES_OUTSTANDING {
                    if let Some(pending) = outstanding.pop_front() {
                        mid += 1;
                        status = status.max(settle(pending, mid, quiet).await);
                    }
                }
            }
        }
    }
    for pending in outstanding {
        mid += 1;
        status = status.max(settle(pending, mid, quiet).await);
    }
    let reason = ReasonCode::NORMAL_DISCONNECTION;
    if let Err(error) = client
        .disconnect_with(reason, properties.disconnect.clone())
        .await
    {
        return failed(&error, quiet);
    }
    status
}

/// Waits for one acknowledgement: a refusal is a warning (as mosquitto_pub), a lost
/// connection an error.
async fn settle(pending: Pending<PublishOutcome>, mid: u32, quiet: bool) -> i32 {
    match pending.await {
        Ok(outcome) if outcome.reason_code.is_error() => {
            complain(
                quiet,
                &format!(
                    "Warning: Publish {mid} failed: {}.",
                    reason_string(outcome.reason_code)
                ),
            );
            if let Some(text) = outcome.properties.reason_string {
                complain(quiet, text.as_str());
            }
            0
        }
        Ok(_) => 0,
        Err(error) => failed(&error, quiet),
    }
}

fn failed(error: &ClientError, quiet: bool) -> i32 {
    match error {
        ClientError::Closed | ClientError::ClosedByBroker | ClientError::Io(_) => {
            complain(quiet, "Error: The connection was lost.");
            7
        }
        ClientError::InvalidTopic { .. } => {
            complain(
                quiet,
                "Error: Invalid input. Does your topic contain '+' or '#'?",
            );
            1
        }
        ClientError::PacketTooLarge { .. } => {
            complain(quiet, "Error: Message payload is too large.");
            1
        }
        ClientError::QosNotSupported(_) => {
            complain(
                quiet,
                "Error: Message QoS not supported on broker, try a lower QoS.",
            );
            1
        }
        other => {
            complain(quiet, &format!("Error: {other}"));
            1
        }
    }
}

fn usage(text: &str) -> i32 {
    eprintln!("{text}\nUse 'tern pub --help' to see usage.");
    1
}

/// The lines of stdin without their newline, read on a thread of their own (stdin blocks);
/// the channel is small, so reading waits while publishing does.
fn stdin_lines() -> mpsc::Receiver<std::io::Result<Bytes>> {
    let (lines, receiver) = mpsc::channel(64);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        loop {
            let mut line = Vec::new();
            match std::io::BufRead::read_until(&mut stdin, b'\n', &mut line) {
                Ok(0) => break,
                Ok(_) => {
                    if line.last() == Some(&b'\n') {
                        line.pop();
                    }
                    if lines.blocking_send(Ok(Bytes::from(line))).is_err() {
                        break;
                    }
                }
                Err(error) => {
                    let _ = lines.blocking_send(Err(error));
                    break;
                }
            }
        }
    });
    receiver
}

async fn source(args: &PubArgs) -> Result<Option<Source>, String> {
    if let Some(message) = &args.message {
        return Ok(Some(Source::One(Bytes::from(message.clone()))));
    }
    if let Some(file) = &args.file {
        return match std::fs::read(file) {
            Ok(bytes) => Ok(Some(Source::One(Bytes::from(bytes)))),
            Err(_) => Err(format!(
                "Error: Unable to read file \"{}\".",
                file.display()
            )),
        };
    }
    if args.stdin {
        let mut all = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut all)
            .map_err(|error| format!("Error: {error}"))?;
        return Ok(Some(Source::One(Bytes::from(all))));
    }
    if args.null {
        return Ok(Some(Source::One(Bytes::new())));
    }
    if args.lines {
        return Ok(Some(Source::Lines));
    }
    Ok(None)
}
