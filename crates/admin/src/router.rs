//! The routes of the admin listener and the bearer-token check in front of them.

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::error::ApiError;
use crate::handlers;
use crate::{AdminBackend, AdminOptions, dashboard, openapi};

/// Every route as (method, path), for the OpenAPI test and the docs: the API, `/metrics`,
/// the dashboard's page and its two assets. Paths in OpenAPI's notation, as in axum's.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/api/v1/health"),
    ("GET", "/api/v1/ready"),
    ("GET", "/api/v1/stats"),
    ("GET", "/api/v1/clients"),
    ("GET", "/api/v1/clients/{client_id}"),
    ("DELETE", "/api/v1/clients/{client_id}"),
    ("POST", "/api/v1/clients/{client_id}/tracing"),
    ("GET", "/api/v1/sessions"),
    ("DELETE", "/api/v1/sessions/{client_id}"),
    ("GET", "/api/v1/subscriptions"),
    ("GET", "/api/v1/retained"),
    ("GET", "/api/v1/retained/message"),
    ("DELETE", "/api/v1/retained/message"),
    ("POST", "/api/v1/publish"),
    ("GET", "/api/v1/config"),
    ("POST", "/api/v1/reload"),
    ("GET", "/api/v1/bridges"),
    ("GET", "/api/v1/cluster"),
    ("POST", "/api/v1/cluster/join"),
    ("POST", "/api/v1/cluster/leave"),
    ("GET", "/metrics"),
    ("GET", "/api/openapi.json"),
    ("GET", "/"),
    ("GET", "/dashboard/app.js"),
    ("GET", "/dashboard/style.css"),
];

/// What every handler reaches: the backend, and the options.
#[derive(Clone)]
pub(crate) struct AppState {
    pub backend: Arc<dyn AdminBackend>,
    pub options: Arc<AdminOptions>,
}

/// The whole admin service. Public without a token: `/api/v1/health`, the dashboard's page and
/// assets (they hold no data: the page asks for the token), and `/metrics` unless
/// `metrics_auth`. Everything else needs `Authorization: Bearer <token>`.
pub fn router(backend: Arc<dyn AdminBackend>, options: AdminOptions) -> Router {
    let state = AppState {
        backend,
        options: Arc::new(options),
    };
    let protected = Router::new()
        .route("/api/v1/ready", get(handlers::ready))
        .route("/api/v1/stats", get(handlers::stats))
        .route("/api/v1/clients", get(handlers::clients))
        .route(
            "/api/v1/clients/{client_id}",
            get(handlers::client).delete(handlers::kick),
        )
        .route(
            "/api/v1/clients/{client_id}/tracing",
            post(handlers::set_tracing),
        )
        .route("/api/v1/sessions", get(handlers::sessions))
        .route(
            "/api/v1/sessions/{client_id}",
            axum::routing::delete(handlers::delete_session),
        )
        .route("/api/v1/subscriptions", get(handlers::subscriptions))
        .route("/api/v1/retained", get(handlers::retained))
        .route(
            "/api/v1/retained/message",
            get(handlers::retained_message).delete(handlers::delete_retained),
        )
        .route("/api/v1/publish", post(handlers::publish))
        .route("/api/v1/config", get(handlers::config))
        .route("/api/v1/reload", post(handlers::reload))
        .route("/api/v1/bridges", get(handlers::bridges))
        .route("/api/v1/cluster", get(handlers::cluster))
        .route("/api/v1/cluster/join", post(handlers::cluster_join))
        .route("/api/v1/cluster/leave", post(handlers::cluster_leave))
        .route("/api/openapi.json", get(openapi::serve));
    let mut metrics = Router::new().route("/metrics", get(handlers::metrics));
    if !state.options.metrics_auth && state.options.local_hosts_only {
        metrics = metrics.route_layer(middleware::from_fn(local_host_only));
    }
    let (protected, metrics) = if state.options.metrics_auth {
        (protected.merge(metrics), Router::new())
    } else {
        (protected, metrics)
    };
    let protected = protected
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token))
        .layer(middleware::map_response(no_store));
    let body_limit = state.options.max_body_bytes;
    Router::new()
        .route("/api/v1/health", get(handlers::health))
        .merge(dashboard::routes())
        .merge(metrics)
        .merge(protected)
        .fallback(handlers::not_found)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

/// Lets the request through when it carries `Authorization: Bearer <token>` with the
/// configured token (compared in constant time); else 401 with `WWW-Authenticate: Bearer`.
async fn require_token(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| bearer(value.as_bytes()));
    match presented {
        Some(token) if state.options.token.matches(token) => next.run(request).await,
        _ => ApiError::unauthorized(),
    }
}

/// Answers that need the token are never kept by a cache (a proxy's or the browser's).
async fn no_store(mut response: Response) -> Response {
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    response
}

/// The credentials of a `Bearer` Authorization header (the scheme is case-insensitive).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| rest.trim_ascii())
}

/// Lets a request through when its `Host` is an IP address or `localhost` (with or without a
/// port): what a DNS-rebinding page cannot send, since its requests carry its own name.
async fn local_host_only(request: Request, next: Next) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("");
    if is_local_host(host) {
        next.run(request).await
    } else {
        ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            "/metrics without a token answers a Host that is an IP address or localhost only",
        )
        .into_response()
    }
}

/// `host[:port]`: an IPv4 address, `[IPv6]`, or `localhost`.
fn is_local_host(host: &str) -> bool {
    if let Some(rest) = host.strip_prefix('[') {
        return rest
            .split_once(']')
            .is_some_and(|(ip, _)| ip.parse::<std::net::Ipv6Addr>().is_ok());
    }
    let name = host.rsplit_once(':').map_or(host, |(name, _)| name);
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::Ipv4Addr>().is_ok()
}
