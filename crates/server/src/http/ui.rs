//! The cluster page: `GET /` (and `/ui`) serves one HTML page whose script and style are
//! embedded in the binary (`/ui/app.js`, `/ui/style.css`; no CDN, no other fetch than this
//! node's own endpoints). The page polls `/admin/ring` and `/admin/stats` once a second and
//! draws the ring, the members, background work and traffic; its key form uses `/kv/{key}`
//! and `/admin/preference-list/{key}`. `GET /admin/views` asks every member for its own view
//! of the members, for the page's "ask every node" table.

use super::errors::ApiError;
use super::{AppState, query};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use std::time::Duration;

const INDEX: &str = include_str!("ui/index.html");
const APP: &str = include_str!("ui/app.js");
const STYLE: &str = include_str!("ui/style.css");

/// The page may load only what this node serves.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                   connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

pub(crate) async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX)
}

pub(crate) async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP)
}

pub(crate) async fn style_css() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

/// How long a member gets to answer `/admin/views`.
const VIEW_TIMEOUT: Duration = Duration::from_secs(1);

/// `GET /admin/views`: every member's own view of the members (id, status, up), asked over
/// HTTP at once; a member that does not answer within a second is listed with the error.
pub(crate) async fn views(
    State(s): State<AppState>,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    // The caller's token, passed on: every node of a cluster is given the same tokens.
    let authorization = headers.get(header::AUTHORIZATION).cloned();
    let members = query(&s, |n| {
        n.members()
            .values()
            .filter(|m| m.status != dynamokv_core::membership::Status::Left)
            .map(|m| (m.id.clone(), m.http_addr.clone()))
            .collect::<Vec<_>>()
    })
    .await?;
    let scheme = if s.tls.is_some() { "https" } else { "http" };
    let client = match &s.tls {
        Some(tls) => tls.http_client(VIEW_TIMEOUT),
        None => reqwest::Client::builder().timeout(VIEW_TIMEOUT).build(),
    }
    .map_err(|e| {
        ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            e.to_string(),
        )
    })?;
    let asks = members.into_iter().map(|(id, addr)| {
        let client = client.clone();
        let authorization = authorization.clone();
        async move {
            let url = format!("{scheme}://{addr}/admin/ring");
            let answer = async {
                let mut ask = client.get(&url);
                if let Some(a) = authorization {
                    ask = ask.header(header::AUTHORIZATION, a);
                }
                let r = ask.send().await?.error_for_status()?;
                r.json::<dynamokv_core::node::RingInfo>().await
            };
            match answer.await {
                Ok(info) => serde_json::json!({
                    "node": id,
                    "members": info.members.iter().map(|m| serde_json::json!({
                        "id": m.member.id,
                        "status": m.member.status.as_str(),
                        "up": m.up,
                    })).collect::<Vec<_>>(),
                }),
                Err(e) => serde_json::json!({
                    "node": id,
                    "error": format!("no answer from {addr}: {e}"),
                }),
            }
        }
    });
    let views = futures_util::future::join_all(asks).await;
    Ok(axum::Json(serde_json::json!({ "node": s.node_id, "views": views })).into_response())
}
