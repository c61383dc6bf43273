//! The HTTP API (axum).
//!
//! - `PUT /kv/{key}` - body is the value; optional `X-Context`. 204 with `X-Context`.
//! - `GET /kv/{key}` - 200 with the value, 300 with every sibling (`multipart/mixed`, or JSON
//!   with base64 values for `Accept: application/json`), 404 when no live value; `X-Context`
//!   covers everything returned.
//! - `DELETE /kv/{key}` - optional `X-Context`; writes a tombstone; 204 with `X-Context`.
//! - `GET /health` - 200 while the node serves requests.
//! - `GET /admin/ring`, `GET /admin/preference-list/{key}`, `GET /admin/local/{key}` - the ring,
//!   where a key lives, and this node's own copy of a key.
//!
//! Gets take `?r=`, puts and deletes `?w=` (1 to N). Every answer to a key request carries
//! `X-Ring-Version`, so partition-aware clients notice a ring change.
//!
//! Keys are the percent-decoded path segment (arbitrary bytes; `/` must be sent as `%2F`).
//! Errors are JSON `{"error": code, "message": text}`; a refused request changes nothing.

use crate::runtime::NodeHandle;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use dynamokv_core::message::{ClientRequest, OpError, QuorumKind, Reply};
use dynamokv_core::{ActorId, ContextCodec, Object, VersionVector};
use dynamokv_storage::ObjectStore;
use serde::Serialize;
use std::sync::Arc;

/// The header carrying a context token.
pub const CONTEXT_HEADER: &str = "x-context";
/// The header counting tombstone siblings hidden from a read.
pub const TOMBSTONES_HEADER: &str = "x-tombstones";
/// The header naming the version a write created: `ACTOR:COUNTER` (its dot).
pub const VERSION_HEADER: &str = "x-version";
/// The header carrying the answering node's ring version.
pub const RING_VERSION_HEADER: &str = "x-ring-version";

/// An error answer: status, stable code, and a message that says what to do.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    context: Option<String>,
    detail: Option<serde_json::Value>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            context: None,
            detail: None,
        }
    }

    fn bad_key(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_key", message)
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: &'a str,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    detail: Option<serde_json::Value>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&ErrorBody {
            error: self.code,
            message: &self.message,
            detail: self.detail,
        })
        .unwrap_or_default();
        let mut resp = (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response();
        if let Some(ctx) = self.context.and_then(|c| HeaderValue::from_str(&c).ok()) {
            resp.headers_mut().insert(CONTEXT_HEADER, ctx);
        }
        resp
    }
}

impl From<OpError> for ApiError {
    fn from(e: OpError) -> Self {
        let message = e.to_string();
        match e {
            OpError::InvalidQuorum { .. } => {
                ApiError::new(StatusCode::BAD_REQUEST, "bad_quorum", message)
            }
            OpError::BadRequest(_) => ApiError::bad_key(message),
            OpError::Unavailable {
                kind,
                needed,
                answered,
                asked,
                failed,
                written,
                sent,
                primary_needed,
                primary_answered,
            } => ApiError {
                detail: Some(serde_json::json!({
                    "quorum": match kind { QuorumKind::Read => "read", QuorumKind::Write => "write" },
                    "needed": needed,
                    "answered": answered,
                    "asked": asked,
                    "failed": failed,
                    "maybe_written": written,
                    "sent": sent,
                    "primary_needed": primary_needed,
                    "primary_answered": primary_answered,
                })),
                ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
            },
            OpError::CoordinatorUnreachable { .. } | OpError::NoRing => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "coordinator_unreachable",
                message,
            ),
            OpError::Storage { .. } => {
                tracing::error!(error = %message, "storage failure");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "storage_error",
                    format!("{message}; the node's disk needs attention, retry later"),
                )
            }
        }
    }
}

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
}

