//! The HTTP API (axum).
//!
//! - `PUT /kv/{key}` - body is the value; optional `X-Context`. 204 with `X-Context`.
//! - `GET /kv/{key}` - 200 with the value, 300 with every sibling (`multipart/mixed`, or JSON
//!   with base64 values for `Accept: application/json`), 404 when no live value; `X-Context`
//!   covers everything returned.
//! - `DELETE /kv/{key}` - optional `X-Context`; writes a tombstone; 204 with `X-Context`.
//! - `POST /counters/{key}?by=N`, `GET /counters/{key}` - convergent counters (see
//!   [`counters`]).
//! - `GET /health` - 200 while the node serves requests; 503 with the reason once its instance
//!   ended (it left, was removed, or runs on a stale copy of its data directory).
//! - `GET /` (or `/ui`) - the cluster page (see [`ui`]).
//! - `GET /metrics` - Prometheus text format (see [`crate::metrics`]).
//! - `GET /admin/ring`, `GET /admin/preference-list/{key}`, `GET /admin/local/{key}` - the ring,
//!   where a key lives, and this node's own copy of a key.
//!
//! Gets take `?r=`, puts and deletes `?w=` (1 to N). Every answer to a key request carries
//! `X-Ring-Version`, so partition-aware clients notice a ring change.
//!
//! Keys are the percent-decoded path segment (arbitrary bytes; `/` must be sent as `%2F`).
//! Errors are JSON `{"error": code, "message": text}`; a refused request changes nothing.

//!
//! One module per concern: [`kv`] (the key-value API), [`admin`] (ring, members, stats,
//! preference lists, local copies), [`faults`] (fault injection for tests), [`errors`] (the JSON
//! error answers), [`render`] (siblings as multipart or JSON) and [`ui`] (the cluster page).

pub mod admin;
pub mod backup;
pub mod conditions;
pub mod counters;
pub mod errors;
pub mod faults;
pub mod hyper_errors;
pub mod kv;
pub mod list;
pub mod render;
pub mod serve;
pub mod ui;

pub use errors::ApiError;
pub use render::multipart;

use crate::runtime::NodeHandle;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use dynamokv_core::{ActorId, ContextCodec};
use dynamokv_storage::ObjectStore;
use std::sync::Arc;

/// The header carrying a context token.
pub const CONTEXT_HEADER: &str = "x-context";
/// The header counting tombstone siblings hidden from a read.
pub const TOMBSTONES_HEADER: &str = "x-tombstones";
/// The header naming the version a write created: `ACTOR:COUNTER` (its dot).
pub const VERSION_HEADER: &str = "x-version";
/// The header carrying the answering node's ring version.
pub const RING_VERSION_HEADER: &str = "x-ring-version";

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    /// The node thread.
    pub node: NodeHandle,
    /// This node's objects (for `/admin/local`).
    pub store: Arc<ObjectStore>,
    /// The context codec.
    pub codec: ContextCodec,
    /// This node's id.
    pub node_id: String,
    /// This node's actor.
    pub actor: ActorId,
    /// Largest value accepted.
    pub max_value_bytes: usize,
    /// The peer transport (for the fault-injection endpoint).
    pub transport: crate::transport::Transport,
    /// Whether `/admin/faults` may change anything.
    pub fault_injection: bool,
    /// The process's metrics recorder (`None`: `/metrics` is off).
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// The node's data directory (its size is a metric).
    pub data_dir: std::path::PathBuf,
    /// Client tokens (none: open).
    pub tokens: Arc<crate::auth::Tokens>,
    /// The node's TLS set-up, when its ports speak TLS (the node then asks other nodes over
    /// HTTPS).
    pub tls: Option<crate::tls::Tls>,
}

