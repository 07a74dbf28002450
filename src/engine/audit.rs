//! The operators' audit trail: who did what to which entity, and why. The engine writes an action's row in the
//! very commit that carries the action out (the entity's transition, or the call row of a retry), so that a crash
//! can lose neither without the other; a refused action commits nothing and leaves no row.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::records::{RecordTable, Writes};
use super::{EntityKey, Error, Outcome, Status};
use crate::store::Batch;

/// `operator-audit/{time}-{sequence}-{random}`: the operators' actions, service-wide, in time order.
const AUDIT: RecordTable<AuditEntry> = RecordTable::records("operator-audit/");
/// `audit/{bytes}`: the trail as the first builds wrote it (the same numbers as big-endian bytes, whose first byte
/// sorts after every digit): read after the new rows, which are all newer.
const LEGACY_AUDIT: RecordTable<AuditEntry> = RecordTable::records("audit/");

/// An operator's action to audit with the commit that performs it (sent along when the action is forwarded to the
/// node that holds the entity).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Audit {
    pub operator: String,
    /// 1 to 500 characters; checked by the use case before anything is sent.
    pub reason: String,
    /// `pause`, `resume`, `freeze`, `unfreeze`, `retry`, `cancel`.
    pub action: String,
    /// The external call a `retry` or `cancel` acts on: the row then records that call instead of the state.
    pub call: Option<String>,
}

/// One operator action.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditEntry {
    pub at: DateTime<Utc>,
    pub operator: String,
    /// `kind/id`.
    pub entity: String,
    pub action: String,
    pub reason: String,
    /// As the action answered (see `ActionResult`).
    pub result: Value,
}

/// The result of an action: `status` and `state` for pause, resume, freeze and unfreeze (`paused` for the first
/// two), `calls` for retry and cancel.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ActionResult {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
    /// The calls retried or cancelled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calls: Option<Vec<String>>,
}

impl ActionResult {
    /// What an input's outcome says of an action on the entity (`paused` is the pause and resume controls' reply).
    pub fn of(outcome: &Outcome) -> Self {
        Self {
            status: Some(outcome.status),
            state: Some(outcome.state.clone()),
            paused: outcome.reply.get("paused").and_then(Value::as_bool),
            calls: None,
        }
    }
}

impl Audit {
    /// Puts the action's row into `batch`: the commit that performs the action.
    pub(crate) fn put(&self, batch: &mut Batch, entity: &EntityKey, now: DateTime<Utc>, result: &ActionResult) {
        // Time, then a process-wide sequence (actions at one instant keep their order), then randomness; zero-padded
        // decimals, so that the keys sort by time.
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let random = u32::from_be_bytes(uuid::Uuid::new_v4().as_bytes()[..4].try_into().unwrap_or_default());
        let key = format!("{:020}-{seq:020}-{random:08x}", now.timestamp_micros().max(0));
        let result = match &self.call {
            Some(call) => ActionResult { calls: Some(vec![call.clone()]), ..Default::default() },
            None => result.clone(),
        };
        let entry = AuditEntry {
            at: now,
            operator: self.operator.clone(),
            entity: entity.to_string(),
            action: self.action.clone(),
            reason: self.reason.clone(),
            result: serde_json::to_value(&result).unwrap_or(Value::Null),
        };
        let mut w = Writes::new();
        match AUDIT.put(&mut w, &[&key], &entry) {
            Ok(()) => batch.extend(w.into_batch()),
            Err(e) => tracing::error!(error = %e, "an audit row could not be written"),
        }
        tracing::info!(operator = %self.operator, entity = %entity, action = %self.action, "operator action");
    }
}

/// The audit trail's retention: entries older than `keep` (service time) are swept ([`super::sweep`]).
pub fn sweep_rules(keep: chrono::TimeDelta) -> Vec<super::sweep::Rule> {
    use super::sweep::RuleClock::Service;
    vec![AUDIT.sweep("audit", "at", keep, Service), LEGACY_AUDIT.sweep("audit", "at", keep, Service)]
}

impl super::Engine {
    /// Commits `w` with the audit row of an operator's action on something that is not an entity (the service's
    /// hold on pushes): one commit, so that neither is kept without the other.
    pub async fn write_audited(
        &self,
        w: Writes,
        subject: &EntityKey,
        audit: &Audit,
        result: &ActionResult,
    ) -> Result<(), Error> {
        let mut batch = w.into_batch();
        audit.put(&mut batch, subject, self.inner.clock.now(), result);
        self.inner.committer.commit(batch).await.map_err(Error::from)
    }

    /// The newest `limit` entries of the audit trail.
    pub async fn audit_trail(&self, limit: usize) -> Result<Vec<AuditEntry>, Error> {
        let mut items: Vec<AuditEntry> =
            AUDIT.list(self, &[], limit, true).await?.into_iter().map(|(_, e)| e).collect();
        if items.len() < limit {
            let older = LEGACY_AUDIT.list(self, &[], limit - items.len(), true).await?;
            items.extend(older.into_iter().map(|(_, e)| e));
        }
        Ok(items)
    }
}