/// The router of the HTTP API.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/kv/{*key}", get(get_key).put(put_key).delete(delete_key))
        .route("/kv", any(missing_key))
        .route("/kv/", any(missing_key))
        .route("/admin/ring", get(admin_ring))
        .route("/admin/members", get(admin_members))
        .route("/admin/stats", get(admin_stats))
        .route("/admin/preference-list/{*key}", get(admin_preference_list))
        .route("/admin/local/{*key}", get(admin_local))
        .route(
            "/admin/faults",
            get(get_faults).post(set_faults).delete(clear_faults),
        )
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn health(State(s): State<AppState>) -> Response {
    axum::Json(serde_json::json!({
        "status": "ok",
        "node": s.node_id,
        "actor": s.actor.to_string(),
    }))
    .into_response()
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

/// The key: the percent-decoded path segment after `prefix`.
fn key_after(uri: &Uri, prefix: &str) -> Result<Vec<u8>, ApiError> {
    let raw = uri
        .path()
        .strip_prefix(prefix)
        .ok_or_else(|| ApiError::bad_key(format!("keys go after {prefix}")))?;
    if raw.contains('/') {
        return Err(ApiError::bad_key(
            "the key must be one path segment: percent-encode '/' in keys as %2F",
        ));
    }
    let key: Vec<u8> = percent_encoding::percent_decode_str(raw).collect();
    dynamokv_core::limits::check_key(&key).map_err(|e| ApiError::bad_key(e.to_string()))?;
    Ok(key)
}

fn key_from(uri: &Uri) -> Result<Vec<u8>, ApiError> {
    key_after(uri, "/kv/")
}

/// Reads the quorum parameters `names` (e.g. `r` and `pr`) from the query, each 0..=255;
/// any other parameter is refused.
fn quorum_params(uri: &Uri, names: [&str; 2]) -> Result<[Option<u8>; 2], ApiError> {
    let mut values = [None, None];
    for pair in uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let Some(i) = names.iter().position(|n| *n == k) else {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_query",
                format!(
                    "unknown query parameter {k:?}; this request takes ?{}=1..N and ?{}=0..N",
                    names[0], names[1]
                ),
            ));
        };
        let n: u8 = v.parse().map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_quorum",
                format!("{k}={v:?} is not a number; use {k}=1..N"),
            )
        })?;
        values[i] = Some(n);
    }
    Ok(values)
}

fn context_from(
    codec: &ContextCodec,
    key: &[u8],
    headers: &HeaderMap,
) -> Result<Option<VersionVector>, ApiError> {
    let Some(v) = headers.get(CONTEXT_HEADER) else {
        return Ok(None);
    };
    let token = v.to_str().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_context",
            "the X-Context header is not ASCII; send the X-Context of a recent read unchanged",
        )
    })?;
    codec
        .decode(key, token)
        .map(Some)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_context", e.to_string()))
}

fn context_token(codec: &ContextCodec, key: &[u8], obj: &Object) -> Option<String> {
    (!obj.clock().is_empty()).then(|| codec.encode(key, obj.clock()))
}

fn with_headers(mut resp: Response, s: &AppState, key: &[u8], obj: &Object, ring: u64) -> Response {
    if let Some(ctx) =
        context_token(&s.codec, key, obj).and_then(|c| HeaderValue::from_str(&c).ok())
    {
        resp.headers_mut().insert(CONTEXT_HEADER, ctx);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("{ring:016x}")) {
        resp.headers_mut().insert(RING_VERSION_HEADER, v);
    }
    resp
}

/// Sends a request to the node thread and waits for its answer.
async fn call(s: &AppState, request: ClientRequest) -> Result<(Reply, u64), ApiError> {
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
            let mut err = ApiError::from(e);
            if let Ok(v) = HeaderValue::from_str(&format!("{ring:016x}")) {
                err.detail
                    .get_or_insert_with(|| serde_json::json!({}))
                    .as_object_mut()
                    .map(|o| {
                        o.insert("ring_version".into(), v.to_str().unwrap_or_default().into())
                    });
            }
            Err(err)
        }
    }
}

async fn put_key(
    State(s): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let key = key_from(&uri)?;
    let [w, pw] = quorum_params(&uri, ["w", "pw"])?;
    let context = context_from(&s.codec, &key, &headers)?;
    let value = read_body(body, &headers, s.max_value_bytes).await?;
    write(&s, key, Some(value), context, w, pw).await
}

async fn delete_key(
    State(s): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let key = key_from(&uri)?;
    let [w, pw] = quorum_params(&uri, ["w", "pw"])?;
    let context = context_from(&s.codec, &key, &headers)?;
    write(&s, key, None, context, w, pw).await
}

