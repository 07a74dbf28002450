//! The one error of every use case: a kind (what the caller can do about it) and a stable code (what it branches
//! on). The JSON API maps the kind to a status in one place (`http::error`); the pages and the console render the
//! same value. Cause chains go to the log here, where an error becomes an `AppError`, never to a client.

use std::borrow::Cow;

/// What the caller can do about a refusal; each adapter renders a kind the same way everywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The input is malformed (a bad id, a missing reason): fix it and send it again.
    Invalid,
    /// Not logged in, or the credentials are wrong.
    Unauthenticated,
    /// Logged in, but the caller's role or state does not allow it.
    Forbidden,
    /// No such thing, or not the caller's to see (the two read alike, so that ids cannot be probed).
    NotFound,
    /// The thing exists but its state refuses the request (already bound, last owner, paused).
    Conflict,
    /// A workflow refused the input for a reason of its own (`invalid_input`, `subscription_not_active`).
    Refused,
    /// Too many requests; `retry_after` says when to come back.
    RateLimited,
    /// The service cannot answer now (storage, overload, shutting down, no mail server): try again later.
    Unavailable,
    /// A defect of the service; the detail is in the log.
    Internal,
}

/// A use case's refusal. Nothing was changed when a use case answers one (the use cases check before they act).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct AppError {
    pub kind: Kind,
    /// Stable, machine-readable: clients and tests branch on it.
    pub code: Cow<'static, str>,
    /// For people; may change.
    pub message: String,
    /// Seconds to wait before trying again (rate limits, overload).
    pub retry_after: Option<u32>,
}

impl AppError {
    pub fn new(kind: Kind, code: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Self { kind, code: code.into(), message: message.into(), retry_after: None }
    }

    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(Kind::Invalid, code, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(Kind::NotFound, "not_found", message)
    }

    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(Kind::Forbidden, code, message)
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(Kind::Conflict, code, message)
    }

    /// `429 rate_limited`: nothing was done.
    pub fn rate_limited(retry_after: u32) -> Self {
        let mut e =
            Self::new(Kind::RateLimited, "rate_limited", format!("too many requests; try again in {retry_after} s"));
        e.retry_after = Some(retry_after);
        e
    }

    /// The store could not answer; the detail goes to the log only.
    pub fn storage(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "storage failed");
        Self::new(Kind::Unavailable, "storage_unavailable", "try again shortly")
    }

    /// A defect (a record that does not decode, a reply of the wrong shape); the detail goes to the log only.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        crate::engine::Error::Internal(detail.to_string()).into()
    }

    /// A workflow's refusal of an input: one table of the refusal codes the workflows answer to the kind a caller
    /// sees (`default` names an outcome that carries no code).
    pub fn refused(outcome: &crate::engine::Outcome, default: &'static str) -> Self {
        let code: Cow<'static, str> = match &outcome.code {
            Some(c) => Cow::Owned(c.clone()),
            None => Cow::Borrowed(default),
        };
        let kind = match code.as_ref() {
            "insufficient_permission" | "invitation_for_another_user" | "email_unverified" => Kind::Forbidden,
            "invitation_not_found" => Kind::NotFound,
            "already_member"
            | "invitation_expired"
            | "too_many_members"
            | "last_owner"
            | "subscription_already_bound"
            | "org_already_bound" => Kind::Conflict,
            _ => Kind::Refused,
        };
        Self::new(kind, code, outcome.message.clone().unwrap_or_default())
    }
}

impl From<crate::engine::Error> for AppError {
    fn from(e: crate::engine::Error) -> Self {
        use crate::engine::Error as E;
        let kind = match &e {
            E::Overloaded | E::Stopped | E::Storage(_) | E::NotOwner(_) => Kind::Unavailable,
            E::Paused | E::Conflict => Kind::Conflict,
            E::UnknownKind(_) | E::NotFound => Kind::NotFound,
            E::InvalidInput(_) => Kind::Refused,
            E::DefinitionMismatch(_) | E::Panicked(_) | E::Internal(_) => Kind::Internal,
        };
        let message = match &e {
            // Internal detail goes to the log only.
            E::Storage(_) | E::Panicked(_) | E::Internal(_) => {
                tracing::error!(error = %e, "request failed");
                "the service could not complete the request".to_string()
            }
            other => other.to_string(),
        };
        let mut err = AppError::new(kind, e.code(), message);
        if e.is_transient() || matches!(e, E::Stopped) {
            err.retry_after = Some(1);
        }
        err
    }
}

impl From<crate::domain::ids::Invalid> for AppError {
    fn from(e: crate::domain::ids::Invalid) -> Self {
        AppError::new(Kind::Invalid, e.code, e.to_string())
    }
}

impl From<crate::app::accounts::Error> for AppError {
    fn from(e: crate::app::accounts::Error) -> Self {
        use crate::app::accounts::Error as E;
        let kind = match &e {
            E::EmailTaken | E::AlreadyVerified => Kind::Conflict,
            E::InvalidCredentials | E::Unauthenticated => Kind::Unauthenticated,
            E::EmailUnverified => Kind::Forbidden,
            E::InvalidVerification => Kind::Invalid,
            E::MailUnavailable | E::Busy => Kind::Unavailable,
            E::RateLimited { .. } | E::Engine(_) | E::Storage(_) => Kind::Internal,
        };
        match e {
            E::RateLimited { retry_after } => AppError::rate_limited(retry_after),
            E::Engine(inner) => inner.into(),
            E::Storage(detail) => AppError::storage(detail),
            E::Busy => {
                let mut err = AppError::new(kind, e.code(), e.to_string());
                err.retry_after = Some(1);
                err
            }
            e => AppError::new(kind, e.code(), e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_code_names_its_kind_once() {
        let outcome = |code: Option<&str>| crate::engine::Outcome {
            status: crate::engine::Status::Rejected,
            code: code.map(String::from),
            message: None,
            state: "active".into(),
            reply: serde_json::Value::Null,
            repeated: false,
        };
        let refused = |code: &str| outcome(Some(code));
        assert_eq!(AppError::refused(&refused("last_owner"), "x").kind, Kind::Conflict);
        assert_eq!(AppError::refused(&refused("insufficient_permission"), "x").kind, Kind::Forbidden);
        assert_eq!(AppError::refused(&refused("invitation_not_found"), "x").kind, Kind::NotFound);
        assert_eq!(AppError::refused(&refused("invalid_input"), "x").kind, Kind::Refused);
        let none = outcome(None);
        assert_eq!(AppError::refused(&none, "rejected").code, "rejected");
    }

    #[test]
    fn storage_detail_stays_in_the_log() {
        let e: AppError = crate::engine::Error::Storage("disk /dev/sda1 on fire".into()).into();
        assert_eq!((e.kind, e.code.as_ref()), (Kind::Unavailable, "storage_unavailable"));
        assert!(!e.message.contains("sda1"));
    }
}
