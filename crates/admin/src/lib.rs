//! The admin side of Tern: the HTTP API (`/api/v1/...`), `/metrics` and the dashboard, served
//! on a listener of their own. This crate knows nothing of the broker: it speaks to an
//! [`AdminBackend`] the server implements, with the plain data types of [`api`], so the HTTP
//! layer is tested against a fake backend and the server against the trait.

pub mod api;

pub use api::{
    AdminBackend, AdminError, ClientDetail, ClientSummary, Page, PublishRequest, Readiness,
    ReloadReport, RetainedMessage, RetainedSummary, SessionSummary, Stats, SubscriptionInfo,
    SubscriptionQuery,
};
