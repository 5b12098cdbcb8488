//! One handler per route: read the request, ask the backend, answer in JSON.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{ConnectInfo, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::api::{
    AdminBackend, ClientSummary, Page, PublishRequest, RetainedSummary, SessionSummary,
    SubscriptionInfo, SubscriptionQuery,
};
use crate::error::ApiError;
use crate::router::AppState;

type ApiResult<T> = Result<T, ApiError>;

/// A page of a listing: the entries, and the `after` that asks for the next page (absent when
/// this page was not full, so there is no more).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Listing<T> {
    pub items: Vec<T>,
    pub next_after: Option<String>,
}

/// `POST /api/v1/clients/{client_id}/tracing`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TracingRequest {
    pub on: bool,
}

/// The key a listing is sorted and paged by.
trait Keyed {
    fn key(&self) -> String;
}

impl Keyed for ClientSummary {
    fn key(&self) -> String {
        self.client_id.clone()
    }
}

impl Keyed for SessionSummary {
    fn key(&self) -> String {
        self.client_id.clone()
    }
}

impl Keyed for RetainedSummary {
    fn key(&self) -> String {
        self.topic.clone()
    }
}

/// Subscriptions are sorted by client id then filter; the key joins them with a NUL, which
/// neither may contain (MQTT-1.5.4-2).
impl Keyed for SubscriptionInfo {
    fn key(&self) -> String {
        format!("{}\u{0}{}", self.client_id, self.filter)
    }
}

fn listing<T: Keyed>(items: Vec<T>, page: &Page) -> Listing<T> {
    let next_after = if items.len() >= page.limit {
        items.last().map(Keyed::key)
    } else {
        None
    };
    Listing { items, next_after }
}

/// `?limit=&after=` of a listing.
#[derive(Debug, Deserialize)]
pub(crate) struct PageParams {
    limit: Option<usize>,
    after: Option<String>,
}

impl PageParams {
    fn page(self) -> ApiResult<Page> {
        let limit = self.limit.unwrap_or(Page::DEFAULT_LIMIT);
        if limit == 0 {
            return Err(ApiError::invalid("limit must be at least 1"));
        }
        Ok(Page {
            limit: limit.min(Page::MAX_LIMIT),
            after: self.after,
        })
    }
}

/// Runs a backend call on a blocking thread, off the event loop: every call goes through
/// here, because the listener shares its runtime with the broker's timers, signals and
/// shutdown, and a call may walk every session or touch the store (its cost is the
/// backend's, `spawn_blocking`'s is negligible at admin rates).
async fn off_loop<T: Send + 'static>(
    backend: &Arc<dyn AdminBackend>,
    call: impl FnOnce(&dyn AdminBackend) -> T + Send + 'static,
) -> ApiResult<T> {
    let backend = backend.clone();
    tokio::task::spawn_blocking(move || call(backend.as_ref()))
        .await
        .map_err(|error| {
            tracing::error!(%error, "an admin backend call failed");
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "the backend call failed")
        })
}

pub(crate) async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

pub(crate) async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

pub(crate) async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "this route does not take that method",
    )
}

/// 200 when ready, 503 when not (the body says why either way), as load balancers expect.
pub(crate) async fn ready(State(state): State<AppState>) -> ApiResult<Response> {
    let readiness = off_loop(&state.backend, |b| b.readiness()).await?;
    let status = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Ok((status, Json(readiness)).into_response())
}

pub(crate) async fn bridges(
    State(state): State<AppState>,
) -> ApiResult<Json<crate::api::BridgeList>> {
    let items = off_loop(&state.backend, |b| b.bridges()).await?;
    Ok(Json(crate::api::BridgeList { items }))
}

/// `GET /api/v1/cluster`: 404 on a node without `[cluster]`.
pub(crate) async fn cluster(
    State(state): State<AppState>,
) -> ApiResult<Json<crate::api::ClusterInfo>> {
    match off_loop(&state.backend, |b| b.cluster()).await? {
        Some(info) => Ok(Json(info)),
        None => Err(ApiError::not_found(crate::api::NOT_CLUSTERED)),
    }
}

