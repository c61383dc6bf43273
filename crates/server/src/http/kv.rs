//! The key-value API: `GET`, `PUT` and `DELETE /kv/{key}`.

use super::errors::ApiError;
use super::render::{SiblingJson, SiblingsJson, multipart, wants_json};
use super::{
    AppState, CONTEXT_HEADER, RING_VERSION_HEADER, TOMBSTONES_HEADER, VERSION_HEADER, key_from,
};
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use dynamokv_core::message::{ClientRequest, Reply};
use dynamokv_core::version::ValueKind;
use dynamokv_core::{ContextCodec, Object, Sibling, VersionVector};

/// Reads the quorum parameters `names` (e.g. `r` and `pr`) from the query, each 0..=255, names
/// and values percent-decoded; any other parameter, or one given twice, is refused.
pub fn quorum_params(uri: &Uri, names: [&str; 2]) -> Result<[Option<u8>; 2], ApiError> {
    quorum_from(super::query_pairs(uri)?, names)
}

/// [`quorum_params`] over query pairs already read.
pub fn quorum_from(
    pairs: Vec<(String, Vec<u8>)>,
    names: [&str; 2],
) -> Result<[Option<u8>; 2], ApiError> {
    use super::bad_query;
    let mut values = [None, None];
    for (k, v) in pairs {
        let v = String::from_utf8(v).map_err(|_| {
            bad_query(format!(
                "the query parameter {k:?} is not valid percent-encoded UTF-8"
            ))
        })?;
        let (k, v) = (k.as_str(), v.as_str());
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
        if values[i].replace(n).is_some() {
            return Err(bad_query(format!(
                "the query parameter {k} is given twice; give it once"
            )));
        }
    }
    Ok(values)
}

