//! `GET /kv?prefix=P&after=K&limit=N`: a page of the keys holding a live value, in key order,
//! from a coverage query over the cluster (`core::node::listing`).
//!
//! Keys are bytes; the answer gives them as UTF-8 strings (a key that is not valid UTF-8 is
//! shown with replacement characters and `"lossy": true`), or, with `encoding=base64`, as
//! base64 - then `prefix` and `after` are base64 too. `next` is the `after` of the next page;
//! `null` when the listing is complete. With `r=N`, each key of the page is read at quorum N
//! and kept only if that read finds a live value (a key deleted on other replicas, not yet on
//! the covering one, is left out; `next` is unchanged, so a page may hold fewer keys).

use super::errors::ApiError;
use super::{AppState, bad_query, call, query_pairs, wrong_reply};
use axum::extract::State;
use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use dynamokv_core::message::{ClientRequest, Reply};

/// Keys per page unless `limit` says otherwise.
pub const DEFAULT_LIMIT: u32 = 1000;

/// How keys are written in the answer, and read from `prefix` and `after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Utf8,
    Base64,
}

/// The listing's query parameters.
struct Query {
    prefix: Vec<u8>,
    after: Option<Vec<u8>>,
    limit: u32,
    encoding: Encoding,
    /// Check each key with a read at this quorum, and keep it only if the read finds a value.
    r: Option<u8>,
}

fn parse(uri: &Uri) -> Result<Query, ApiError> {
    let raw = query_pairs(uri)?;
    let text = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
    let encoding = match raw.iter().find(|(k, _)| k == "encoding") {
        None => Encoding::Utf8,
        Some((_, v)) if v == b"utf-8" || v == b"utf8" => Encoding::Utf8,
        Some((_, v)) if v == b"base64" => Encoding::Base64,
        Some((_, v)) => {
            return Err(bad_query(format!(
                "encoding={} is not known: use utf-8 (the default) or base64",
                text(v)
            )));
        }
    };
    let decode = |name: &str, v: &[u8]| -> Result<Vec<u8>, ApiError> {
        match encoding {
            Encoding::Utf8 => Ok(v.to_vec()),
            Encoding::Base64 => STANDARD
                .decode(v)
                .map_err(|e| bad_query(format!("{name} is not base64: {e}"))),
        }
    };
    let mut q = Query {
        prefix: Vec::new(),
        after: None,
        limit: DEFAULT_LIMIT,
        encoding,
        r: None,
    };
    for (k, v) in &raw {
        match k.as_str() {
            "prefix" => q.prefix = decode("prefix", v)?,
            "after" => q.after = Some(decode("after", v)?),
            "limit" => {
                q.limit = text(v)
                    .parse()
                    .ok()
                    .filter(|l| (1..=dynamokv_core::node::listing::MAX_LIMIT).contains(l))
                    .ok_or_else(|| {
                        bad_query(format!(
                            "limit={} is not allowed: use 1 to {}",
                            text(v),
                            dynamokv_core::node::listing::MAX_LIMIT
                        ))
                    })?;
            }
            "r" => {
                q.r = Some(text(v).parse().map_err(|_| {
                    bad_query(format!("r={} is not a number of replicas", text(v)))
                })?);
            }
            "encoding" => {}
            other => {
                return Err(bad_query(format!(
                    "unknown query parameter {other:?}: a listing takes prefix, after, limit, r and encoding"
                )));
            }
        }
    }
    Ok(q)
}

/// Keeps the keys whose read at quorum `r` finds a live value (side by side, 64 at a time); a
/// read that fails fails the page.
async fn read_through(s: &AppState, keys: Vec<Vec<u8>>, r: u8) -> Result<Vec<Vec<u8>>, ApiError> {
    use futures_util::StreamExt as _;
    let reads = futures_util::stream::iter(keys)
        .map(|key| async move {
            let request = ClientRequest::Get {
                key: key.clone(),
                r: Some(r),
                pr: None,
            };
            match call(s, request).await? {
                (Reply::Read(o), _) => Ok(o.live().next().is_some().then_some(key)),
                _ => Err(wrong_reply("a read")),
            }
        })
        .buffered(64)
        .collect::<Vec<_>>()
        .await;
    let mut kept = Vec::new();
    for read in reads {
        if let Some(key) = read? {
            kept.push(key);
        }
    }
    Ok(kept)
}

/// `GET /kv`: a page of keys.
pub(crate) async fn list(State(s): State<AppState>, uri: Uri) -> Result<Response, ApiError> {
    let started = std::time::Instant::now();
    let result = page(&s, &uri).await;
    let outcome = if result.is_ok() { "ok" } else { "error" };
    crate::metrics::record("http", "list", outcome, started.elapsed());
    result
}

async fn page(s: &AppState, uri: &Uri) -> Result<Response, ApiError> {
    let q = parse(uri)?;
    let request = ClientRequest::List {
        prefix: q.prefix,
        after: q.after,
        limit: q.limit,
        objects: false,
    };
    let (keys, next) = match call(s, request).await? {
        (Reply::Keys { keys, next, .. }, _) => (keys, next),
        _ => return Err(wrong_reply("a listing")),
    };
    let keys = match q.r {
        Some(r) => read_through(s, keys, r).await?,
        None => keys,
    };
    let mut lossy = false;
    let mut show = |k: &[u8]| match q.encoding {
        Encoding::Base64 => STANDARD.encode(k),
        Encoding::Utf8 => match std::str::from_utf8(k) {
            Ok(t) => t.to_owned(),
            Err(_) => {
                lossy = true;
                String::from_utf8_lossy(k).into_owned()
            }
        },
    };
    let shown: Vec<String> = keys.iter().map(|k| show(k)).collect();
    let next = next.as_deref().map(&mut show);
    let mut body = serde_json::json!({
        "keys": shown,
        "count": keys.len(),
        "next": next,
    });
    if lossy {
        body["lossy"] = true.into();
    }
    Ok(axum::Json(body).into_response())
}