/// `POST /api/v1/cluster/join` `{"addr": "HOST:PORT"}`: 204 once the cluster's leader took
/// this node in (as a learner; promotion to voter follows when the cluster needs voters).
/// 400 for a body without a usable `addr`, 409 when this node is a member already, 503
/// when no leader answered, 404 without `[cluster]`.
pub(crate) async fn cluster_join(
    State(state): State<AppState>,
    peer: Peer,
    body: Result<Json<crate::api::ClusterJoinRequest>, JsonRejection>,
) -> ApiResult<StatusCode> {
    let addr = body?.0.addr.trim().to_owned();
    let port = addr
        .rsplit_once(':')
        .map(|(host, port)| (host, port.parse::<u16>()));
    if !matches!(port, Some((host, Ok(port))) if !host.is_empty() && port != 0) {
        return Err(ApiError::invalid(format!(
            "addr must be a node's cluster address, HOST:PORT (got {addr:?})"
        )));
    }
    let handle = tokio::runtime::Handle::current();
    let asked = addr.clone();
    off_loop(&state.backend, move |b| {
        handle.block_on(b.cluster_join(asked))
    })
    .await??;
    audit("cluster_join", &addr, peer);
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/v1/cluster/leave`, body `{"node": ID}` or none (this node leaves): 200
/// `{"node": ID}` once the leader removed it. 400 for a body that is not that, 404 for a node
/// that is not a member (or without `[cluster]`), 409 when it may not leave (the only
/// voter), 503 when no leader answered.
pub(crate) async fn cluster_leave(
    State(state): State<AppState>,
    peer: Peer,
    body: axum::body::Bytes,
) -> ApiResult<Json<serde_json::Value>> {
    let request: crate::api::ClusterLeaveRequest = if body.trim_ascii().is_empty() {
        crate::api::ClusterLeaveRequest::default()
    } else {
        let invalid = |error: String| {
            ApiError::invalid(format!(
                "the body must be {{\"node\": ID}} or empty: {error}"
            ))
        };
        // An object only: serde would take `[2]` for `{"node": 2}`.
        let value: serde_json::Value =
            serde_json::from_slice(&body).map_err(|error| invalid(error.to_string()))?;
        if !value.is_object() {
            return Err(invalid("not a JSON object".into()));
        }
        serde_json::from_value(value).map_err(|error| invalid(error.to_string()))?
    };
    let handle = tokio::runtime::Handle::current();
    let node = off_loop(&state.backend, move |b| {
        handle.block_on(b.cluster_leave(request.node))
    })
    .await??;
    audit("cluster_leave", &node.to_string(), peer);
    Ok(Json(serde_json::json!({ "node": node })))
}

pub(crate) async fn stats(State(state): State<AppState>) -> ApiResult<Response> {
    Ok(Json(off_loop(&state.backend, |b| b.stats()).await?).into_response())
}

pub(crate) async fn clients(
    State(state): State<AppState>,
    params: Result<Query<PageParams>, QueryRejection>,
) -> ApiResult<Json<Listing<ClientSummary>>> {
    let page = params?.0.page()?;
    let asked = page.clone();
    let items = off_loop(&state.backend, move |b| b.clients(&asked)).await?;
    Ok(Json(listing(items, &page)))
}

pub(crate) async fn client(
    State(state): State<AppState>,
    client_id: Result<Path<String>, PathRejection>,
) -> ApiResult<Response> {
    let client_id = client_id?.0;
    let asked = client_id.clone();
    match off_loop(&state.backend, move |b| b.client(&asked)).await? {
        Some(detail) => Ok(Json(detail).into_response()),
        None => Err(ApiError::not_found(format!(
            "no client connected as {client_id:?}"
        ))),
    }
}

/// `DELETE /api/v1/clients/{id}`: kick. 204, or 404 when the client is not connected.
pub(crate) async fn kick(
    State(state): State<AppState>,
    peer: Peer,
    client_id: Result<Path<String>, PathRejection>,
) -> ApiResult<StatusCode> {
    let client_id = client_id?.0;
    let asked = client_id.clone();
    if off_loop(&state.backend, move |b| b.kick(&asked)).await? {
        audit("kick", &client_id, peer);
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!(
            "no client connected as {client_id:?}"
        )))
    }
}

pub(crate) async fn set_tracing(
    State(state): State<AppState>,
    client_id: Result<Path<String>, PathRejection>,
    body: Result<Json<TracingRequest>, JsonRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let client_id = client_id?.0;
    let on = body?.0.on;
    let asked = client_id.clone();
    if off_loop(&state.backend, move |b| b.set_client_tracing(&asked, on)).await? {
        Ok(Json(
            serde_json::json!({ "client_id": client_id, "tracing": on }),
        ))
    } else {
        Err(ApiError::not_found(format!(
            "no client connected as {client_id:?}"
        )))
    }
}

pub(crate) async fn sessions(
    State(state): State<AppState>,
    params: Result<Query<PageParams>, QueryRejection>,
) -> ApiResult<Json<Listing<SessionSummary>>> {
    let page = params?.0.page()?;
    let asked = page.clone();
    let items = off_loop(&state.backend, move |b| b.sessions(&asked)).await?;
    Ok(Json(listing(items, &page)))
}

pub(crate) async fn delete_session(
    State(state): State<AppState>,
    peer: Peer,
    client_id: Result<Path<String>, PathRejection>,
) -> ApiResult<StatusCode> {
    let client_id = client_id?.0;
    let asked = client_id.clone();
    if off_loop(&state.backend, move |b| b.delete_session(&asked)).await? {
        audit("delete_session", &client_id, peer);
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no session for {client_id:?}")))
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct SubscriptionParams {
    client_id: Option<String>,
    filter: Option<String>,
    // Not `#[serde(flatten)]` of PageParams: flattened, a query string's numbers stay text.
    limit: Option<usize>,
    after: Option<String>,
}

