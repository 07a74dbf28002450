//! What needs a person, for the ops API, `ctl`, the console and `/metrics` alike: every cause with what it covers,
//! its next step and how many concerns it holds now; and an operator's dismissal of one concern, audited.

use serde::Serialize;
use utoipa::ToSchema;

use super::{App, AppError};
use crate::engine::attention::AttentionRow;
use crate::engine::audit::Audit;
use crate::engine::EntityKey;

/// A cause of attention and how many concerns it holds now.
#[derive(Debug, Serialize, ToSchema)]
pub struct CauseCount {
    pub cause: String,
    /// What it covers, in words.
    pub covers: String,
    /// What a person does about it.
    pub next_step: String,
    pub count: u64,
}

/// Every cause, and the oldest concerns.
#[derive(Debug, Serialize, ToSchema)]
pub struct AttentionSummary {
    pub causes: Vec<CauseCount>,
    /// Concerns of the cause asked for (or of every cause), at most `limit`.
    pub items: Vec<AttentionRow>,
}

/// A cause the engine knows, parsed at the edge (a list filter, a dismissal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CauseName(&'static str);

impl CauseName {
    pub fn as_str(&self) -> &'static str {
        self.0
    }
}

impl App {
    /// A cause by its code, or `unknown_cause` naming the known ones.
    pub fn cause(&self, raw: &str) -> Result<CauseName, AppError> {
        let causes = self.engine.attention_causes();
        causes.iter().find(|c| c.name == raw).map(|c| CauseName(c.name)).ok_or_else(|| {
            let known: Vec<&str> = causes.iter().map(|c| c.name).collect();
            AppError::invalid("unknown_cause", format!("no cause `{raw}`: one of {}", known.join(", ")))
        })
    }

    /// Every cause with its count now, and up to `limit` concerns (of `cause`, or every cause).
    pub async fn attention(&self, cause: Option<&CauseName>, limit: usize) -> Result<AttentionSummary, AppError> {
        let counts = self.engine.attention_counts().await?;
        let causes = self
            .engine
            .attention_causes()
            .into_iter()
            .map(|c| CauseCount {
                cause: c.name.to_string(),
                covers: c.covers.to_string(),
                next_step: c.next_step.to_string(),
                count: counts.iter().find(|(n, _)| *n == c.name).map(|(_, n)| *n).unwrap_or(0),
            })
            .collect();
        let items = self.engine.attention_rows(cause.map(CauseName::as_str), limit).await?;
        Ok(AttentionSummary { causes, items })
    }

    /// `operator` dismisses a concern of `key` (it is gone until it arises again), with a reason for the audit trail.
    pub async fn dismiss_attention(
        &self,
        operator: &str,
        key: &EntityKey,
        cause: &CauseName,
        subject: &str,
        reason: String,
    ) -> Result<(), AppError> {
        let audit =
            Audit { operator: operator.to_string(), reason, action: format!("dismiss:{}", cause.as_str()), call: None };
        self.engine.dismiss_attention(key, cause.as_str(), subject, &audit).await.map_err(|e| match e {
            crate::engine::Error::NotFound => AppError::not_found(format!(
                "{key} has no concern `{}` about `{subject}` (settled, or dismissed already)",
                cause.as_str()
            )),
            e => e.into(),
        })
    }
}