async fn write(
    s: &AppState,
    key: Vec<u8>,
    value: Option<Vec<u8>>,
    context: Option<VersionVector>,
    w: Option<u8>,
    pw: Option<u8>,
) -> Result<Response, ApiError> {
    let request = ClientRequest::Put {
        key: key.clone(),
        value,
        context,
        w,
        pw,
    };
    match call(s, request).await? {
        (Reply::Written { object, dot }, ring) => {
            let mut resp = StatusCode::NO_CONTENT.into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("{}:{}", dot.actor, dot.counter)) {
                resp.headers_mut().insert(VERSION_HEADER, v);
            }
            Ok(with_headers(resp, s, &key, &object, ring))
        }
        (Reply::Read(_), _) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "the coordinator answered a write with a read; retry",
        )),
    }
}

/// Past the limit, the body is still read and thrown away up to this many bytes, so that a
/// client still sending gets the 413 instead of a broken connection.
const DRAIN_LIMIT: usize = 16 * 1024 * 1024;

/// Reads a request body of at most `max` bytes, answering 413 past it.
async fn read_body(body: Body, headers: &HeaderMap, max: usize) -> Result<Vec<u8>, ApiError> {
    use http_body_util::BodyExt as _;
    let too_large = |size: Option<usize>| {
        let size = size.map_or_else(
            || "more than".to_owned(),
            |s| format!("{s} bytes, more than"),
        );
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "value_too_large",
            format!("the value is {size} the {max} bytes this node accepts; store smaller values"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let expects_continue = headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if let Some(n) = declared.filter(|n| *n > max)
        && (expects_continue || n - max > DRAIN_LIMIT)
    {
        // The client waits for our go-ahead, or the body is too big to drain: answer now.
        return Err(too_large(declared));
    }
    let mut body = body;
    let mut value = Vec::with_capacity(declared.unwrap_or(0).min(max));
    let mut seen = 0usize;
    let mut complete = true;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_body",
                format!("the request body could not be read ({e}); resend it"),
            )
        })?;
        if let Ok(data) = frame.into_data() {
            seen = seen.saturating_add(data.len());
            if seen <= max {
                value.extend_from_slice(&data);
            } else if seen - max > DRAIN_LIMIT {
                complete = false;
                break;
            }
        }
    }
    if seen > max {
        return Err(too_large(declared.or(complete.then_some(seen))));
    }
    Ok(value)
}

/// JSON form of a read.
#[derive(Serialize)]
struct SiblingsJson {
    siblings: Vec<SiblingJson>,
    context: Option<String>,
    tombstones: usize,
}

#[derive(Serialize)]
struct SiblingJson {
    /// The value, standard base64.
    value: String,
    /// Write time at the coordinator, ms since the Unix epoch.
    timestamp: u64,
}

fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/json"))
}

async fn get_key(
    State(s): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let key = key_from(&uri)?;
    let [r, pr] = quorum_params(&uri, ["r", "pr"])?;
    let (obj, ring) = match call(
        &s,
        ClientRequest::Get {
            key: key.clone(),
            r,
            pr,
        },
    )
    .await?
    {
        (Reply::Read(obj), ring) => (obj, ring),
        (Reply::Written { .. }, _) => {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "the coordinator answered a read with a write; retry",
            ));
        }
    };
    let live: Vec<_> = obj.live().collect();
    let tombstones = obj.siblings().len() - live.len();
    let context = context_token(&s.codec, &key, &obj);
    let mut resp = if live.is_empty() {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            if tombstones > 0 {
                "the key was deleted; X-Context covers the delete"
            } else {
                "no value is stored under this key"
            },
        )
        .into_response()
    } else if wants_json(&headers) {
        let status = if live.len() == 1 {
            StatusCode::OK
        } else {
            StatusCode::MULTIPLE_CHOICES
        };
        let body = SiblingsJson {
            siblings: live
                .iter()
                .map(|sib| SiblingJson {
                    value: STANDARD.encode(sib.value.as_deref().unwrap_or_default()),
                    timestamp: sib.timestamp,
                })
                .collect(),
            context,
            tombstones,
        };
        (status, axum::Json(body)).into_response()
    } else if let [only] = live.as_slice() {
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/octet-stream")],
            only.value.clone().unwrap_or_default(),
        )
            .into_response()
    } else {
        let values: Vec<(&[u8], u64)> = live
            .iter()
            .map(|sib| (sib.value.as_deref().unwrap_or_default(), sib.timestamp))
            .collect();
        let (boundary, body) = multipart(&values);
        (
            StatusCode::MULTIPLE_CHOICES,
            [(
                header::CONTENT_TYPE,
                format!("multipart/mixed; boundary={boundary}"),
            )],
            body,
        )
            .into_response()
    };
    if tombstones > 0 && !live.is_empty() {
        resp.headers_mut()
            .insert(TOMBSTONES_HEADER, HeaderValue::from(tombstones));
    }
    Ok(with_headers(resp, &s, &key, &obj, ring))
}

