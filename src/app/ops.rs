//! The operators' actions on one entity (pause, resume, freeze, unfreeze, retry and cancel a call) for the ops API
//! and the console alike: the same checks, the same journal entry, and the audit row the engine commits with the
//! action itself (`engine::audit`).

use serde::Serialize;
use utoipa::ToSchema;

use super::{App, AppError, Kind};
use crate::domain::organization::OrganizationEvent;
use crate::engine::audit::{ActionResult, Audit, AuditEntry};
use crate::engine::{services, CallAction, Cause, EntityKey, Event, Input, Route, Status};

/// An action an operator may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Pause,
    Resume,
    /// Organizations only.
    Freeze,
    /// Organizations only.
    Unfreeze,
    /// An external call of the entity, now (a fresh budget of attempts).
    Retry,
    /// An external call of the entity, given up: the workflow receives it as failed.
    Cancel,
}

impl Action {
    pub fn parse(s: &str, kind: &str) -> Result<Self, AppError> {
        let org = kind == crate::domain::organization::KIND;
        Ok(match s {
            "pause" => Action::Pause,
            "resume" => Action::Resume,
            "freeze" if org => Action::Freeze,
            "unfreeze" if org => Action::Unfreeze,
            "retry" => Action::Retry,
            "cancel" => Action::Cancel,
            _ => {
                return Err(AppError::invalid(
                    "unknown_action",
                    format!("`{s}` is not an action for a {kind} (retry, cancel, pause, resume; freeze, unfreeze for organizations)"),
                ))
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Freeze => "freeze",
            Action::Unfreeze => "unfreeze",
            Action::Retry => "retry",
            Action::Cancel => "cancel",
        }
    }
}

/// What an action did.
#[derive(Debug, Serialize, ToSchema)]
pub struct ActionDone {
    /// `kind/id`.
    pub entity: String,
    pub action: String,
    pub result: ActionResult,
}

/// The reason an operator gives, as the audit trail keeps it: 1 to 500 characters once trimmed.
pub fn reason(raw: Option<String>) -> Result<String, AppError> {
    let reason = raw.unwrap_or_default().trim().to_string();
    if reason.is_empty() || reason.chars().count() > 500 {
        return Err(AppError::invalid("reason_required", "give a reason (1 to 500 characters) for the audit trail"));
    }
    Ok(reason)
}

impl App {
    /// An action by `operator` on the entity `key` (an existing one: asked first), with the operator's reason; `call_id` narrows a retry or a
    /// cancel to one call. Nothing is changed and nothing audited when it is refused.
    pub async fn act(
        &self,
        operator: &str,
        key: &EntityKey,
        action: &str,
        reason: String,
        call_id: Option<String>,
    ) -> Result<ActionDone, AppError> {
        if self.engine.record(key).await?.is_none() {
            return Err(AppError::not_found(format!("no {} `{}`", key.kind, key.id)));
        }
        let action = Action::parse(action, &key.kind)?;
        let audit = Audit {
            operator: operator.to_string(),
            reason: reason.clone(),
            action: action.as_str().into(),
            call: None,
        };
        let cause = Cause::Operator { operator: operator.to_string(), reason: reason.clone() };
        let input_id = format!("op:{}:{}", action.as_str(), uuid::Uuid::new_v4());
        let result = match action {
            Action::Pause | Action::Resume => {
                let input = Input {
                    id: input_id,
                    event: Event::Control { action: action.as_str().into() },
                    cause,
                    request_id: None,
                };
                ActionResult::of(&self.engine.send_audited(key.clone(), input, audit).await?)
            }
            Action::Freeze | Action::Unfreeze => {
                let event = match action {
                    Action::Freeze => OrganizationEvent::Freeze { reason: reason.clone() },
                    _ => OrganizationEvent::Unfreeze { reason: reason.clone() },
                };
                let body = serde_json::to_value(event).map_err(AppError::internal)?;
                let o = self.engine.send_audited(key.clone(), Input::domain(input_id, body, cause), audit).await?;
                if o.status == Status::Ignored {
                    return Err(AppError::new(
                        Kind::Conflict,
                        "not_applicable",
                        format!("`{}` does not apply to an organization in state `{}`", action.as_str(), o.state),
                    ));
                }
                ActionResult::of(&o)
            }
            Action::Retry | Action::Cancel => {
                let (_, calls) = services::pending_effects(&self.engine, key).await?;
                let chosen: Vec<_> = match &call_id {
                    Some(c) => calls.into_iter().filter(|r| &r.id == c).collect(),
                    None => calls,
                };
                if chosen.is_empty() {
                    return Err(AppError::not_found("no pending external call to act on"));
                }
                let mut done = vec![];
                for c in chosen {
                    let what = if action == Action::Retry { CallAction::Retry } else { CallAction::Cancel };
                    self.engine.act_on_call(&c.id, what, &audit, Route::Owner).await?;
                    done.push(c.id);
                }
                ActionResult { calls: Some(done), ..Default::default() }
            }
        };
        Ok(ActionDone { entity: key.to_string(), action: action.as_str().into(), result })
    }

    /// The newest `limit` operator actions.
    pub async fn audit_trail(&self, limit: usize) -> Result<Vec<AuditEntry>, AppError> {
        Ok(self.engine.audit_trail(limit).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freeze_is_an_action_of_organizations_only() {
        assert_eq!(Action::parse("freeze", "organization").unwrap(), Action::Freeze);
        assert_eq!(Action::parse("freeze", "subscription").unwrap_err().code, "unknown_action");
        assert_eq!(Action::parse("retry", "metering").unwrap(), Action::Retry);
    }

    #[test]
    fn a_reason_is_required_and_bounded() {
        assert_eq!(reason(Some("  ".into())).unwrap_err().code, "reason_required");
        assert_eq!(reason(None).unwrap_err().code, "reason_required");
        assert!(reason(Some("x".repeat(501))).is_err());
        assert_eq!(reason(Some(" why ".into())).unwrap(), "why");
    }
}
