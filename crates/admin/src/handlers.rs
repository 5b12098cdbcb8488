//! One handler per route: read the request, ask the backend, answer in JSON.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
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

/// Runs a backend call that walks a listing on a blocking thread, off the event loop.
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

/// 200 when ready, 503 when not (the body says why either way), as load balancers expect.
pub(crate) async fn ready(State(state): State<AppState>) -> Response {
    let readiness = state.backend.readiness();
    let status = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(readiness)).into_response()
}

pub(crate) async fn stats(State(state): State<AppState>) -> Response {
    Json(state.backend.stats()).into_response()
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
    match state.backend.client(&client_id) {
        Some(detail) => Ok(Json(detail).into_response()),
        None => Err(ApiError::not_found(format!(
            "no client connected as {client_id:?}"
        ))),
    }
}

/// `DELETE /api/v1/clients/{id}`: kick. 204, or 404 when the client is not connected.
pub(crate) async fn kick(
    State(state): State<AppState>,
    client_id: Result<Path<String>, PathRejection>,
) -> ApiResult<StatusCode> {
    let client_id = client_id?.0;
    if state.backend.kick(&client_id) {
        tracing::info!(client_id = %client_id, "admin API: client kicked");
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
    if state.backend.set_client_tracing(&client_id, on) {
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
    client_id: Result<Path<String>, PathRejection>,
) -> ApiResult<StatusCode> {
    let client_id = client_id?.0;
    if state.backend.delete_session(&client_id) {
        tracing::info!(client_id = %client_id, "admin API: session deleted");
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
    match state.backend.retained_message(&topic) {
        Some(message) => Ok(Json(message).into_response()),
        None => Err(ApiError::not_found(format!(
            "no retained message on {topic:?}"
        ))),
    }
}

pub(crate) async fn delete_retained(
    State(state): State<AppState>,
    params: Result<Query<TopicParams>, QueryRejection>,
) -> ApiResult<StatusCode> {
    let topic = params?.0.topic;
    if state.backend.delete_retained(&topic)? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!(
            "no retained message on {topic:?}"
        )))
    }
}

/// `POST /api/v1/publish`: 204 once the broker has taken the message.
pub(crate) async fn publish(
    State(state): State<AppState>,
    body: Result<Json<PublishRequest>, JsonRejection>,
) -> ApiResult<StatusCode> {
    let request = body?.0;
    if request.qos > 2 {
        return Err(ApiError::invalid("qos must be 0, 1 or 2"));
    }
    if request.payload.is_some() && request.payload_base64.is_some() {
        return Err(ApiError::invalid(
            "give payload or payload_base64, not both",
        ));
    }
    state.backend.publish(request)?;
    Ok(StatusCode::NO_CONTENT)
}

pub(crate) async fn config(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(state.backend.config())
}

pub(crate) async fn reload(State(state): State<AppState>) -> Response {
    let report = state.backend.reload().await;
    tracing::info!(
        applied = ?report.applied,
        needs_restart = ?report.needs_restart,
        errors = ?report.errors,
        "admin API: configuration reloaded"
    );
    Json(report).into_response()
}

/// Prometheus text exposition, format 0.0.4.
pub(crate) async fn metrics(State(state): State<AppState>) -> ApiResult<Response> {
    let text = off_loop(&state.backend, |b| b.metrics_text()).await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}
