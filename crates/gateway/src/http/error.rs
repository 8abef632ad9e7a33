//! The API's one error type: a status code and a message, rendered as `{"error": message}`.
//! Handlers return `Result<_, ApiError>` and use `?`; what the caller may read is decided where
//! the error is made (never an internal detail: those go to the log).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, message)
    }

    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    /// The audit log could not record what the call would do or show: it does nothing.
    pub fn audit_unwritable() -> ApiError {
        ApiError::unavailable("the audit log cannot be written")
    }

    /// The log could not be read (the cause is in the gateway's own log, not the answer).
    pub fn audit_unreadable() -> ApiError {
        ApiError::internal("cannot read the audit log")
    }
}

impl From<crate::approvals::DecideError> for ApiError {
    fn from(e: crate::approvals::DecideError) -> ApiError {
        use crate::approvals::DecideError as E;
        let status = match e {
            E::NotFound(_) => StatusCode::NOT_FOUND,
            E::OwnStatement(_) | E::WrongRole { .. } | E::BreakGlassRefused => {
                StatusCode::FORBIDDEN
            }
            E::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
            E::NotPending { .. } | E::AlreadyApproved(_) => StatusCode::CONFLICT,
        };
        ApiError::new(status, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(serde_json::json!({ "error": self.message }));
        (self.status, body).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::approvals::{DecideError, Status};

    async fn rendered(e: ApiError) -> (StatusCode, serde_json::Value) {
        let response = e.into_response();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .expect("body");
        (status, serde_json::from_slice(&body).expect("JSON"))
    }

    #[tokio::test]
    async fn errors_render_as_before() {
        let (code, body) = rendered(ApiError::not_found("no review r-1")).await;
        assert_eq!(code, StatusCode::NOT_FOUND);
        assert_eq!(body, serde_json::json!({"error": "no review r-1"}));
        let cases = [
            (DecideError::NotFound("r-1".into()), StatusCode::NOT_FOUND),
            (
                DecideError::OwnStatement("ann".into()),
                StatusCode::FORBIDDEN,
            ),
            (DecideError::BreakGlassRefused, StatusCode::FORBIDDEN),
            (
                DecideError::NotPending {
                    id: "r-1".into(),
                    status: Status::Denied,
                },
                StatusCode::CONFLICT,
            ),
            (
                DecideError::AlreadyApproved("ann".into()),
                StatusCode::CONFLICT,
            ),
        ];
        for (e, want) in cases {
            let message = e.to_string();
            let (code, body) = rendered(e.into()).await;
            assert_eq!(code, want, "{message}");
            assert_eq!(body["error"], message.as_str());
        }
        let (_, body) = rendered(
            DecideError::NotPending {
                id: "r-1".into(),
                status: Status::Denied,
            }
            .into(),
        )
        .await;
        assert_eq!(body["error"], "review r-1 is already denied");
    }
}
