//! The HTTP API (axum).
//!
//! - `PUT /kv/{key}` - body is the value; optional `X-Context`. 204 with `X-Context`.
//! - `GET /kv/{key}` - 200 with the value, 300 with every sibling (`multipart/mixed`, or JSON
//!   with base64 values for `Accept: application/json`), 404 when no live value; `X-Context`
//!   covers everything returned.
//! - `DELETE /kv/{key}` - optional `X-Context`; writes a tombstone; 204 with `X-Context`.
//! - `GET /health` - 200 while the node serves requests.
//!
//! Keys are the percent-decoded path segment (arbitrary bytes; `/` must be sent as `%2F`).
//! Errors are JSON `{"error": code, "message": text}`; a refused request changes nothing.

use crate::node::{Node, NodeError};
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use dynamokv_core::{Object, VersionVector};
use serde::Serialize;
use std::sync::Arc;

/// The header carrying a context token.
pub const CONTEXT_HEADER: &str = "x-context";
/// The header counting tombstone siblings hidden from a read.
pub const TOMBSTONES_HEADER: &str = "x-tombstones";

/// An error answer: status, stable code, and a message that says what to do.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    context: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            context: None,
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
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&ErrorBody {
            error: self.code,
            message: &self.message,
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

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> Self {
        let message = e.to_string();
        match e {
            NodeError::BadKey(_) => ApiError::bad_key(message),
            NodeError::BadContext(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, "bad_context", message)
            }
            NodeError::ValueTooLarge { .. } => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "value_too_large", message)
            }
            NodeError::Storage(_) => {
                tracing::error!(error = %message, "storage failure");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "storage_error",
                    format!("{message}; the node's disk needs attention, retry on another node"),
                )
            }
        }
    }
}

/// Shared state of the handlers.
#[derive(Clone)]
struct AppState {
    node: Arc<Node>,
}

/// The router of the HTTP API over `node`.
pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/kv/{*key}", get(get_key).put(put_key).delete(delete_key))
        .route("/kv", any(missing_key))
        .route("/kv/", any(missing_key))
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(AppState { node })
}

async fn health(State(s): State<AppState>) -> Response {
    axum::Json(serde_json::json!({
        "status": "ok",
        "actor": s.node.actor().to_string(),
    }))
    .into_response()
}

async fn unknown_route(uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "unknown_route",
        format!(
            "no such endpoint: {}; use /kv/{{key}} (GET, PUT, DELETE) or /health",
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

/// The key: the percent-decoded last path segment of `/kv/{key}`.
fn key_from(uri: &Uri) -> Result<Vec<u8>, ApiError> {
    let raw = uri
        .path()
        .strip_prefix("/kv/")
        .ok_or_else(|| ApiError::bad_key("keys live under /kv/{key}"))?;
    if raw.contains('/') {
        return Err(ApiError::bad_key(
            "the key must be one path segment: percent-encode '/' in keys as %2F",
        ));
    }
    let key: Vec<u8> = percent_encoding::percent_decode_str(raw).collect();
    dynamokv_core::limits::check_key(&key).map_err(|e| ApiError::bad_key(e.to_string()))?;
    Ok(key)
}

fn context_from(
    node: &Node,
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
    Ok(Some(node.decode_context(key, token)?))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, NodeError> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(ApiError::from),
        Err(e) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            format!("the operation failed inside the node ({e}); retry"),
        )),
    }
}

fn with_context(mut resp: Response, node: &Node, key: &[u8], obj: &Object) -> Response {
    if let Some(ctx) = node
        .context_token(key, obj)
        .and_then(|c| HeaderValue::from_str(&c).ok())
    {
        resp.headers_mut().insert(CONTEXT_HEADER, ctx);
    }
    resp
}

async fn put_key(
    State(s): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let key = key_from(&uri)?;
    let context = context_from(&s.node, &key, &headers)?;
    let value = read_body(body, &headers, s.node.max_value_bytes()).await?;
    let node = s.node.clone();
    let k = key.clone();
    let obj = blocking(move || node.write(&k, Some(value), context)).await?;
    Ok(with_context(
        StatusCode::NO_CONTENT.into_response(),
        &s.node,
        &key,
        &obj,
    ))
}

async fn delete_key(
    State(s): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let key = key_from(&uri)?;
    let context = context_from(&s.node, &key, &headers)?;
    let node = s.node.clone();
    let k = key.clone();
    let obj = blocking(move || node.write(&k, None, context)).await?;
    Ok(with_context(
        StatusCode::NO_CONTENT.into_response(),
        &s.node,
        &key,
        &obj,
    ))
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
    let node = s.node.clone();
    let k = key.clone();
    let obj = blocking(move || node.get(&k)).await?;
    let live: Vec<_> = obj.live().collect();
    let tombstones = obj.siblings().len() - live.len();
    let context = s.node.context_token(&key, &obj);
    let mut resp = if live.is_empty() {
        ApiError {
            context: context.clone(),
            ..ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                if tombstones > 0 {
                    "the key was deleted; X-Context covers the delete"
                } else {
                    "no value is stored under this key"
                },
            )
        }
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
            context: context.clone(),
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
    if live.is_empty() {
        return Ok(resp);
    }
    if tombstones > 0 {
        resp.headers_mut()
            .insert(TOMBSTONES_HEADER, HeaderValue::from(tombstones));
    }
    Ok(with_context(resp, &s.node, &key, &obj))
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