/// The router of the HTTP API.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(ui::index))
        .route("/ui", get(ui::index))
        .route("/ui/", get(ui::index))
        .route("/ui/app.js", get(ui::app_js))
        .route("/ui/style.css", get(ui::style_css))
        .route("/admin/views", get(ui::views))
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .route(
            "/kv/{*key}",
            get(kv::get_key).put(kv::put_key).delete(kv::delete_key),
        )
        .route(
            "/counters/{*key}",
            get(counters::read).post(counters::increment),
        )
        .route("/kv", get(list::list).fallback(missing_key))
        .route("/kv/", any(missing_key))
        .route("/admin/ring", get(admin::admin_ring))
        .route("/admin/members", get(admin::admin_members))
        .route("/admin/stats", get(admin::admin_stats))
        .route("/admin/backup", get(backup::backup_page))
        .route("/admin/restore", post(backup::restore_batch))
        .route("/admin/leave", post(admin::leave))
        .route("/admin/remove/{*id}", post(admin::remove))
        .route("/admin/plan", get(admin::plan))
        .route(
            "/admin/repair",
            get(admin::repair_progress).post(admin::start_repair),
        )
        .route(
            "/admin/preference-list/{*key}",
            get(admin::admin_preference_list),
        )
        .route("/admin/local/{*key}", get(admin::admin_local))
        .route(
            "/admin/faults",
            get(faults::get_faults)
                .post(faults::set_faults)
                .delete(faults::clear_faults),
        )
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authenticate,
        ))
        .with_state(state)
}

/// The scope a request needs, or `None` for what anyone may fetch (health, the page's files).
fn needed_scope(method: &axum::http::Method, path: &str) -> Option<crate::auth::Scope> {
    use crate::auth::Scope;
    match path {
        "/health" | "/" | "/ui" | "/ui/" | "/ui/app.js" | "/ui/style.css" => None,
        p if p == "/kv" || p.starts_with("/kv/") || p.starts_with("/counters/") => Some(
            if method == axum::http::Method::GET || method == axum::http::Method::HEAD {
                Scope::Read
            } else {
                Scope::Write
            },
        ),
        _ => Some(Scope::Admin),
    }
}

/// Checks the request's bearer token against the configured tokens (when there are any).
async fn authenticate(
    State(s): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if !s.tokens.enabled() {
        return next.run(req).await;
    }
    let Some(needed) = needed_scope(req.method(), req.uri().path()) else {
        return next.run(req).await;
    };
    let presented = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .map(axum::http::HeaderValue::as_bytes)
        .filter(|v| v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer "))
        .map(|v| &v[7..]);
    match s.tokens.check(presented, needed) {
        Ok(()) => next.run(req).await,
        Err(crate::auth::Refusal::Unauthenticated) => {
            let mut r = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this node requires a token: send Authorization: Bearer <token>",
            )
            .into_response();
            r.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
            r
        }
        Err(crate::auth::Refusal::Forbidden { name, needed }) => ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "token {name:?} lacks the {} scope this request needs",
                needed.as_str()
            ),
        )
        .into_response(),
    }
}

/// What a node that has not joined says about itself.
pub(crate) const NOT_JOINED: &str = "this node has not reached any of its seeds yet, so it belongs to no cluster and serves nothing; check --seeds, the seeds' peer ports and the cluster secret";

/// Whether `n` was given seeds and has heard from none of them: it is in no cluster yet.
pub(crate) fn not_joined(n: &crate::runtime::CoreNode) -> bool {
    let me = n.view().members.get(n.id()).map(|m| m.status);
    me == Some(dynamokv_core::membership::Status::Joining)
        && n.view().members.keys().all(|id| id == n.id())
}