pub(crate) async fn subscriptions(
    State(state): State<AppState>,
    params: Result<Query<SubscriptionParams>, QueryRejection>,
) -> ApiResult<Json<Listing<SubscriptionInfo>>> {
    let params = params?.0;
    let page = PageParams {
        limit: params.limit,
        after: params.after,
    }
    .page()?;
    let query = SubscriptionQuery {
        client_id: params.client_id,
        filter: params.filter,
        page: page.clone(),
    };
    let items = off_loop(&state.backend, move |b| b.subscriptions(&query)).await?;
    Ok(Json(listing(items, &page)))
}

#[derive(Debug, Deserialize)]
pub(crate) struct RetainedParams {
    filter: Option<String>,
    limit: Option<usize>,
    after: Option<String>,
}

/// `GET /api/v1/retained?filter=` (default `#`: every retained message).
pub(crate) async fn retained(
    State(state): State<AppState>,
    params: Result<Query<RetainedParams>, QueryRejection>,
) -> ApiResult<Json<Listing<RetainedSummary>>> {
    let params = params?.0;
    let page = PageParams {
        limit: params.limit,
        after: params.after,
    }
    .page()?;
    let filter = params.filter.unwrap_or_else(|| "#".to_owned());
    let asked = page.clone();
    let items = off_loop(&state.backend, move |b| b.retained(&filter, &asked)).await??;
    Ok(Json(listing(items, &page)))
}

#[derive(Debug, Deserialize)]
pub(crate) struct TopicParams {
    topic: String,
}

pub(crate) async fn retained_message(
    State(state): State<AppState>,
    params: Result<Query<TopicParams>, QueryRejection>,
) -> ApiResult<Response> {
    let topic = params?.0.topic;
    let asked = topic.clone();
    match off_loop(&state.backend, move |b| b.retained_message(&asked)).await? {
        Some(message) => Ok(Json(message).into_response()),
        None => Err(ApiError::not_found(format!(
            "no retained message on {topic:?}"
        ))),
    }
}

pub(crate) async fn delete_retained(
    State(state): State<AppState>,
    peer: Peer,
    params: Result<Query<TopicParams>, QueryRejection>,
) -> ApiResult<StatusCode> {
    let topic = params?.0.topic;
    let asked = topic.clone();
    if off_loop(&state.backend, move |b| b.delete_retained(&asked)).await?? {
        audit("delete_retained", &topic, peer);
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!(
            "no retained message on {topic:?}"
        )))
    }
}

/// The keys `POST /api/v1/publish` takes: any other is refused, so a typo (`"retained"`)
/// is an error rather than a message published without the flag.
const PUBLISH_KEYS: &[&str] = &[
    "topic",
    "payload",
    "payload_base64",
    "qos",
    "retain",
    "message_expiry_s",
    "content_type",
];

