//! `tern ctl`: the admin API from the shell. One HTTP/1.1 request per call (hyper 1), the
//! answer as a table (listings), `key: value` lines (one object) or, with `--json`, the JSON
//! the API returned. Listings are walked page by page to the end.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

/// Entries asked per page while a listing is walked.
const PAGE: usize = 1000;
/// Pages walked at most (a listing that never ends is a bug, not a reason to loop forever).
const MAX_PAGES: usize = 10_000;

#[derive(clap::Args, Debug)]
pub struct CtlArgs {
    /// The admin API's base URL (http only). Default: from --config's `[admin] bind`, else
    /// http://127.0.0.1:9883.
    #[arg(long, global = true)]
    pub url: Option<String>,
    /// The broker's configuration file: the URL from its `[admin] bind`, the token from its
    /// `[admin] token_file` (or its data directory).
    #[arg(long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// The bearer token. Visible to other local users in `ps` and kept in the shell's
    /// history: prefer --token-file or the environment variable TERN_ADMIN_TOKEN.
    #[arg(long, global = true, conflicts_with = "token_file")]
    pub token: Option<String>,
    /// The file holding the token. Without --token and --token-file: TERN_ADMIN_TOKEN, else
    /// the token file of --config, else admin.token in --data-dir.
    #[arg(long, value_name = "FILE", global = true)]
    pub token_file: Option<PathBuf>,
    /// The broker's data directory, where it generated the token (default: --config's, else
    /// tern-data).
    #[arg(long, value_name = "DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// Give up (exit 1) when the API has not answered within this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 10, global = true,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: u64,
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// Table and `key: value` output escape control characters (a client id or a payload is
/// chosen by whoever connects); `--json` is JSON. A client id or topic that starts with `-`
/// goes after `--` (`tern ctl kick -- -odd-id`).
#[derive(clap::Subcommand, Debug)]
pub enum CtlCommand {
    /// Connected clients.
    Clients,
    /// One connected client in detail.
    Client { client_id: String },
    /// Close a client's connection (MQTT 5: DISCONNECT 0x98 Administrative action).
    Kick { client_id: String },
    /// Sessions, connected or not.
    Sessions,
    /// End a session (and close its connection, if any).
    DeleteSession { client_id: String },
    /// Bridges to other brokers and their state.
    Bridges,
    /// The cluster this node belongs to (`[cluster]`): status, join, leave.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Subscriptions, every one or a client's.
    Subscriptions {
        #[arg(long = "client", value_name = "ID")]
        client_id: Option<String>,
        /// Only subscriptions to exactly this filter.
        #[arg(long)]
        filter: Option<String>,
    },
    /// Retained messages whose topic matches FILTER (default #).
    Retained { filter: Option<String> },
    /// One retained message whole (the payload's control characters escaped).
    RetainedGet { topic: String },
    /// Clear a retained message.
    RetainedDelete { topic: String },
    /// Publish a message as the broker.
    Publish {
        topic: String,
        /// The payload (UTF-8); or --file.
        #[arg(required_unless_present = "file")]
        message: Option<String>,
        /// The payload from a file, as it is (binary sent in base64).
        #[arg(short, long, value_name = "FILE", conflicts_with = "message")]
        file: Option<PathBuf>,
        #[arg(short, long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
        qos: u8,
        #[arg(short, long)]
        retain: bool,
        /// MQTT 5 Message Expiry Interval, seconds.
        #[arg(long, value_name = "SECONDS")]
        expiry: Option<u32>,
        /// MQTT 5 Content Type.
        #[arg(long, value_name = "TYPE")]
        content_type: Option<String>,
    },
    /// The broker in figures.
    Stats,
    /// The running configuration (secrets redacted).
    Config,
    /// Read the configuration file again (as SIGHUP).
    Reload,
    /// Per-client debug tracing on or off.
    Trace {
        client_id: String,
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
}

/// `tern ctl cluster ...`.
#[derive(clap::Subcommand, Debug)]
pub enum ClusterCommand {
    /// This node's view: its role, the leader, the voters, each node's addresses and link.
    Status,
    /// This node joins the cluster of the node whose cluster address is ADDR (HOST:PORT).
    Join { addr: String },
    /// Remove NODE (an id) from the cluster; without NODE, this node leaves.
    Leave { node: Option<u64> },
}

pub fn main(args: CtlArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let output = runtime.block_on(run(&args))?;
    if !output.is_empty() {
        println!("{output}");
    }
    Ok(())
}

/// Runs the command; what to print.
pub async fn run(args: &CtlArgs) -> anyhow::Result<String> {
    let api = Api::new(args)?;
    let out = |value: Value, table: fn(&Value) -> String| {
        if args.json {
            serde_json::to_string_pretty(&value).unwrap_or_default()
        } else {
            table(&value)
        }
    };
    Ok(match &args.command {
        CtlCommand::Clients => out(api.listing("/api/v1/clients", &[]).await?, |v| {
            table(
                v,
                &[
                    "client_id",
                    "username",
                    "peer",
                    "protocol",
                    "keep_alive_s",
                    "subscriptions",
                    "queued",
                    "inflight",
                ],
            )
        }),
        CtlCommand::Client { client_id } => out(
            api.get(&format!("/api/v1/clients/{}", encode(client_id)))
                .await?,
            fields,
        ),
        CtlCommand::Kick { client_id } => {
            api.call(
                Method::DELETE,
                &format!("/api/v1/clients/{}", encode(client_id)),
                None,
            )
            .await?;
            done(args, format!("kicked {client_id}"))
        }
        CtlCommand::Sessions => out(api.listing("/api/v1/sessions", &[]).await?, |v| {
            table(
                v,
                &[
                    "client_id",
                    "connected",
                    "expires_in_s",
                    "subscriptions",
                    "queued",
                    "inflight",
                ],
            )
        }),
        CtlCommand::Bridges => {
            let answer = api.get("/api/v1/bridges").await?;
            out(answer["items"].clone(), |v| {
                table(
                    v,
                    &[
                        "name",
                        "connected",
                        "messages_out",
                        "messages_in",
                        "queue_depth",
                        "reconnects",
                        "last_error",
                    ],
                )
            })
        }
        CtlCommand::Cluster(ClusterCommand::Status) => {
            out(api.get("/api/v1/cluster").await?, cluster_status)
        }
        CtlCommand::Cluster(ClusterCommand::Join { addr }) => {
            api.call(
                Method::POST,
                "/api/v1/cluster/join",
                Some(json!({ "addr": addr })),
            )
            .await?;
            done(args, format!("joined the cluster through {addr}"))
        }
        CtlCommand::Cluster(ClusterCommand::Leave { node }) => {
            let body = node.map(|node| json!({ "node": node }));
            let answer = api
                .call(Method::POST, "/api/v1/cluster/leave", body)
                .await?;
            out(answer, |v| {
                format!("node {} left the cluster", cell(&v["node"]))
            })
        }
        CtlCommand::DeleteSession { client_id } => {
            api.call(
                Method::DELETE,
                &format!("/api/v1/sessions/{}", encode(client_id)),
                None,
            )
            .await?;
            done(args, format!("deleted the session of {client_id}"))
        }
        CtlCommand::Subscriptions { client_id, filter } => {
            let mut query = Vec::new();
            if let Some(id) = client_id {
                query.push(("client_id", id.as_str()));
            }
            if let Some(filter) = filter {
                query.push(("filter", filter.as_str()));
            }
            out(api.listing("/api/v1/subscriptions", &query).await?, |v| {
                table(
                    v,
                    &[
                        "client_id",
                        "filter",
                        "qos",
                        "no_local",
                        "retain_as_published",
                        "retain_handling",
                        "identifier",
                    ],
                )
            })
        }
        CtlCommand::Retained { filter } => out(
            api.listing(
                "/api/v1/retained",
                &[("filter", filter.as_deref().unwrap_or("#"))],
            )
            .await?,
            |v| table(v, &["topic", "qos", "payload_bytes"]),
        ),
        CtlCommand::RetainedGet { topic } => out(
            api.get(&format!("/api/v1/retained/message?topic={}", encode(topic)))
                .await?,
            fields,
        ),
        CtlCommand::RetainedDelete { topic } => {
            api.call(
                Method::DELETE,
                &format!("/api/v1/retained/message?topic={}", encode(topic)),
                None,
            )
            .await?;
            done(args, format!("cleared the retained message on {topic}"))
        }
        CtlCommand::Publish {
            topic,
            message,
            file,
            qos,
            retain,
            expiry,
            content_type,
        } => {
            let mut body = json!({ "topic": topic, "qos": qos, "retain": retain });
            match (message, file) {
                (Some(message), _) => body["payload"] = json!(message),
                (None, Some(file)) => {
                    let bytes = std::fs::read(file)
                        .with_context(|| format!("cannot read {}", file.display()))?;
                    match String::from_utf8(bytes) {
                        Ok(text) => body["payload"] = json!(text),
                        Err(binary) => {
                            body["payload_base64"] =
                                json!(<base64ct::Base64 as base64ct::Encoding>::encode_string(
                                    binary.as_bytes()
                                ))
                        }
                    }
                }
                (None, None) => {}
            }
            if let Some(expiry) = expiry {
                body["message_expiry_s"] = json!(expiry);
            }
            if let Some(content_type) = content_type {
                body["content_type"] = json!(content_type);
            }
            api.call(Method::POST, "/api/v1/publish", Some(body))
                .await?;
            done(args, format!("published to {topic}"))
        }
        CtlCommand::Stats => out(api.get("/api/v1/stats").await?, fields),
        CtlCommand::Config => serde_json::to_string_pretty(&api.get("/api/v1/config").await?)?,
        CtlCommand::Reload => out(
            api.call(Method::POST, "/api/v1/reload", None).await?,
            fields,
        ),
        CtlCommand::Trace { client_id, state } => {
            let body = json!({ "on": state == "on" });
            let path = format!("/api/v1/clients/{}/tracing", encode(client_id));
            out(api.call(Method::POST, &path, Some(body)).await?, fields)
        }
    })
}

/// What an action that returns nothing prints: a line, or `{"ok": true}` with --json.
fn done(args: &CtlArgs, line: String) -> String {
    if args.json {
        "{\"ok\":true}".to_owned()
    } else {
        line
    }
}

/// The admin API at a base URL, with a token.
struct Api {
    host: String,
    /// `host:port` to connect to.
    authority: String,
    /// The URL's path prefix, without a trailing slash.
    prefix: String,
    token: String,
    /// Where the token came from, for the message when the API refuses it.
    token_source: String,
    timeout: Duration,
}

impl Api {
    fn new(args: &CtlArgs) -> anyhow::Result<Api> {
        let config = match &args.config {
            Some(path) => Some(
                tern_server::ServerConfig::from_file(path)
                    .with_context(|| format!("cannot read the configuration {}", path.display()))?,
            ),
            None => None,
        };
        let url = match (&args.url, config.as_ref().and_then(|c| c.admin.bind)) {
            (Some(url), _) => url.clone(),
            (None, Some(bind)) => format!("http://{}", reachable(bind)),
            (None, None) => "http://127.0.0.1:9883".to_owned(),
        };
        let Some(rest) = url.strip_prefix("http://") else {
            bail!("--url must be http://HOST:PORT (got {url:?})");
        };
        let (authority, prefix) = match rest.find('/') {
            Some(slash) => (&rest[..slash], rest[slash..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if authority.is_empty() {
            bail!("--url has no host: {url:?}");
        }
        let host = authority.to_owned();
        let authority = if authority
            .rsplit_once(':')
            .is_some_and(|(_, port)| port.parse::<u16>().is_ok())
        {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        let (token, token_source) = match (&args.token, &args.token_file) {
            (Some(token), _) => (token.trim().to_owned(), "--token".to_owned()),
            (None, Some(file)) => (read_token(file)?, file.display().to_string()),
            (None, None) => match std::env::var("TERN_ADMIN_TOKEN") {
                Ok(token) if !token.trim().is_empty() => {
                    (token.trim().to_owned(), "TERN_ADMIN_TOKEN".to_owned())
                }
                _ => {
                    let path = match (&args.data_dir, &config) {
                        (Some(dir), _) => dir.join("admin.token"),
                        (None, Some(config)) => config.admin.token_path(&config.data_dir),
                        (None, None) => PathBuf::from("tern-data").join("admin.token"),
                    };
                    (read_token(&path)?, path.display().to_string())
                }
            },
        };
        Ok(Api {
            host,
            authority,
            prefix: prefix.to_owned(),
            token,
            token_source,
            timeout: Duration::from_secs(args.timeout),
        })
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call(Method::GET, path, None).await
    }

    /// Every page of a listing, its entries in one array.
    async fn listing(&self, path: &str, query: &[(&str, &str)]) -> anyhow::Result<Value> {
        let mut items = Vec::new();
        let mut after: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let mut uri = format!("{path}?limit={PAGE}");
            for (key, value) in query {
                uri.push_str(&format!("&{key}={}", encode(value)));
            }
            if let Some(after) = &after {
                uri.push_str(&format!("&after={}", encode(after)));
            }
            let page = self.get(&uri).await?;
            if let Some(entries) = page["items"].as_array() {
                items.extend(entries.iter().cloned());
            }
            match page["next_after"].as_str() {
                Some(next) if after.as_deref() == Some(next) => {
                    bail!("{path}: the listing's cursor did not move ({next:?})")
                }
                Some(next) => after = Some(next.to_owned()),
                None => return Ok(Value::Array(items)),
            }
        }
        bail!("{path}: more than {MAX_PAGES} pages")
    }

    /// One request, bounded by `--timeout` (connect, request and answer): the JSON answer
    /// (`null` for 204), or the API's error as an error.
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        match tokio::time::timeout(self.timeout, self.call_once(method, path, body)).await {
            Ok(result) => result,
            Err(_) => bail!(
                "the admin API at {} did not answer within {} s",
                self.authority,
                self.timeout.as_secs()
            ),
        }
    }

    async fn call_once(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let stream = tokio::net::TcpStream::connect(&self.authority)
            .await
            .with_context(|| format!("cannot connect to the admin API at {}", self.authority))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP handshake with the admin API")?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.prefix))
            .header(header::HOST, &self.host)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))?;
        let response = sender
            .send_request(request)
            .await
            .context("the admin API did not answer")?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .context("reading the admin API's answer")?
            .to_bytes();
        if status == StatusCode::NO_CONTENT {
            return Ok(Value::Null);
        }
        let value: Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        if status == StatusCode::UNAUTHORIZED {
            bail!(
                "the admin API refused the token (from {}) (401)",
                self.token_source
            );
        }
        if !status.is_success() {
            let message = value["error"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| value.to_string());
            bail!("{} ({})", message, status.as_u16());
        }
        Ok(value)
    }
}

/// Where to reach a listener bound to `bind`: an unspecified address (0.0.0.0, ::) by its
/// loopback.
fn reachable(bind: std::net::SocketAddr) -> std::net::SocketAddr {
    let ip = match bind.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    std::net::SocketAddr::new(ip, bind.port())
}

/// The token in `path`, checked as the broker checks it (long enough, printable).
fn read_token(path: &std::path::Path) -> anyhow::Result<String> {
    let token = tern_admin::Token::read(path).with_context(
        || "no usable admin token (give --token-file FILE, TERN_ADMIN_TOKEN or --data-dir DIR)",
    )?;
    Ok(token.as_str().to_owned())
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// A JSON value as a table cell: strings bare, null as `-`; control characters escaped.
fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(text) => escape(text),
        other => escape(&other.to_string()),
    }
}

/// `text` safe for a terminal: control characters (C0, DEL, C1) and the bidirectional
/// overrides escaped (`\n`, `\e`, `\x7f`, `\u{202e}`), and the backslash doubled, so what an
/// MQTT client chose as its id or payload cannot move the cursor, retitle the terminal or
/// forge a row.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{1b}' => out.push_str("\\e"),
            c if (c as u32) < 0x80 && c.is_control() => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if c.is_control()
                || ('\u{202a}'..='\u{202e}').contains(&c)
                || ('\u{2066}'..='\u{2069}').contains(&c) =>
            {
                out.push_str(&format!("\\u{{{:x}}}", c as u32))
            }
            c => out.push(c),
        }
    }
    out
}