/// Runs a storage read off the async threads.
async fn on_store<T: Send + 'static>(
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

/// Runs a read-only query on the node thread.
async fn query<T: Send + 'static>(
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

fn faults_disabled() -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "fault_injection_disabled",
        "fault injection is off on this node; start it with --enable-fault-injection (test clusters only)",
    )
}

async fn get_faults(State(s): State<AppState>) -> Result<Response, ApiError> {
    if !s.fault_injection {
        return Err(faults_disabled());
    }
    Ok(axum::Json(s.transport.faults()).into_response())
}

async fn set_faults(State(s): State<AppState>, body: Body) -> Result<Response, ApiError> {
    if !s.fault_injection {
        return Err(faults_disabled());
    }
    let bytes = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_body", e.to_string()))?;
    let rules: crate::transport::FaultRules = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_faults",
            format!("expected {{\"drop_to\": [ids], \"drop_from\": [ids], \"delay_ms\": n}}: {e}"),
        )
    })?;
    tracing::warn!(?rules, "fault injection rules set");
    s.transport.set_faults(rules.clone());
    Ok(axum::Json(rules).into_response())
}

async fn clear_faults(State(s): State<AppState>) -> Result<Response, ApiError> {
    if !s.fault_injection {
        return Err(faults_disabled());
    }
    s.transport.set_faults(Default::default());
    tracing::warn!("fault injection rules cleared");
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn admin_ring(State(s): State<AppState>) -> Result<Response, ApiError> {
    let info = query(&s, |n| n.ring_info()).await?;
    Ok(axum::Json(info).into_response())
}

async fn admin_members(State(s): State<AppState>) -> Result<Response, ApiError> {
    let body = query(&s, |n| {
        let info = n.ring_info();
        let members: Vec<serde_json::Value> = info
            .members
            .iter()
            .map(|m| {
                serde_json::json!({
                    "id": m.member.id,
                    "peer_addr": m.member.peer_addr,
                    "http_addr": m.member.http_addr,
                    "status": m.member.status.as_str(),
                    "generation": m.member.generation,
                    "version": m.member.version,
                    "heartbeat": m.heartbeat,
                    "up": m.up,
                    "connected": m.connected,
                    "phi": m.detector.map(|d| d.phi),
                    "last_heard_ms": m.detector.map(|d| d.last_heard_ms),
                    "tokens": m.member.tokens.len(),
                    "share": m.share,
                })
            })
            .collect();
        serde_json::json!({
            "node": info.node,
            "ring_version": info.version,
            "stats": n.stats(),
            "members": members,
        })
    })
    .await?;
    Ok(axum::Json(body).into_response())
}

async fn admin_stats(State(s): State<AppState>) -> Result<Response, ApiError> {
    let stats = query(&s, |n| n.stats()).await?;
    let pending = on_store(&s, |store| store.hint_counts()).await?;
    let total: u64 = pending.values().sum();
    Ok(axum::Json(serde_json::json!({
        "node": s.node_id,
        "hints_stored": stats.hints_stored,
        "hints_delivered": stats.hints_delivered,
        "hints_pending": total,
        "hints_pending_by_owner": pending,
        "read_repairs": stats.read_repairs,
        "sloppy_writes": stats.sloppy_writes,
        "forwarded": stats.forwarded,
        "coordinated_reads": stats.coordinated_reads,
        "coordinated_writes": stats.coordinated_writes,
        "rejected_messages": stats.rejected_messages,
    }))
    .into_response())
}

async fn admin_preference_list(State(s): State<AppState>, uri: Uri) -> Result<Response, ApiError> {
    let key = key_after(&uri, "/admin/preference-list/")?;
    let position = dynamokv_core::ring::position(&key);
    let body = query(&s, move |n| {
        let (primaries, targets) = n.plan(&key);
        let mut entries: Vec<serde_json::Value> = primaries
            .iter()
            .map(|id| {
                serde_json::json!({
                    "node": id,
                    "primary": true,
                    "up": n.is_up(id),
                    "http_addr": n.members().get(id).map(|m| m.http_addr.clone()),
                })
            })
            .collect();
        for (id, owner) in targets.iter().filter(|(_, o)| o.is_some()) {
            entries.push(serde_json::json!({
                "node": id,
                "primary": false,
                "fallback_for": owner,
                "up": n.is_up(id),
                "http_addr": n.members().get(id).map(|m| m.http_addr.clone()),
            }));
        }
        serde_json::json!({
            "position": position,
            "ring_version": format!("{:016x}", n.ring().version()),
            "nodes": primaries,
            "entries": entries,
        })
    })
    .await?;
    Ok(axum::Json(body).into_response())
}

async fn admin_local(State(s): State<AppState>, uri: Uri) -> Result<Response, ApiError> {
    let key = key_after(&uri, "/admin/local/")?;
    let k = key.clone();
    let found = on_store(&s, move |store| store.get(&k)).await?;
    let Some(obj) = found else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("node {} holds no copy of this key", s.node_id),
        ));
    };
    Ok(axum::Json(serde_json::json!({
        "node": s.node_id,
        "position": dynamokv_core::ring::position(&key),
        "clock": obj.clock().iter().map(|(a, e)| serde_json::json!({
            "actor": a.to_string(), "counter": e.counter, "timestamp": e.timestamp,
        })).collect::<Vec<_>>(),
        "siblings": obj.siblings().iter().map(|sib| serde_json::json!({
            "actor": sib.dot.actor.to_string(),
            "counter": sib.dot.counter,
            "timestamp": sib.timestamp,
            "tombstone": sib.is_tombstone(),
            "value": sib.value.as_ref().map(|v| STANDARD.encode(v)),
        })).collect::<Vec<_>>(),
        "context": context_token(&s.codec, &key, &obj),
    }))
    .into_response())
}

