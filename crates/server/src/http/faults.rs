//! Fault injection for tests: `GET`, `POST` and `DELETE /admin/faults`, refused unless the node
//! was started with `--enable-fault-injection`.

use super::AppState;
use super::errors::ApiError;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

fn faults_disabled() -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "fault_injection_disabled",
        "fault injection is off on this node; start it with --enable-fault-injection (test clusters only)",
    )
}

pub(crate) async fn get_faults(State(s): State<AppState>) -> Result<Response, ApiError> {
    if !s.fault_injection {
        return Err(faults_disabled());
    }
    Ok(axum::Json(s.transport.faults()).into_response())
}

pub(crate) async fn set_faults(
    State(s): State<AppState>,
    body: Body,
) -> Result<Response, ApiError> {
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
            format!("expected {{\"drop_to\": [ids], \"drop_from\": [ids], \"delay_ms\": n, \"storage_delay_ms\": n}}: {e}"),
        )
    })?;
    tracing::warn!(?rules, "fault injection rules set");
    s.transport.set_faults(rules.clone());
    s.store.set_fault_delay(rules.storage_delay_ms);
    Ok(axum::Json(rules).into_response())
}

pub(crate) async fn clear_faults(State(s): State<AppState>) -> Result<Response, ApiError> {
    if !s.fault_injection {
        return Err(faults_disabled());
    }
    s.transport.set_faults(Default::default());
    s.store.set_fault_delay(0);
    tracing::warn!("fault injection rules cleared");
    Ok(StatusCode::NO_CONTENT.into_response())
}