/// `POST /api/v1/publish`: 204 once the broker has taken the message. Neither `payload` nor
/// `payload_base64` publishes an empty payload (with `retain`, that clears the retained
/// message, as in MQTT).
pub(crate) async fn publish(
    State(state): State<AppState>,
    peer: Peer,
    body: Result<Json<serde_json::Value>, JsonRejection>,
) -> ApiResult<StatusCode> {
    let value = body?.0;
    let Some(object) = value.as_object() else {
        return Err(ApiError::invalid("the body must be a JSON object"));
    };
    if let Some(unknown) = object.keys().find(|k| !PUBLISH_KEYS.contains(&k.as_str())) {
        return Err(ApiError::invalid(format!(
            "unknown key {unknown:?} (known: {})",
            PUBLISH_KEYS.join(", ")
        )));
    }
    let request: PublishRequest = serde_json::from_value(value)
        .map_err(|error| ApiError::invalid(format!("invalid publish request: {error}")))?;
    if request.qos > 2 {
        return Err(ApiError::invalid("qos must be 0, 1 or 2"));
    }
    if request.payload.is_some() && request.payload_base64.is_some() {
        return Err(ApiError::invalid(
            "give payload or payload_base64, not both",
        ));
    }
    let topic = request.topic.clone();
    off_loop(&state.backend, move |b| b.publish(request)).await??;
    audit("publish", &topic, peer);
    Ok(StatusCode::NO_CONTENT)
}

pub(crate) async fn config(State(state): State<AppState>) -> ApiResult<Json<serde_json::Value>> {
    Ok(Json(off_loop(&state.backend, |b| b.config()).await?))
}

/// The reload is the backend's one asynchronous call: driven to its end on a blocking thread
/// (with the runtime's handle, so its I/O and timers still work), like every other call.
pub(crate) async fn reload(State(state): State<AppState>, peer: Peer) -> ApiResult<Response> {
    let handle = tokio::runtime::Handle::current();
    let report = off_loop(&state.backend, move |b| handle.block_on(b.reload())).await?;
    audit("reload", "", peer);
    tracing::info!(
        applied = ?report.applied,
        needs_restart = ?report.needs_restart,
        errors = ?report.errors,
        "admin API: configuration reloaded"
    );
    Ok(Json(report).into_response())
}

/// One line per action taken through the API, with a stable shape: `event="admin_action"`,
/// `action` (kick, delete_session, delete_retained, publish, reload, cluster_join,
/// cluster_leave), `target` (the client id, topic, cluster address or node id, quoted and
/// escaped by `?`, so no value can forge a line) and the caller's `peer`.
fn audit(action: &str, target: &str, peer: Peer) {
    let peer = peer.0.map(|addr| addr.to_string());
    tracing::info!(
        event = "admin_action",
        action,
        target = ?target,
        peer = peer.as_deref().unwrap_or("-"),
        "admin API action"
    );
}

/// The metrics in the OpenMetrics 1.0 text format (which Prometheus scrapes).
pub(crate) async fn metrics(State(state): State<AppState>) -> ApiResult<Response> {
    let text = off_loop(&state.backend, |b| b.metrics_text()).await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// The address of the peer of an admin connection (the listener's connect info).
#[derive(Debug, Clone, Copy)]
pub(crate) struct PeerAddr(pub SocketAddr);

impl
    axum::extract::connect_info::Connected<
        axum::serve::IncomingStream<'_, crate::bounded::BoundedListener>,
    > for PeerAddr
{
    fn connect_info(
        stream: axum::serve::IncomingStream<'_, crate::bounded::BoundedListener>,
    ) -> PeerAddr {
        PeerAddr(*stream.remote_addr())
    }
}

/// The caller's address for the audit line; absent when the router runs without a listener
/// (tests that call it directly).
pub(crate) struct Peer(Option<SocketAddr>);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Peer, Self::Rejection> {
        Ok(Peer(
            parts
                .extensions
                .get::<ConnectInfo<PeerAddr>>()
                .map(|ConnectInfo(PeerAddr(addr))| *addr),
        ))
    }
}
