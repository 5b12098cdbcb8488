//! The admin HTTP API (issue 13, "Acting on it") against a fake backend: every route, the
//! bearer token, pagination, errors as JSON with the backend's status, the OpenAPI description.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tern_admin::testing::FakeBackend;
use tern_admin::{AdminOptions, ROUTES, Token};
use tower::ServiceExt;

const TOKEN: &str = "0123456789abcdef0123456789abcdef";

fn app(fake: &FakeBackend, metrics_auth: bool) -> Router {
    tern_admin::router(
        Arc::new(fake.clone()),
        AdminOptions {
            metrics_auth,
            ..AdminOptions::new(Token::new(TOKEN).unwrap())
        },
    )
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

async fn call(
    app: &Router,
    method: Method,
    uri: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Answer {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let body = match body {
        Some(body) => {
            request = request.header(header::CONTENT_TYPE, "application/json");
            Body::from(body.to_string())
        }
        None => Body::empty(),
    };
    let response = app
        .clone()
        .oneshot(request.body(body).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    Answer {
        status,
        headers,
        body,
    }
}

async fn get(app: &Router, uri: &str) -> Answer {
    call(app, Method::GET, uri, Some(TOKEN), None).await
}

/// Issue 13: health needs no token; readiness is 200 when ready, 503 with reasons when not.
#[tokio::test]
async fn health_and_readiness() {
    let fake = FakeBackend::sample();
    let app = app(&fake, false);
    let health = call(&app, Method::GET, "/api/v1/health", None, None).await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.json(), json!({"status": "ok"}));
    let ready = get(&app, "/api/v1/ready").await;
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(ready.json()["ready"], true);
    fake.lock().ready = false;
    let ready = get(&app, "/api/v1/ready").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.json()["reasons"][0], "the store refuses work");
}

/// Issue 13: every route but health, the dashboard and (by default) /metrics refuses a call
/// without the token, or with a wrong one, with 401 and `WWW-Authenticate: Bearer` (RFC 6750).
#[tokio::test]
async fn unauthorised_calls_refused_on_every_route() {
    let fake = FakeBackend::sample();
    let app = app(&fake, false);
    let public = [
        "/api/v1/health",
        "/",
        "/dashboard/app.js",
        "/dashboard/style.css",
        "/metrics",
    ];
    for &(method, path) in ROUTES {
        let uri = path.replace("{client_id}", "alpha");
        let uri = if uri.ends_with("/retained/message") {
            format!("{uri}?topic=sensors/temp")
        } else {
            uri
        };
        let method: Method = method.parse().unwrap();
        for token in [
            None,
            Some("wrong-token-wrong-token-wrong"),
            Some(&TOKEN[..TOKEN.len() - 1]),
        ] {
            let answer = call(
                &app,
                method.clone(),
                &uri,
                token,
                Some(json!({"on": true, "topic": "t"})),
            )
            .await;
            if public.contains(&path) {
                assert_ne!(answer.status, StatusCode::UNAUTHORIZED, "{method} {path}");
            } else {
                assert_eq!(
                    answer.status,
                    StatusCode::UNAUTHORIZED,
                    "{method} {path} with {token:?}"
                );
                assert_eq!(
                    answer.headers[header::WWW_AUTHENTICATE],
                    "Bearer realm=\"tern\""
                );
                assert!(answer.json()["error"].is_string());
            }
        }
    }
    // Nothing was done on the fake's side.
    let state = fake.lock();
    assert!(state.kicked.is_empty() && state.published.is_empty() && state.reloads == 0);
    assert_eq!(state.clients.len(), 2);
}

/// `Authorization: bearer` in any case of the scheme, as RFC 7235 says schemes are.
#[tokio::test]
async fn bearer_scheme_case_insensitive() {
    let app = app(&FakeBackend::sample(), false);
    let request = Request::get("/api/v1/stats")
        .header(header::AUTHORIZATION, format!("bEaReR {TOKEN}"))
        .body(Body::empty())
        .unwrap();
    assert_eq!(app.oneshot(request).await.unwrap().status(), StatusCode::OK);
}

/// Issue 13 `[admin] metrics_auth`: /metrics is public by default, needs the token when true;
/// its content type is OpenMetrics 1.0 text.
#[tokio::test]
async fn metrics_with_and_without_auth() {
    let fake = FakeBackend::sample();
    let open = app(&fake, false);
    let answer = call(&open, Method::GET, "/metrics", None, None).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        answer.headers[header::CONTENT_TYPE],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(
        String::from_utf8(answer.body)
            .unwrap()
            .contains("tern_connections 2")
    );
    let closed = app(&fake, true);
    assert_eq!(
        call(&closed, Method::GET, "/metrics", None, None)
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(get(&closed, "/metrics").await.status, StatusCode::OK);
}

#[tokio::test]
async fn stats_config_and_reload() {
    let fake = FakeBackend::sample();
    let app = app(&fake, false);
    let stats = get(&app, "/api/v1/stats").await;
    assert_eq!(stats.status, StatusCode::OK);
    assert_eq!(stats.headers[header::CACHE_CONTROL], "no-store");
    assert_eq!(stats.json()["connections"], 2);
    assert_eq!(stats.json()["store_accepting"], true);
    let config = get(&app, "/api/v1/config").await.json();
    assert_eq!(config["auth"]["password_file"], "<redacted>");
    let reload = call(&app, Method::POST, "/api/v1/reload", Some(TOKEN), None).await;
    assert_eq!(reload.status, StatusCode::OK);
    assert_eq!(reload.json()["needs_restart"], json!(["listen"]));
    assert_eq!(fake.lock().reloads, 1);
}

/// Issue 13: list, inspect and kick clients; a kick of a client not connected is 404 in JSON.
#[tokio::test]
async fn clients_list_inspect_kick() {
    let fake = FakeBackend::sample();
    let app = app(&fake, false);
    let list = get(&app, "/api/v1/clients").await.json();
    let ids: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["client_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["alpha", "beta"]);
    assert_eq!(list["next_after"], Value::Null);
    let alpha = get(&app, "/api/v1/clients/alpha").await;
    assert_eq!(alpha.status, StatusCode::OK);
    assert_eq!(alpha.json()["username"], "user-alpha");
    assert_eq!(alpha.json()["subscriptions"][0]["filter"], "sensors/#");
    let kick = call(
        &app,
        Method::DELETE,
        "/api/v1/clients/alpha",
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(kick.status, StatusCode::NO_CONTENT);
    assert_eq!(fake.lock().kicked, ["alpha"]);
    let again = call(
        &app,
        Method::DELETE,
        "/api/v1/clients/alpha",
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
    assert!(again.json()["error"].as_str().unwrap().contains("alpha"));
    assert_eq!(
        get(&app, "/api/v1/clients/alpha").await.status,
        StatusCode::NOT_FOUND
    );
}

/// A client id with a slash and a space reaches the backend whole (percent-encoded in the path).
#[tokio::test]
async fn client_id_percent_encoded() {
    let fake = FakeBackend::sample();
    fake.lock().add_client("room 1/lamp", &[]);
    let app = app(&fake, false);
    let answer = get(&app, "/api/v1/clients/room%201%2Flamp").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json()["client_id"], "room 1/lamp");
}

#[tokio::test]
async fn client_tracing_on_off() {
    let fake = FakeBackend::sample();
    let app = app(&fake, false);
    let on = call(
        &app,
        Method::POST,
        "/api/v1/clients/beta/tracing",
        Some(TOKEN),
        Some(json!({"on": true})),
    )
    .await;
    assert_eq!(on.status, StatusCode::OK);
    assert_eq!(on.json(), json!({"client_id": "beta", "tracing": true}));
    assert!(fake.lock().clients["beta"].tracing);
    let missing = call(
        &app,
        Method::POST,
        "/api/v1/clients/nobody/tracing",
        Some(TOKEN),
        Some(json!({"on": true})),
    )
    .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let bad = call(
        &app,
        Method::POST,
        "/api/v1/clients/beta/tracing",
        Some(TOKEN),
        Some(json!({"on": "yes"})),
    )
    .await;
    assert!(bad.status.is_client_error());
    assert!(bad.json()["error"].is_string());
}

/// Issue 13: list and delete sessions, connected or not.
#[tokio::test]
async fn sessions_list_and_delete() {
    let fake = FakeBackend::sample();
    let app = app(&fake, false);
    let list = get(&app, "/api/v1/sessions").await.json();
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    assert_eq!(items[2]["client_id"], "gamma");
    assert_eq!(items[2]["connected"], false);
    assert_eq!(items[2]["expires_in_s"], 3600);
    let deleted = call(
        &app,
        Method::DELETE,
        "/api/v1/sessions/gamma",
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    let again = call(
        &app,
        Method::DELETE,
        "/api/v1/sessions/gamma",
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
}

/// Pagination: `limit` and `after`, `next_after` until the last page; `limit` capped at
/// Page::MAX_LIMIT, 0 refused.
#[tokio::test]
async fn pagination_walks_every_client_once() {
    let fake = FakeBackend::new();
    for i in 0..25 {
        fake.lock().add_client(&format!("c{i:02}"), &[]);
    }
    let app = app(&fake, false);
    let mut seen = Vec::new();
    let mut uri = "/api/v1/clients?limit=10".to_owned();
    loop {
        let page = get(&app, &uri).await.json();
        for item in page["items"].as_array().unwrap() {
            seen.push(item["client_id"].as_str().unwrap().to_owned());
        }
        match page["next_after"].as_str() {
            Some(after) => uri = format!("/api/v1/clients?limit=10&after={after}"),
            None => break,
        }
    }
    let expected: Vec<String> = (0..25).map(|i| format!("c{i:02}")).collect();
    assert_eq!(seen, expected);
    let big = get(&app, "/api/v1/clients?limit=999999").await;
    assert_eq!(big.status, StatusCode::OK);
    let zero = get(&app, "/api/v1/clients?limit=0").await;
    assert_eq!(zero.status, StatusCode::BAD_REQUEST);
    let junk = get(&app, "/api/v1/sessions?limit=many").await;
    assert_eq!(junk.status, StatusCode::BAD_REQUEST);
    assert!(junk.json()["error"].is_string());
}

#[tokio::test]
async fn subscriptions_by_client_and_filter_paged() {
    let fake = FakeBackend::sample();
    fake.lock().add_client("delta", &["a", "b", "c"]);
    let app = app(&fake, false);
    let all = get(&app, "/api/v1/subscriptions").await.json();
    assert_eq!(all["items"].as_array().unwrap().len(), 5);
    let beta = get(&app, "/api/v1/subscriptions?client_id=beta")
        .await
        .json();
    assert_eq!(beta["items"][0]["filter"], "alerts/+");
    let by_filter = get(&app, "/api/v1/subscriptions?filter=sensors/%23")
        .await
        .json();
    assert_eq!(by_filter["items"][0]["client_id"], "alpha");
    let first = get(&app, "/api/v1/subscriptions?client_id=delta&limit=2")
        .await
        .json();
    assert_eq!(first["next_after"], "delta\u{0}b");
    let rest = get(
        &app,
        "/api/v1/subscriptions?client_id=delta&limit=2&after=delta%00b",
    )
    .await
    .json();
    assert_eq!(rest["items"][0]["filter"], "c");
    assert_eq!(rest["next_after"], Value::Null);
}

/// Issue 13: list/get/delete retained messages; a backend's Invalid is a 400 in JSON.
#[tokio::test]
async fn retained_list_get_delete() {
    let fake = FakeBackend::sample();
    let app = app(&fake, false);
    let all = get(&app, "/api/v1/retained").await.json();
    assert_eq!(all["items"].as_array().unwrap().len(), 2);
    let filtered = get(&app, "/api/v1/retained?filter=sensors/temp")
        .await
        .json();
    assert_eq!(
        filtered["items"],
        json!([{"topic": "sensors/temp", "qos": 0, "payload_bytes": 4}])
    );
    let text = get(&app, "/api/v1/retained/message?topic=sensors/temp")
        .await
        .json();
    assert_eq!(text["payload"], "21.5");
    let binary = get(&app, "/api/v1/retained/message?topic=sensors/bin")
        .await
        .json();
    assert_eq!(binary["payload"], Value::Null);
    assert_eq!(binary["payload_base64"], "/wAB");
    let missing = get(&app, "/api/v1/retained/message?topic=none").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let no_topic = get(&app, "/api/v1/retained/message").await;
    assert_eq!(no_topic.status, StatusCode::BAD_REQUEST);
    let deleted = call(
        &app,
        Method::DELETE,
        "/api/v1/retained/message?topic=sensors/temp",
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    let again = call(
        &app,
        Method::DELETE,
        "/api/v1/retained/message?topic=sensors/temp",
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
    let wildcard = call(
        &app,
        Method::DELETE,
        "/api/v1/retained/message?topic=sensors/%23",
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(wildcard.status, StatusCode::BAD_REQUEST);
    assert!(
        wildcard.json()["error"]
            .as_str()
            .unwrap()
            .starts_with("invalid request")
    );
    let paged = get(&app, "/api/v1/retained?filter=sensors/%2B&limit=1")
        .await
        .json();
    assert_eq!(paged["items"][0]["topic"], "sensors/bin");
    assert_eq!(paged["next_after"], "sensors/bin");
    let bad_filter = get(&app, "/api/v1/retained?filter=").await;
    assert_eq!(bad_filter.status, StatusCode::BAD_REQUEST);
}

/// Issue 13: publish as the broker; bad requests 400, the backend's Unavailable 503.
#[tokio::test]
async fn publish_as_broker() {
    let fake = FakeBackend::sample();
    let app = app(&fake, false);
    let body = json!({"topic": "cmd/lamp", "payload": "on", "qos": 1, "retain": true});
    let answer = call(
        &app,
        Method::POST,
        "/api/v1/publish",
        Some(TOKEN),
        Some(body),
    )
    .await;
    assert_eq!(answer.status, StatusCode::NO_CONTENT);
    {
        let state = fake.lock();
        assert_eq!(state.published[0].topic, "cmd/lamp");
        assert_eq!(state.published[0].qos, 1);
        assert!(state.published[0].retain);
    }
    for bad in [
        json!({"topic": "a", "qos": 3}),
        json!({"topic": "a", "payload": "x", "payload_base64": "eA=="}),
        json!({"topic": "a/#"}),
        json!({"payload": "no topic"}),
    ] {
        let answer = call(
            &app,
            Method::POST,
            "/api/v1/publish",
            Some(TOKEN),
            Some(bad.clone()),
        )
        .await;
        assert!(answer.status.is_client_error(), "{bad}: {}", answer.status);
        assert!(answer.json()["error"].is_string(), "{bad}");
    }
    fake.lock().ready = false;
    let answer = call(
        &app,
        Method::POST,
        "/api/v1/publish",
        Some(TOKEN),
        Some(json!({"topic": "a"})),
    )
    .await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.json()["error"], "unavailable: shutting down");
}

/// An unknown route is a 404 in JSON.
#[tokio::test]
async fn unknown_route_is_json_404() {
    let app = app(&FakeBackend::sample(), false);
    let answer = get(&app, "/api/v1/nothing").await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert!(answer.json()["error"].is_string());
}

/// Issue 13: the OpenAPI description is served and names every route with its method, and
/// names no route that does not exist.
#[tokio::test]
async fn openapi_lists_every_route() {
    let app = app(&FakeBackend::sample(), false);
    let answer = get(&app, "/api/openapi.json").await;
    assert_eq!(answer.status, StatusCode::OK);
    let doc = answer.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for &(method, path) in ROUTES {
        let op =
            &paths.get(path).unwrap_or_else(|| panic!("{path} missing"))[method.to_lowercase()];
        assert!(op["responses"].is_object(), "{method} {path} missing");
    }
    let mut described = 0;
    for (path, ops) in paths {
        for method in ops.as_object().unwrap().keys() {
            described += 1;
            assert!(
                ROUTES
                    .iter()
                    .any(|&(m, p)| p == path && m.eq_ignore_ascii_case(method)),
                "{method} {path} described but not routed"
            );
        }
    }
    assert_eq!(described, ROUTES.len());
    // Every $ref resolves.
    let text = String::from_utf8(answer.body).unwrap();
    for reference in text.split("\"$ref\": \"#/").skip(1) {
        let pointer = format!("/{}", &reference[..reference.find('"').unwrap()]);
        assert!(
            doc.pointer(&pointer).is_some(),
            "{pointer} does not resolve"
        );
    }
}

/// The dashboard's page and assets are served without the token (they hold no data).
#[tokio::test]
async fn dashboard_served() {
    let app = app(&FakeBackend::sample(), false);
    let page = call(&app, Method::GET, "/", None, None).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let csp = page.headers[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap();
    assert!(
        csp.contains("base-uri 'none'") && csp.contains("form-action 'none'"),
        "{csp}"
    );
    // Review 13 #17: the assets are revalidated (no old app.js after an upgrade), not sniffed.
    for asset in ["/dashboard/app.js", "/dashboard/style.css"] {
        let answer = call(&app, Method::GET, asset, None, None).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.headers[header::CACHE_CONTROL], "no-cache", "{asset}");
        assert_eq!(
            answer.headers[header::X_CONTENT_TYPE_OPTIONS],
            "nosniff",
            "{asset}"
        );
    }
}

/// `tern_admin::serve` on a real socket (127.0.0.1 port 0) answers, then stops on shutdown.
#[tokio::test]
async fn serves_on_a_socket_until_shutdown() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let options = AdminOptions::new(Token::new(TOKEN).unwrap());
    let server = tokio::spawn(tern_admin::serve(
        listener,
        Arc::new(FakeBackend::sample()),
        options,
        async {
            let _ = stopped.await;
        },
    ));
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"GET /api/v1/health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("{\"status\":\"ok\"}"), "{answer}");
    stop.send(()).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// The admin listener's bounds: a connection that sends nothing is closed after the idle
/// timeout, and past `max_connections` a new one is not served until another ends.
#[tokio::test]
async fn idle_connections_closed_and_connections_bounded() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let options = AdminOptions {
        max_connections: 1,
        idle_timeout: std::time::Duration::from_millis(300),
        ..AdminOptions::new(Token::new(TOKEN).unwrap())
    };
    tokio::spawn(tern_admin::serve(
        listener,
        Arc::new(FakeBackend::sample()),
        options,
        std::future::pending(),
    ));
    let started = std::time::Instant::now();
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The second connection is not served while the silent one holds the only slot...
    let mut second = tokio::net::TcpStream::connect(addr).await.unwrap();
    second
        .write_all(b"GET /api/v1/health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    // ...the silent one is closed by the idle timeout (EOF, or a reset)...
    let mut buf = [0u8; 16];
    let closed = tokio::time::timeout(std::time::Duration::from_secs(10), silent.read(&mut buf))
        .await
        .expect("the idle connection is closed");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    // ...and then the second is answered.
    let mut answer = String::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        second.read_to_string(&mut answer),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(started.elapsed() >= std::time::Duration::from_millis(300));
}

/// Review 13 #1: `GET /api/v1/clients/{id}` sends the key `subscriptions` once (the list; the
/// count is its length), and our own type reads the answer back.
#[tokio::test]
async fn client_detail_has_each_key_once_and_reads_back() {
    let fake = FakeBackend::sample();
    let app = app(&fake, false);
    let answer = get(&app, "/api/v1/clients/alpha").await;
    assert_eq!(answer.status, StatusCode::OK);
    let text = String::from_utf8(answer.body.clone()).unwrap();
    assert_eq!(text.matches("\"subscriptions\"").count(), 1, "{text}");
    let detail: tern_admin::ClientDetail = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(detail, fake.lock().clients["alpha"]);
    assert_eq!(detail.summary.subscriptions, 1);
}

/// The names of the properties of `schema` (a `$ref` into the description).
fn schema_keys(doc: &Value, schema: &Value) -> std::collections::BTreeSet<String> {
    let schema = match schema["$ref"].as_str() {
        Some(reference) => doc.pointer(&reference[1..]).unwrap().clone(),
        None => schema.clone(),
    };
    schema["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("no properties: {schema}"))
        .keys()
        .cloned()
        .collect()
}

fn object_keys(value: &Value) -> std::collections::BTreeSet<String> {
    value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"))
        .keys()
        .cloned()
        .collect()
}

/// Review 13 #13: for each JSON route, the keys the API actually sends are the properties of
/// the route's OpenAPI schema (a listing's items those of its item schema).
#[tokio::test]
async fn openapi_schemas_match_what_is_served() {
    let app = app(&FakeBackend::sample(), false);
    let doc = get(&app, "/api/openapi.json").await.json();
    for uri in [
        "/api/v1/ready",
        "/api/v1/stats",
        "/api/v1/clients",
        "/api/v1/clients/alpha",
        "/api/v1/sessions",
        "/api/v1/subscriptions",
        "/api/v1/retained",
        "/api/v1/retained/message?topic=sensors/temp",
        "/api/v1/bridges",
        "/api/v1/cluster",
    ] {
        let answer = get(&app, uri).await;
        assert_eq!(answer.status, StatusCode::OK, "{uri}");
        let body = answer.json();
        let path = uri
            .split('?')
            .next()
            .unwrap()
            .replace("alpha", "{client_id}");
        let schema = &doc["paths"][&path]["get"]["responses"]["200"]["content"]["application/json"]
            ["schema"];
        assert!(!schema.is_null(), "{path}: no 200 schema");
        let (sent, described) = if body.get("items").is_some() {
            let listing = match schema["$ref"].as_str() {
                Some(r) => doc.pointer(&r[1..]).unwrap().clone(),
                None => schema.clone(),
            };
            assert_eq!(
                object_keys(&body),
                schema_keys(&doc, &listing),
                "{path}: listing keys"
            );
            let items = &listing["properties"]["items"]["items"];
            (object_keys(&body["items"][0]), schema_keys(&doc, items))
        } else {
            (object_keys(&body), schema_keys(&doc, schema))
        };
        assert_eq!(sent, described, "{path}: sent keys vs the OpenAPI schema");
    }
}

/// The statuses of `method path` in the OpenAPI description.
fn documented(doc: &Value, method: &str, path: &str) -> Vec<String> {
    doc["paths"][path][method]["responses"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect()
}

/// Review 13 #12: a body without the JSON content type, JSON of the wrong shape, unknown keys
/// are 400; a body over the limit 413; a method a route does not take 405; all as JSON errors,
/// and documented.
#[tokio::test]
async fn error_statuses_json_and_documented() {
    let fake = FakeBackend::sample();
    let app = tern_admin::router(
        Arc::new(fake.clone()),
        AdminOptions {
            max_body_bytes: 1024,
            ..AdminOptions::new(Token::new(TOKEN).unwrap())
        },
    );
    let doc = get(&app, "/api/openapi.json").await.json();
    let raw = |content_type: Option<&'static str>, body: String| {
        let app = app.clone();
        async move {
            let mut request = Request::post("/api/v1/publish")
                .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"));
            if let Some(content_type) = content_type {
                request = request.header(header::CONTENT_TYPE, content_type);
            }
            let response = app
                .oneshot(request.body(Body::from(body)).unwrap())
                .await
                .unwrap();
            let status = response.status();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            let json: Value = serde_json::from_slice(&body).unwrap();
            assert!(json["error"].is_string(), "{json}");
            status
        }
    };
    let publish_statuses = documented(&doc, "post", "/api/v1/publish");
    // No content type (curl -d), JSON of the wrong type, not JSON, an unknown key.
    for (content_type, body) in [
        (None, r#"{"topic":"a"}"#.to_owned()),
        (
            Some("application/json"),
            r#"{"topic":"a","qos":"one"}"#.to_owned(),
        ),
        (Some("application/json"), "{not json".to_owned()),
        (
            Some("application/json"),
            r#"{"topic":"a","retained":true}"#.to_owned(),
        ),
        (Some("application/json"), "[1]".to_owned()),
    ] {
        assert_eq!(
            raw(content_type, body.clone()).await,
            StatusCode::BAD_REQUEST,
            "{body}"
        );
    }
    assert!(publish_statuses.contains(&"400".to_owned()));
    let big = format!(r#"{{"topic":"a","payload":"{}"}}"#, "x".repeat(4096));
    assert_eq!(
        raw(Some("application/json"), big).await,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    assert!(
        publish_statuses.contains(&"413".to_owned()),
        "{publish_statuses:?}"
    );
    assert!(fake.lock().published.is_empty());
    // 405, as JSON, and said in the description.
    let put = call(&app, Method::PUT, "/api/v1/stats", Some(TOKEN), None).await;
    assert_eq!(put.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(put.json()["error"].is_string());
    assert!(doc["info"]["description"].as_str().unwrap().contains("405"));
    // Documented per route (review 13 #13).
    assert!(documented(&doc, "get", "/api/v1/retained").contains(&"503".to_owned()));
    let missing = get(&app, "/api/v1/retained/message").await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
    assert!(documented(&doc, "get", "/api/v1/retained/message").contains(&"400".to_owned()));
    assert!(doc["components"]["parameters"]["limit"]["schema"]["maximum"].is_null());
}

/// Issue 16: `GET /api/v1/cluster` (404 without `[cluster]`), `POST /api/v1/cluster/join`
/// (204; 400 for a bad body or address; 409 from the backend) and `POST
/// /api/v1/cluster/leave` (a node, or this one with no body; 404 for a stranger), behind
/// the token, every status documented.
#[tokio::test]
async fn cluster_status_join_leave() {
    let fake = FakeBackend::sample();
    let app = app(&fake, false);
    let doc = get(&app, "/api/openapi.json").await.json();
    let post = |uri: &'static str, body: Option<Value>| {
        let app = app.clone();
        async move { call(&app, Method::POST, uri, Some(TOKEN), body).await }
    };
    let status = get(&app, "/api/v1/cluster").await;
    assert_eq!(status.status, StatusCode::OK);
    let status = status.json();
    assert_eq!(status["role"], "leader");
    assert_eq!(status["voters"], json!([1, 2, 3]));
    assert_eq!(status["nodes"][2]["pending"], 5);
    assert_eq!(status["forwarding"]["resent"], 5);
    for (method, uri) in [
        (Method::GET, "/api/v1/cluster"),
        (Method::POST, "/api/v1/cluster/join"),
        (Method::POST, "/api/v1/cluster/leave"),
    ] {
        let refused = call(&app, method, uri, None, Some(json!({"addr": "a:1"}))).await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{uri}");
    }

    let join = "/api/v1/cluster/join";
    let joined = post(join, Some(json!({"addr": "10.0.0.9:7883"}))).await;
    assert_eq!(joined.status, StatusCode::NO_CONTENT);
    assert_eq!(fake.lock().cluster_joins, ["10.0.0.9:7883"]);
    for bad in [
        json!({}),
        json!({"addr": "no-port"}),
        json!({"addr": ":7883"}),
        json!({"addr": "h:0"}),
        json!({"addr": "h:1", "extra": 1}),
    ] {
        let answer = post(join, Some(bad.clone())).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(answer.json()["error"].is_string());
    }
    assert_eq!(
        fake.lock().cluster_joins.len(),
        1,
        "no bad body reached the backend"
    );
    fake.lock().cluster_join_refusal =
        Some(tern_admin::AdminError::Conflict("already a member".into()));
    let conflict = post(join, Some(json!({"addr": "10.0.0.9:7883"}))).await;
    assert_eq!(conflict.status, StatusCode::CONFLICT);
    assert!(
        conflict.json()["error"]
            .as_str()
            .unwrap()
            .contains("already a member")
    );
    fake.lock().cluster_join_refusal =
        Some(tern_admin::AdminError::Unavailable("no leader".into()));
    let unavailable = post(join, Some(json!({"addr": "10.0.0.9:7883"}))).await;
    assert_eq!(unavailable.status, StatusCode::SERVICE_UNAVAILABLE);
    let join_statuses = documented(&doc, "post", join);
    for status in ["204", "400", "401", "404", "409", "503"] {
        assert!(join_statuses.contains(&status.to_owned()), "join {status}");
    }

    let leave = "/api/v1/cluster/leave";
    let left = post(leave, Some(json!({"node": 4}))).await;
    assert_eq!(left.status, StatusCode::OK);
    assert_eq!(left.json(), json!({"node": 4}));
    let myself = post(leave, None).await;
    assert_eq!(myself.status, StatusCode::OK);
    assert_eq!(myself.json(), json!({"node": 1}));
    assert_eq!(
        post(leave, Some(json!({}))).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        post(leave, Some(json!({"node": 9}))).await.status,
        StatusCode::NOT_FOUND
    );
    for bad in [json!({"node": "two"}), json!({"node": -1}), json!([2])] {
        assert_eq!(
            post(leave, Some(bad.clone())).await.status,
            StatusCode::BAD_REQUEST,
            "{bad}"
        );
    }
    let leave_statuses = documented(&doc, "post", leave);
    for status in ["200", "400", "401", "404", "409", "503"] {
        assert!(
            leave_statuses.contains(&status.to_owned()),
            "leave {status}"
        );
    }

    fake.lock().cluster = None;
    let none = get(&app, "/api/v1/cluster").await;
    assert_eq!(none.status, StatusCode::NOT_FOUND);
    assert!(
        none.json()["error"]
            .as_str()
            .unwrap()
            .contains("not part of a cluster")
    );
    assert!(documented(&doc, "get", "/api/v1/cluster").contains(&"404".to_owned()));
    let none = post(join, Some(json!({"addr": "10.0.0.9:7883"}))).await;
    assert_eq!(none.status, StatusCode::NOT_FOUND);
}

/// Review 13 #13: a publish with neither payload field publishes an empty payload.
#[tokio::test]
async fn publish_without_payload_is_empty() {
    let fake = FakeBackend::sample();
    let app = app(&fake, false);
    let answer = call(
        &app,
        Method::POST,
        "/api/v1/publish",
        Some(TOKEN),
        Some(json!({"topic": "a/b", "retain": true})),
    )
    .await;
    assert_eq!(answer.status, StatusCode::NO_CONTENT);
    let published = &fake.lock().published[0];
    assert_eq!(published.payload, None);
    assert_eq!(published.payload_base64, None);
    assert!(published.retain);
}

/// Sends a raw HTTP/1.1 request on a new connection; the whole answer.
async fn http(addr: std::net::SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    answer
}

/// Review 13 #5: backend calls run off the listener's runtime (which, in `tern serve`, is the
/// current-thread runtime of the broker's timers and signals): on a current-thread runtime,
/// health answers at once while a slow `stats` call is under way.
#[test]
fn slow_backend_calls_do_not_stall_the_runtime() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let fake = FakeBackend::sample();
        fake.lock().stats_delay = std::time::Duration::from_millis(500);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(tern_admin::serve(
            listener,
            Arc::new(fake.clone()),
            AdminOptions::new(Token::new(TOKEN).unwrap()),
            std::future::pending(),
        ));
        let request = format!(
            "GET /api/v1/stats HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {TOKEN}\r\nconnection: close\r\n\r\n"
        );
        let stats = tokio::spawn(async move { http(addr, &request).await });
        // Wait until the stats call is under way (no sleep: poll the fake's state).
        while fake.lock().stats_calls == 0 && !stats.is_finished() {
            tokio::task::yield_now().await;
        }
        let started = std::time::Instant::now();
        let health = http(
            addr,
            "GET /api/v1/health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        )
        .await;
        let took = started.elapsed();
        assert!(health.starts_with("HTTP/1.1 200"), "{health}");
        assert!(!stats.is_finished(), "stats answered before health");
        assert!(took < std::time::Duration::from_millis(100), "health took {took:?}");
        assert!(stats.await.unwrap().starts_with("HTTP/1.1 200"));
    });
}

/// Review 13 #4: a peer that trickles a request one byte at a time (each byte well within the
/// idle timeout) is closed at the request deadline, and the slot goes to the next connection.
#[tokio::test]
async fn trickling_request_closed_at_the_deadline() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let options = AdminOptions {
        max_connections: 1,
        idle_timeout: std::time::Duration::from_millis(300),
        request_timeout: std::time::Duration::from_secs(1),
        ..AdminOptions::new(Token::new(TOKEN).unwrap())
    };
    tokio::spawn(tern_admin::serve(
        listener,
        Arc::new(FakeBackend::sample()),
        options,
        std::future::pending(),
    ));
    let started = std::time::Instant::now();
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    let trickle = async {
        // Bounded: at most 100 bytes (10 s); the connection must close long before.
        for byte in b"GET /api/v1/health HTTP/1.1\r\nx-padding: "
            .iter()
            .chain([b'a'; 60].iter())
        {
            if slow.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), trickle)
        .await
        .expect("the trickling connection was not closed");
    let mut buf = [0u8; 256];
    let closed = tokio::time::timeout(std::time::Duration::from_secs(2), slow.read(&mut buf))
        .await
        .expect("closed");
    assert!(
        !matches!(closed, Ok(n) if n > 0 && buf.starts_with(b"HTTP/1.1 200")),
        "{closed:?}"
    );
    let took = started.elapsed();
    assert!(
        took < std::time::Duration::from_millis(2500),
        "closed after {took:?}"
    );
    let answer = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        http(
            addr,
            "GET /api/v1/health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        ),
    )
    .await
    .expect("the next connection is served");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// Review 13 #21: on a loopback listener, `/metrics` without a token answers only a `Host`
/// that is an IP address or localhost, so a DNS-rebinding page cannot read it.
#[tokio::test]
async fn metrics_without_token_refuses_foreign_host_names() {
    let app = tern_admin::router(
        Arc::new(FakeBackend::sample()),
        AdminOptions {
            local_hosts_only: true,
            ..AdminOptions::new(Token::new(TOKEN).unwrap())
        },
    );
    let with_host = |host: &'static str| {
        let app = app.clone();
        async move {
            let request = Request::get("/metrics")
                .header(header::HOST, host)
                .body(Body::empty())
                .unwrap();
            app.oneshot(request).await.unwrap().status()
        }
    };
    for host in [
        "127.0.0.1:9883",
        "localhost:9883",
        "LOCALHOST",
        "[::1]:9883",
        "10.0.0.5",
    ] {
        assert_eq!(with_host(host).await, StatusCode::OK, "{host}");
    }
    for host in ["attacker.example:9883", "127.0.0.1.nip.io", "[evil]:1", ""] {
        assert_eq!(with_host(host).await, StatusCode::FORBIDDEN, "{host}");
    }
    // The health route is unaffected.
    let health = Request::get("/api/v1/health")
        .header(header::HOST, "attacker.example")
        .body(Body::empty())
        .unwrap();
    assert_eq!(
        app.clone().oneshot(health).await.unwrap().status(),
        StatusCode::OK
    );
}