/// Encodes sibling values as a `multipart/mixed` body (RFC 2046); returns the boundary and body.
/// The boundary is chosen so that no value contains it.
pub fn multipart(values: &[(&[u8], u64)]) -> (String, Vec<u8>) {
    let mut n = 0u64;
    let boundary = loop {
        let b = format!("dynamokv-siblings-{n}");
        let delim = format!("--{b}");
        if !values
            .iter()
            .any(|(v, _)| v.windows(delim.len()).any(|w| w == delim.as_bytes()))
        {
            break b;
        }
        n += 1;
    };
    let mut body = Vec::new();
    for (i, (value, timestamp)) in values.iter().enumerate() {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Type: application/octet-stream\r\nX-Sibling: {}\r\nX-Timestamp: {timestamp}\r\n\r\n",
                i + 1
            )
            .as_bytes(),
        );
        body.extend_from_slice(value);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (boundary, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_boundary_avoids_values() {
        let v1 = b"--dynamokv-siblings-0 inside".as_slice();
        let (b, body) = multipart(&[(v1, 1), (b"plain", 2)]);
        assert_eq!(b, "dynamokv-siblings-1");
        let text = String::from_utf8_lossy(&body);
        assert_eq!(text.matches("--dynamokv-siblings-1\r\n").count(), 2);
        assert!(text.ends_with("--dynamokv-siblings-1--\r\n"));
    }

    #[test]
    fn keys_are_percent_decoded_single_segments() {
        let uri: Uri = "/kv/a%2Fb%00%FF".parse().unwrap();
        assert_eq!(key_from(&uri).unwrap(), b"a/b\x00\xff".to_vec());
        let uri: Uri = "/kv/a/b".parse().unwrap();
        assert!(key_from(&uri).is_err());
        let long = format!("/kv/{}", "x".repeat(1025));
        assert!(key_from(&long.parse().unwrap()).is_err());
    }
}