/// An array of objects as aligned columns, headed by the keys.
fn table(rows: &Value, columns: &[&str]) -> String {
    let rows: Vec<Vec<String>> = rows
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|row| columns.iter().map(|c| cell(&row[*c])).collect())
                .collect()
        })
        .unwrap_or_default();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([c.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(text, width)| format!("{text:<width$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let mut out = vec![line(columns.iter().map(|c| c.to_uppercase()).collect())];
    out.extend(rows.into_iter().map(line));
    out.join("\n")
}

/// `GET /api/v1/cluster` for people: a summary, then one row per node (its role in the Raft
/// group, its addresses, this node's link to it and the messages waiting for it).
fn cluster_status(status: &Value) -> String {
    let ids = |key: &str| {
        status[key]
            .as_array()
            .map(|ids| ids.iter().map(cell).collect::<Vec<_>>().join(","))
            .unwrap_or_default()
    };
    let forwarding = &status["forwarding"];
    let me = &status["node_id"];
    let leader = &status["leader"];
    let mut lines = vec![
        format!(
            "node {} ({}), leader {}, term {}",
            cell(me),
            cell(&status["role"]),
            cell(leader),
            cell(&status["term"])
        ),
        format!("voters: {}  learners: {}", ids("voters"), ids("learners")),
        format!(
            "log: last index {}, last applied {}",
            cell(&status["last_log_index"]),
            cell(&status["last_applied"])
        ),
        format!(
            "replicated: sessions {}, routes {}, retained {}",
            cell(&status["sessions"]),
            cell(&status["routes"]),
            cell(&status["retained"])
        ),
        format!(
            "forwarded: sent {}, resent {}, received {}, duplicates {}, dropped {}, pending {}, late {}",
            cell(&forwarding["sent"]),
            cell(&forwarding["resent"]),
            cell(&forwarding["received"]),
            cell(&forwarding["duplicates"]),
            cell(&forwarding["dropped"]),
            cell(&forwarding["pending"]),
            cell(&forwarding["late"])
        ),
        String::new(),
    ];
    let rows: Vec<Value> = status["nodes"]
        .as_array()
        .map(|nodes| {
            nodes
                .iter()
                .map(|node| {
                    let role = if node["id"] == *leader {
                        "leader"
                    } else if node["voter"] == json!(true) {
                        "voter"
                    } else {
                        "learner"
                    };
                    let link = if node["id"] == *me {
                        "self"
                    } else if node["linked"] == json!(true) {
                        "up"
                    } else {
                        "down"
                    };
                    let mqtt = node["mqtt_addrs"]
                        .as_array()
                        .map(|addrs| {
                            let addrs: Vec<&str> = addrs.iter().filter_map(Value::as_str).collect();
                            addrs.join(",")
                        })
                        .filter(|addrs| !addrs.is_empty())
                        .unwrap_or_else(|| "-".to_owned());
                    json!({
                        "node": node["id"],
                        "role": role,
                        "cluster_addr": node["cluster_addr"],
                        "mqtt_addrs": mqtt,
                        "link": link,
                        "pending": node["pending"],
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    lines.push(table(
        &Value::Array(rows),
        &[
            "node",
            "role",
            "cluster_addr",
            "mqtt_addrs",
            "link",
            "pending",
        ],
    ));
    lines.join("\n")
}

/// An object as `key: value` lines (nested values as JSON).
fn fields(value: &Value) -> String {
    match value.as_object() {
        Some(object) => object
            .iter()
            .map(|(key, value)| format!("{}: {}", escape(key), cell(value)))
            .collect::<Vec<_>>()
            .join("\n"),
        None => cell(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_reserved_characters() {
        assert_eq!(encode("a b/c#+"), "a%20b%2Fc%23%2B");
        assert_eq!(encode("x\u{0}y"), "x%00y");
    }

    /// Review 13 #7: nothing a client chose reaches the terminal as a control character.
    #[test]
    fn escapes_control_characters() {
        assert_eq!(
            escape("evil\u{1b}[2J\nrow\t\u{7}\u{9b}\u{202e}\\"),
            "evil\\e[2J\\nrow\\t\\x07\\u{9b}\\u{202e}\\\\"
        );
        assert_eq!(escape("plain/topic é"), "plain/topic é");
    }

    #[test]
    fn table_aligns_columns() {
        let rows = json!([{"a": "x", "b": 1}, {"a": "longer", "b": null}]);
        assert_eq!(table(&rows, &["a", "b"]), "A       B\nx       1\nlonger  -");
    }
}
