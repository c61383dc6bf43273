//! Errors as the HTTP API answers them: a status and JSON `{"error": code, "message": text}`,
//! plus details for quorum failures.

use super::CONTEXT_HEADER;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use dynamokv_core::message::{OpError, QuorumKind};
use serde::Serialize;

/// An error answer: status, stable code, and a message that says what to do.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    pub(crate) message: String,
    context: Option<String>,
    pub(crate) detail: Option<serde_json::Value>,
}

impl ApiError {
    /// The HTTP status it is answered with.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The machine-readable code (`bad_key`, `bad_query`...).
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// The message saying what to do.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// An error answered with `status`, machine-readable `code` and a `message` saying what to
    /// do.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            context: None,
            detail: None,
        }
    }

    /// The same error, answered with `X-Context: ctx` (the key's current version).
    pub fn with_context(mut self, ctx: Option<String>) -> Self {
        self.context = ctx;
        self
    }

    /// A 400 `bad_key`.
    pub fn bad_key(message: impl Into<String>) -> Self {
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
            OpError::ListingIncomplete { .. } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "listing_incomplete",
                message,
            ),
            OpError::CoordinatorUnreachable { .. } | OpError::NoRing => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "coordinator_unreachable",
                message,
            ),
            OpError::ObjectTooLarge { .. } => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "object_too_large", message)
            }
            OpError::TooManySiblings { .. } => {
                ApiError::new(StatusCode::CONFLICT, "too_many_siblings", message)
            }
            OpError::WrongType(_) => ApiError::new(StatusCode::CONFLICT, "wrong_type", message),
            // `http::call` adds the X-Context of what the read found.
            OpError::PreconditionFailed { .. } => ApiError::new(
                StatusCode::PRECONDITION_FAILED,
                "precondition_failed",
                message,
            ),
            OpError::Overflow => ApiError::new(StatusCode::CONFLICT, "overflow", message),
            OpError::NotAMember(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_a_member", message)
            }
            OpError::InsufficientStorage { .. } => ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "insufficient_storage",
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