async fn health(State(s): State<AppState>) -> Response {
    // A node whose instance ended (it left, was removed, or runs on a stale copy of its data
    // directory) serves nothing: it says so here too.
    if let Ok(Some(e)) = s.node.query(|n| n.ended().cloned()).await {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({
                "status": e.how.as_str(),
                "node": s.node_id,
                "actor": s.actor.to_string(),
                "message": e.explain(),
            })),
        )
            .into_response();
    }
    // A node that was given seeds and has heard from none of them is in no cluster yet.
    let alone = s.node.query(not_joined).await.unwrap_or(false);
    if alone {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({
                "status": "not_joined",
                "node": s.node_id,
                "actor": s.actor.to_string(),
                "message": NOT_JOINED,
            })),
        )
            .into_response();
    }
    axum::Json(serde_json::json!({
        "status": "ok",
        "node": s.node_id,
        "actor": s.actor.to_string(),
    }))
    .into_response()
}

async fn metrics_text(State(s): State<AppState>) -> Result<Response, ApiError> {
    let Some(handle) = s.metrics.clone() else {
        return Err(ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "metrics_unavailable",
            "another metrics recorder was installed in this process; /metrics is off",
        ));
    };
    let mut scrape = query(&s, |n| crate::metrics::Scrape {
        stats: n.stats(),
        anti_entropy: n.anti_entropy_stats(),
        transfer: n.transfer().clone(),
        ring: n.ring_info(),
        scheduler: n.scheduler_stats(),
        latency: n.coordinator_latency().clone(),
        hints_pending: Default::default(),
        disk: None,
        damage: Default::default(),
        lost_data: false,
        scrub: n.scrub_stats(),
    })
    .await?;
    scrape.damage = s.store.damage();
    scrape.lost_data = on_store(&s, |store| store.engine().lost_data()).await?;
    scrape.hints_pending = on_store(&s, |store| store.hint_counts()).await?;
    scrape.disk = s.store.engine().disk_space();
    let data_dir = s.data_dir.clone();
    let text =
        tokio::task::spawn_blocking(move || crate::metrics::render(&handle, &scrape, &data_dir))
            .await
            .map_err(|e| {
                ApiError::new(
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                    "internal_error",
                    format!("rendering metrics failed: {e}"),
                )
            })?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

async fn unknown_route(uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "unknown_route",
        format!(
            "no such endpoint: {}; use /kv/{{key}} (GET, PUT, DELETE), /health or /admin/...",
            uri.path()
        ),
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not accept that method; /kv/{key} takes GET, PUT and DELETE",
    )
}

async fn missing_key() -> ApiError {
    ApiError::bad_key("the key is empty; use /kv/{key} with a key of 1 to 1024 bytes")
}

/// 400 `bad_query` with `message`.
pub(crate) fn bad_query(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_query", message)
}

/// The query's parameters in order: names percent-decoded as UTF-8, values as bytes.
pub(crate) fn query_pairs(uri: &Uri) -> Result<Vec<(String, Vec<u8>)>, ApiError> {
    let mut pairs = Vec::new();
    for pair in uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let invalid = || {
            bad_query(format!(
                "the query parameter {pair:?} is not valid percent-encoding"
            ))
        };
        let name = percent_decode_strict(k)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(invalid)?;
        let value = percent_decode_strict(v).map_err(|_| invalid())?;
        pairs.push((name, value));
    }
    Ok(pairs)
}

/// The key: the percent-decoded path segment after `prefix`.
pub fn key_after(uri: &Uri, prefix: &str) -> Result<Vec<u8>, ApiError> {
    let raw = uri
        .path()
        .strip_prefix(prefix)
        .ok_or_else(|| ApiError::bad_key(format!("keys go after {prefix}")))?;
    if raw.contains('/') {
        return Err(ApiError::bad_key(
            "the key must be one path segment: percent-encode '/' in keys as %2F",
        ));
    }
    let key = percent_decode_strict(raw).map_err(|e| ApiError::bad_key(format!("the key {e}")))?;
    dynamokv_core::limits::check_key(&key).map_err(|e| ApiError::bad_key(e.to_string()))?;
    Ok(key)
}

