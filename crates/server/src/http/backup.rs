//! Backup and restore over HTTP: `GET /admin/backup` reads a page of live objects (a listing
//! with objects, from the replica covering each range), `POST /admin/restore` merges a batch of
//! objects into their replicas (`ClientRequest::Restore`: the one merge, W acknowledgements).
//! Both bodies are postcard ([`BackupPage`], [`RestoreBatch`]); `dynamokv admin backup` and
//! `restore` speak them and own the file format.

use super::errors::ApiError;
use super::{AppState, bad_query, call, query_pairs, wrong_reply};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use dynamokv_core::Object;
use dynamokv_core::message::{ClientRequest, Reply};
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};

/// A page of a backup: live objects in key order, and where the next page starts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BackupPage {
    /// `(key, object)`, in key order.
    pub entries: Vec<(Vec<u8>, Object)>,
    /// Pass as `after` (base64) for the next page; `None`: the backup is complete.
    pub next: Option<Vec<u8>>,
}

/// A batch of a restore: `(key, object)` to merge in.
pub type RestoreBatch = Vec<(Vec<u8>, Object)>;

/// Largest restore body, bytes.
pub const MAX_RESTORE_BYTES: usize = 64 << 20;

/// Restores run side by side per batch.
const RESTORE_CONCURRENCY: usize = 64;

/// `GET /admin/backup?after=B64&limit=N`: one page, postcard [`BackupPage`].
pub(crate) async fn backup_page(State(s): State<AppState>, uri: Uri) -> Result<Response, ApiError> {
    let (mut after, mut limit) = (None, 1000u32);
    for (k, v) in query_pairs(&uri)? {
        match k.as_str() {
            "after" => {
                after = Some(
                    STANDARD
                        .decode(&v)
                        .map_err(|e| bad_query(format!("after is not base64: {e}")))?,
                );
            }
            "limit" => {
                limit = std::str::from_utf8(&v)
                    .ok()
                    .and_then(|l| l.parse().ok())
                    .filter(|l| (1..=dynamokv_core::node::listing::MAX_LIMIT).contains(l))
                    .ok_or_else(|| bad_query("limit must be 1 to 10000"))?;
            }
            other => {
                return Err(bad_query(format!(
                    "unknown query parameter {other:?}: a backup page takes after and limit"
                )));
            }
        }
    }
    let request = ClientRequest::List {
        prefix: Vec::new(),
        after,
        limit,
        objects: true,
    };
    let page = match call(&s, request).await? {
        (
            Reply::Keys {
                keys,
                objects,
                next,
            },
            _,
        ) if keys.len() == objects.len() => BackupPage {
            entries: keys.into_iter().zip(objects).collect(),
            next,
        },
        _ => return Err(wrong_reply("a backup page")),
    };
    let body = postcard::to_allocvec(&page).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            e.to_string(),
        )
    })?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response())
}

/// What a restore batch did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RestoreOutcome {
    /// Objects merged into W replicas.
    pub restored: u64,
    /// Objects that failed.
    pub failed: u64,
    /// The first failures: key (lossy) and why.
    pub errors: Vec<(String, String)>,
}

/// `POST /admin/restore` with a postcard [`RestoreBatch`]: each object merged into its key's
/// replicas; JSON [`RestoreOutcome`].
pub(crate) async fn restore_batch(
    State(s): State<AppState>,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes: Bytes = axum::body::to_bytes(body, MAX_RESTORE_BYTES)
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "batch_too_large",
                format!("a restore batch is at most {MAX_RESTORE_BYTES} bytes: {e}"),
            )
        })?;
    let batch: RestoreBatch = postcard::from_bytes(&bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_batch",
            format!("the body is not a restore batch: {e}"),
        )
    })?;
    let results = futures_util::stream::iter(batch)
        .map(|(key, object)| {
            let s = &s;
            async move {
                let shown = String::from_utf8_lossy(&key).into_owned();
                if let Err(e) = dynamokv_core::limits::check_key(&key) {
                    return Err((shown, e.to_string()));
                }
                let request = ClientRequest::Restore {
                    key,
                    object,
                    w: None,
                };
                call(s, request)
                    .await
                    .map(|_| ())
                    .map_err(|e| (shown, e.message().to_owned()))
            }
        })
        .buffer_unordered(RESTORE_CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    let mut outcome = RestoreOutcome::default();
    for r in results {
        match r {
            Ok(()) => outcome.restored += 1,
            Err(e) => {
                outcome.failed += 1;
                if outcome.errors.len() < 10 {
                    outcome.errors.push(e);
                }
            }
        }
    }
    Ok(axum::Json(outcome).into_response())
}