/// The client's context from the X-Context header of a write to `key`: `None` without one, refused
/// (400 bad_context) when it is not ASCII or not a token this cluster issued for `key`.
pub fn context_from(
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

pub(crate) fn context_token(codec: &ContextCodec, key: &[u8], obj: &Object) -> Option<String> {
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

/// Records a request's latency and outcome.
fn timed(
    op: &'static str,
    started: std::time::Instant,
    result: Result<Response, ApiError>,
) -> Result<Response, ApiError> {
    let status = match &result {
        Ok(r) => r.status(),
        Err(e) => e.status(),
    };
    let outcome = match status {
        s if s == StatusCode::NOT_FOUND && result.is_ok() => "not_found",
        s if s.is_success() || s == StatusCode::MULTIPLE_CHOICES => "ok",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        _ => "error",
    };
    crate::metrics::record("http", op, outcome, started.elapsed());
    result
}

pub(crate) async fn put_key(
    State(s): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let started = std::time::Instant::now();
    timed("put", started, put(s, uri, headers, body).await)
}

pub(crate) async fn delete_key(
    State(s): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let started = std::time::Instant::now();
    timed("delete", started, delete(s, uri, headers).await)
}

pub(crate) async fn get_key(
    State(s): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let started = std::time::Instant::now();
    timed("get", started, get(s, uri, headers).await)
}

/// The header giving a write's time to live, in seconds (as `?ttl=`).
pub const TTL_HEADER: &str = "x-ttl";
/// The header carrying the deadline of the value answered, ms since the Unix epoch.
pub const EXPIRES_HEADER: &str = "x-expires";

/// A write's time to live in ms, from `?ttl=SECONDS` (taken out of `pairs`) or the `X-TTL`
/// header: a whole number of seconds from 1 on; both at once, or anything else, is refused.
fn ttl_from(
    pairs: &mut Vec<(String, Vec<u8>)>,
    headers: &HeaderMap,
) -> Result<Option<u64>, ApiError> {
    let mut given: Vec<Vec<u8>> = Vec::new();
    pairs.retain(|(k, v)| {
        let ttl = k == "ttl";
        if ttl {
            given.push(v.clone());
        }
        !ttl
    });
    given.extend(
        headers
            .get_all(TTL_HEADER)
            .iter()
            .map(|v| v.as_bytes().to_vec()),
    );
    let bad = |why: &str| ApiError::new(StatusCode::BAD_REQUEST, "bad_ttl", why.to_owned());
    match given.as_slice() {
        [] => Ok(None),
        [one] => std::str::from_utf8(one)
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
            .filter(|t| *t > 0)
            .and_then(|t| t.checked_mul(1000))
            .map(Some)
            .ok_or_else(|| bad("the time to live is a whole number of seconds from 1 on (ttl=60)")),
        _ => Err(bad(
            "the time to live is given twice; give ?ttl= or X-TTL, once",
        )),
    }
}

async fn put(s: AppState, uri: Uri, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let key = key_from(&uri)?;
    let mut pairs = super::query_pairs(&uri)?;
    let ttl = ttl_from(&mut pairs, &headers)?;
    let [w, pw] = quorum_from(pairs, ["w", "pw"])?;
    let condition = super::conditions::condition(&s.codec, &key, &headers)?;
    let context = context_from(&s.codec, &key, &headers)?;
    let value = read_body(body, &headers, s.max_value_bytes).await?;
    let request = ClientRequest::Put {
        key,
        value: Some(value),
        context,
        w,
        pw,
        overwrite: false,
        expires_in_ms: ttl,
        condition,
    };
    write(&s, request).await
}

async fn delete(s: AppState, uri: Uri, headers: HeaderMap) -> Result<Response, ApiError> {
    let key = key_from(&uri)?;
    let [w, pw] = quorum_params(&uri, ["w", "pw"])?;
    let condition = super::conditions::condition(&s.codec, &key, &headers)?;
    let context = context_from(&s.codec, &key, &headers)?;
    let request = ClientRequest::Put {
        key,
        value: None,
        context,
        w,
        pw,
        overwrite: false,
        expires_in_ms: None,
        condition,
    };
    write(&s, request).await
}

/// A put or delete: 204 with the new version's context and dot.
async fn write(s: &AppState, request: ClientRequest) -> Result<Response, ApiError> {
    let key = request.key().to_vec();
    match super::call(s, request).await? {
        (Reply::Written { object, dot }, ring) => {
            let mut resp = StatusCode::NO_CONTENT.into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("{}:{}", dot.actor, dot.counter)) {
                resp.headers_mut().insert(VERSION_HEADER, v);
            }
            Ok(with_headers(resp, s, &key, &object, ring))
        }
        _ => Err(super::wrong_reply("a write")),
    }
}

/// Past the limit, the body is still read and thrown away up to this many bytes, so that a
/// client still sending gets the 413 instead of a broken connection.
const DRAIN_LIMIT: usize = 1024 * 1024;

/// Time a client has to send a whole request body: a client trickling its body is cut off.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

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
    let deadline = tokio::time::Instant::now() + BODY_TIMEOUT;
    while let Some(frame) = tokio::time::timeout_at(deadline, body.frame())
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!(
                    "the request body did not arrive within {} s; send it at once",
                    BODY_TIMEOUT.as_secs()
                ),
            )
        })?
    {
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

/// The answer to a read of `live` siblings (`tombstones` deleted ones beside them): 404
/// without a live one; one value as bytes (or JSON); several as a 300 multipart (or JSON).
fn read_response(
    live: &[&Sibling],
    tombstones: usize,
    expired: bool,
    context: Option<String>,
    json: bool,
) -> Response {
    if live.is_empty() {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            if expired {
                "the value expired; X-Context covers it"
            } else if tombstones > 0 {
                "the key was deleted; X-Context covers the delete"
            } else {
                "no value is stored under this key"
            },
        )
        .into_response()
    } else if json {
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
                    expires: sib.expires,
                })
                .collect(),
            context,
            tombstones,
        };
        (status, axum::Json(body)).into_response()
    } else if let [only] = live {
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
    }
}

/// A read: the value, every sibling (multipart or JSON), or 404.
async fn get(s: AppState, uri: Uri, headers: HeaderMap) -> Result<Response, ApiError> {
    let key = key_from(&uri)?;
    let [r, pr] = quorum_params(&uri, ["r", "pr"])?;
    let (obj, ring) = match super::call(
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
        _ => return Err(super::wrong_reply("a read")),
    };
    let live: Vec<_> = obj.live().collect();
    if live.iter().any(|s| s.kind == ValueKind::Counter) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "wrong_type",
            "the key holds a counter: read it with GET /counters/{key}",
        ));
    }
    let tombstones = obj.siblings().len() - live.len();
    let context = context_token(&s.codec, &key, &obj);
    // Expired values read as tombstones that still carry their deadline.
    let expired = obj
        .siblings()
        .iter()
        .any(|s| s.is_tombstone() && s.expires.is_some());
    let mut resp = read_response(&live, tombstones, expired, context, wants_json(&headers));
    if let [only] = live.as_slice()
        && let Some(d) = only.expires
    {
        resp.headers_mut()
            .insert(EXPIRES_HEADER, HeaderValue::from(d));
    }
    if tombstones > 0 && !live.is_empty() {
        resp.headers_mut()
            .insert(TOMBSTONES_HEADER, HeaderValue::from(tombstones));
    }
    Ok(with_headers(resp, &s, &key, &obj, ring))
}
