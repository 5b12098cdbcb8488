//! `GET /api/openapi.json`: the API described in OpenAPI 3.0, written by hand beside the code
//! (openapi.json); a test checks it names every route of [`crate::ROUTES`].

use axum::http::header;
use axum::response::IntoResponse;

/// The description, as served.
pub const OPENAPI_JSON: &str = include_str!("openapi.json");

pub(crate) async fn serve() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON)
}