/// Percent-decodes `raw`, refusing a `%` not followed by two hex digits (taking it literally
/// would make `%G1` and `%25G1` the same key). The error says where.
pub fn percent_decode_strict(raw: &str) -> Result<Vec<u8>, String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            let Some(b) = hex else {
                return Err(format!(
                    "has a malformed percent escape at byte {i}: '%' must be followed by two hex digits (send '%' itself as %25)"
                ));
            };
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

pub(crate) fn key_from(uri: &Uri) -> Result<Vec<u8>, ApiError> {
    key_after(uri, "/kv/")
}

/// Runs `f` on this node's store, off the async threads.
pub(crate) async fn on_store<T: Send + 'static>(
    s: &AppState,
    f: impl FnOnce(&ObjectStore) -> dynamokv_storage::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    let store = s.store.clone();
    tokio::task::spawn_blocking(move || f(&store))
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                e.to_string(),
            )
        })?
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "storage_error",
                e.to_string(),
            )
        })
}

/// Sends a client request to the node thread and waits for its answer (and the ring version);
/// a failed operation is counted and answered with its status.
pub(crate) async fn call(
    s: &AppState,
    request: dynamokv_core::message::ClientRequest,
) -> Result<(dynamokv_core::message::Reply, u64), ApiError> {
    let key = request.key().to_vec();
    let (response, ring) = s.node.call(request).await.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            format!("{e}; retry on another node"),
        )
    })?;
    match response {
        Ok(reply) => Ok((reply, ring)),
        Err(e) => {
            crate::metrics::op_failed(&e);
            // A failed condition answers with the context of what the read found.
            let context = match &e {
                dynamokv_core::message::OpError::PreconditionFailed { context, .. }
                    if !context.is_empty() =>
                {
                    Some(s.codec.encode(&key, context))
                }
                _ => None,
            };
            let mut err = ApiError::from(e).with_context(context);
            if let Some(o) = err
                .detail
                .get_or_insert_with(|| serde_json::json!({}))
                .as_object_mut()
            {
                o.insert("ring_version".into(), format!("{ring:016x}").into());
            }
            Err(err)
        }
    }
}

/// 500 for an answer of the wrong kind to `what` (a read, a write, a listing).
pub(crate) fn wrong_reply(what: &str) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal_error",
        format!("the node answered {what} with another kind of answer; retry"),
    )
}

/// Runs an operator's command on the node thread.
pub(crate) async fn command<T: Send + 'static>(
    s: &AppState,
    f: impl FnOnce(&mut crate::runtime::CoreNode) -> T + Send + 'static,
) -> Result<T, ApiError> {
    s.node.command(f).await.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            e.to_string(),
        )
    })
}

/// Runs a read-only query on the node thread.
pub(crate) async fn query<T: Send + 'static>(
    s: &AppState,
    f: impl FnOnce(&crate::runtime::CoreNode) -> T + Send + 'static,
) -> Result<T, ApiError> {
    s.node.query(f).await.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            e.to_string(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_percent_decoded_single_segments() {
        let uri: Uri = "/kv/a%2Fb%00%FF".parse().unwrap();
        assert_eq!(key_from(&uri).unwrap(), b"a/b\x00\xff".to_vec());
        let uri: Uri = "/kv/a/b".parse().unwrap();
        assert!(key_from(&uri).is_err());
        let long = format!("/kv/{}", "x".repeat(1025));
        assert!(key_from(&long.parse().unwrap()).is_err());
        // Malformed escapes are refused, so that no two spellings name one key.
        for bad in ["/kv/%G1%", "/kv/a%", "/kv/a%4", "/kv/%zz"] {
            let e = key_from(&bad.parse().unwrap()).unwrap_err();
            assert!(e.message.contains("percent escape"), "{bad}: {}", e.message);
        }
        let uri: Uri = "/kv/%25G1%25".parse().unwrap();
        assert_eq!(key_from(&uri).unwrap(), b"%G1%".to_vec());
    }
}
