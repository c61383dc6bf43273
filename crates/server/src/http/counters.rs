//! Counters over HTTP: `POST /counters/{key}?by=N` adds `N` (default 1, negative to subtract)
//! to the convergent counter at `key` through any node and answers its new value;
//! `GET /counters/{key}` reads it (404 when the key holds nothing). Both answer
//! `{"key": ..., "value": N}`. A key holding another kind of value is refused (409
//! `wrong_type`), and a plain `PUT /kv/{key}` of a counter key too; `DELETE /kv/{key}`
//! deletes either kind.

use super::errors::ApiError;
use super::kv::quorum_from;
use super::{AppState, RING_VERSION_HEADER, bad_query, key_after};
use crate::node::now_ms;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use dynamokv_core::Object;
use dynamokv_core::counter::PnCounter;
use dynamokv_core::message::{ClientRequest, Reply};

/// The answer: the key and the counter's value, with the ring version.
fn answer(key: &[u8], object: &Object, ring: u64) -> Result<Response, ApiError> {
    let counter = PnCounter::of(object, now_ms()).map_err(|_| {
        ApiError::new(
            StatusCode::CONFLICT,
            "wrong_type",
            "the key holds a value that is not a counter: read it with GET /kv/{key}",
        )
    })?;
    let body = serde_json::json!({
        "key": String::from_utf8_lossy(key),
        "value": counter.value(),
    });
    let mut resp = (StatusCode::OK, axum::Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("{ring:016x}")) {
        resp.headers_mut().insert(RING_VERSION_HEADER, v);
    }
    Ok(resp)
}

/// `POST /counters/{key}?by=N&w=&pw=`.
pub(crate) async fn increment(State(s): State<AppState>, uri: Uri) -> Result<Response, ApiError> {
    let key = key_after(&uri, "/counters/")?;
    let mut pairs = super::query_pairs(&uri)?;
    let mut by = None;
    pairs.retain(|(k, v)| {
        if k == "by" {
            by = Some(v.clone());
        }
        k != "by"
    });
    let by = match by {
        None => 1,
        Some(v) => std::str::from_utf8(&v)
            .ok()
            .and_then(|t| t.parse::<i64>().ok())
            .ok_or_else(|| bad_query("by is a whole number (by=5, by=-2)"))?,
    };
    let [w, pw] = quorum_from(pairs, ["w", "pw"])?;
    let request = ClientRequest::Increment {
        key: key.clone(),
        by,
        w,
        pw,
    };
    match super::call(&s, request).await? {
        (Reply::Written { object, .. }, ring) => answer(&key, &object, ring),
        _ => Err(super::wrong_reply("an increment")),
    }
}

/// `GET /counters/{key}?r=&pr=`.
pub(crate) async fn read(State(s): State<AppState>, uri: Uri) -> Result<Response, ApiError> {
    let key = key_after(&uri, "/counters/")?;
    let [r, pr] = quorum_from(super::query_pairs(&uri)?, ["r", "pr"])?;
    let request = ClientRequest::Get {
        key: key.clone(),
        r,
        pr,
    };
    match super::call(&s, request).await? {
        (Reply::Read(object), _) if object.live().next().is_none() => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no counter is stored under this key",
        )),
        (Reply::Read(object), ring) => answer(&key, &object, ring),
        _ => Err(super::wrong_reply("a read")),
    }
}
