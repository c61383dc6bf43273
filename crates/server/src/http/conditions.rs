//! Conditional writes over HTTP: `If-None-Match: *` (write only if the key has no live value),
//! `If-Match: *` (only if it has one) and `If-Match: <context>` (only if the key's version is
//! still the one that context names). The node that takes the write checks the condition
//! against a read at R, then writes with that read's context; a failed condition answers `412
//! precondition_failed` with the current `X-Context`.
//!
//! Not linearizable: in a leaderless store two writers whose conditions both pass through
//! different nodes (or at the same moment) both write, and their values become siblings, which
//! the next read shows and a write with its context reconciles. `If-Modified-Since`,
//! `If-Unmodified-Since` and `If-Range` are refused by name (there are no modification times;
//! a context names a version exactly).

use super::CONTEXT_HEADER;
use super::errors::ApiError;
use axum::http::{HeaderMap, StatusCode};
use dynamokv_core::ContextCodec;
use dynamokv_core::message::Condition;

fn refused(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "unsupported_condition", message)
}

/// The condition `headers` put on a write of `key`, if any; unsupported conditional headers,
/// and a condition beside an `X-Context`, are refused.
pub fn condition(
    codec: &ContextCodec,
    key: &[u8],
    headers: &HeaderMap,
) -> Result<Option<Condition>, ApiError> {
    for name in ["if-modified-since", "if-unmodified-since", "if-range"] {
        if headers.contains_key(name) {
            return Err(refused(format!(
                "{name} is not supported: dynamokv keeps no modification times; use If-Match with the X-Context of a read (or If-None-Match: *)"
            )));
        }
    }
    let text = |name: &str| -> Result<Option<String>, ApiError> {
        headers
            .get(name)
            .map(|v| {
                v.to_str()
                    .map(|s| s.trim().to_owned())
                    .map_err(|_| refused(format!("{name} is not ASCII")))
            })
            .transpose()
    };
    let cond = match (text("if-none-match")?, text("if-match")?) {
        (Some(_), Some(_)) => {
            return Err(refused("give If-Match or If-None-Match, not both"));
        }
        (Some(v), None) if v == "*" => Condition::Absent,
        (Some(v), None) => {
            return Err(refused(format!(
                "If-None-Match: {v} is not supported: only If-None-Match: * (write only if the key has no value)"
            )));
        }
        (None, Some(v)) if v == "*" => Condition::Present,
        (None, Some(v)) => {
            let token = v.trim_matches('"');
            Condition::Version(codec.decode(key, token).map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_context",
                    format!("If-Match: {e}"),
                )
            })?)
        }
        (None, None) => return Ok(None),
    };
    if headers.contains_key(CONTEXT_HEADER) {
        return Err(refused(
            "a conditional write takes its context from the condition: drop X-Context (If-Match carries it)",
        ));
    }
    Ok(Some(cond))
}
