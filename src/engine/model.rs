//! What the engine stores and passes around: entity keys, records, inputs, outcomes, journal entries, timers,
//! outbox messages and external calls, with their key encodings.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::store::keys;

/// Which workflow kind an entity runs and its id within that kind, e.g. `subscription/1000123`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EntityKey {
    pub kind: String,
    pub id: String,
}

/// Why a string is not a valid entity id or kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what}: {why}")]
pub struct KeyError {
    pub what: &'static str,
    pub why: &'static str,
}

fn check_part(what: &'static str, s: &str) -> Result<(), KeyError> {
    if s.is_empty() {
        return Err(KeyError { what, why: "empty" });
    }
    if s.len() > 128 {
        return Err(KeyError { what, why: "longer than 128 bytes" });
    }
    if !s.bytes().all(|b| b.is_ascii_graphic() && b != b'/' && b != b'#') {
        return Err(KeyError { what, why: "only printable ASCII without '/' or '#' is allowed" });
    }
    Ok(())
}

impl EntityKey {
    /// Parses a key from its parts; the parts never contain the key separator.
    pub fn new(kind: &str, id: &str) -> Result<Self, KeyError> {
        check_part("entity kind", kind)?;
        check_part("entity id", id)?;
        Ok(Self { kind: kind.to_string(), id: id.to_string() })
    }

    /// The store key prefix of this entity (`kind\0id\0`).
    pub fn prefix(&self) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.kind.len() + self.id.len() + 2);
        keys::push_str(&mut k, &self.kind);
        keys::push_str(&mut k, &self.id);
        k
    }

    /// Parses a prefix written by [`EntityKey::prefix`].
    pub fn from_prefix(bytes: &[u8]) -> Option<Self> {
        let parts = keys::split_strs(bytes);
        match parts.as_slice() {
            [kind, id, ..] => Some(Self { kind: kind.to_string(), id: id.to_string() }),
            _ => None,
        }
    }
}

impl fmt::Display for EntityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind, self.id)
    }
}

/// A pending timer as its entity remembers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimerRef {
    /// When it fires (service time).
    pub due: DateTime<Utc>,
    /// The entity's sequence number when it was set; makes every setting of a named timer distinct.
    pub set_seq: u64,
}

/// The durable truth about one entity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntityRecord {
    pub kind: String,
    pub id: String,
    /// The definition this instance runs on; pinned at creation, never switched silently.
    pub definition: String,
    pub version: u32,
    /// Fingerprint of the definition's content at creation, to detect a changed definition under the same version.
    pub fingerprint: String,
    pub state: String,
    /// The workflow's own data (typed by the workflow).
    pub data: Value,
    /// Number of journal entries; the next entry gets `seq + 1`.
    pub seq: u64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// When the entity entered its current state ("time in state").
    pub state_since: DateTime<Utc>,
    /// Pending timers by name; each has one row in the timers table.
    #[serde(default)]
    pub timers: BTreeMap<String, TimerRef>,
    /// Ids of external calls started and not yet consumed.
    #[serde(default)]
    pub calls: Vec<String>,
    /// Set by an operator: timers, messages and call results wait until resumed.
    #[serde(default)]
    pub paused: bool,
}

/// Who or what caused an input; journaled with every transition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Cause {
    /// A call of the HTTP API, by a principal.
    Api { principal: String },
    /// A call from the marketplace (SPI action).
    Spi { action: String },
    /// A named timer fired.
    Timer { name: String },
    /// A message from another entity.
    Message { from: String },
    /// The result of an external call.
    Call { call: String },
    /// An operator, with the reason they gave.
    Operator { operator: String, reason: String },
    /// The service itself (tests, reconciliation).
    System { detail: String },
}

impl Cause {
    /// A client waits for this input (an API call, the marketplace's SPI, an operator), as opposed to the engine's
    /// own work (timers, call results, messages between entities, the service itself).
    pub fn is_client(&self) -> bool {
        matches!(self, Cause::Api { .. } | Cause::Spi { .. } | Cause::Operator { .. })
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::Api { principal } => write!(f, "api call by {principal}"),
            Cause::Spi { action } => write!(f, "marketplace SPI {action}"),
            Cause::Timer { name } => write!(f, "timer {name}"),
            Cause::Message { from } => write!(f, "message from {from}"),
            Cause::Call { call } => write!(f, "result of {call}"),
            Cause::Operator { operator, reason } => write!(f, "operator {operator}: {reason}"),
            Cause::System { detail } => write!(f, "system: {detail}"),
        }
    }
}

/// What an input carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A domain event, decoded by the workflow (`{"type": "<event name>", ...}`).
    Domain { body: Value },
    /// A named timer fired; `set_seq` tells this setting from earlier ones of the same name.
    Timer { name: String, set_seq: u64 },
    /// An external call finished: its response, or why it failed for good. A failure carries the call's request,
    /// so that the workflow knows which of its calls of that name failed (several can be out at once).
    CallResult {
        call: String,
        call_id: String,
        result: Result<Value, String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request: Option<Value>,
        /// An operator settled the call (a cancel, or a push marked done), not the outside world.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        by_operator: bool,
    },
    /// An operator steers the engine itself (`pause`, `resume`); no workflow decides it.
    Control { action: String },
}

impl Event {
    /// Whether an input of this event is kept from taking effect twice by the entity's own record, not by an
    /// idempotency record: a timer fires only while the record holds it with the same `set_seq` (a journal
    /// sequence number, never reused), a call result only while the record lists the call; the commit that
    /// consumes either removes it, in the same atomic batch as the journal entry. A second copy of that fact in the
    /// idempotency table would cost a random leaf read and written per firing (BENCHMARKS.md, round 4), and nobody
    /// asks for these outcomes again: a repeat is answered `stale`.
    pub fn consumed_by_record(&self) -> bool {
        matches!(self, Event::Timer { .. } | Event::CallResult { .. })
    }
}

/// One input to one entity. A repeated `id` gets the stored outcome (a repeated timer or call result: `stale`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Input {
    pub id: String,
    pub event: Event,
    pub cause: Cause,
    /// The HTTP request it came from (see [`super::request_id`]), journaled with the transition it causes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

impl Input {
    pub fn domain(id: impl Into<String>, body: Value, cause: Cause) -> Self {
        Self { id: id.into(), event: Event::Domain { body }, cause, request_id: None }
    }
}

/// How an input ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// A transition ran (the state may or may not have changed).
    Accepted,
    /// No transition matched: absorbed on purpose, journaled, nothing changed.
    Ignored,
    /// An action refused the input with a code; nothing changed.
    Rejected,
}

/// The answer to an input; stored for idempotency and returned again for a repeated input id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub status: Status,
    /// A stable machine code for rejections.
    pub code: Option<String>,
    pub message: Option<String>,
    /// The entity's state after the input.
    pub state: String,
    /// What the workflow chose to answer (e.g. the createInstance response).
    pub reply: Value,
    /// Whether this outcome was already stored (a repeated input).
    #[serde(default)]
    pub repeated: bool,
}

/// One line of an entity's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JournalEntry {
    pub seq: u64,
    pub at: DateTime<Utc>,
    pub input_id: String,
    pub cause: Cause,
    /// The event's name (a domain event, a timer, `<call>.ok` / `<call>.failed`, or an engine action).
    pub event: String,
    pub from: String,
    pub to: String,
    pub status: Status,
    pub code: Option<String>,
    /// Human-readable notes of the actions.
    #[serde(default)]
    pub notes: Vec<String>,
    #[serde(default)]
    pub timers_set: Vec<String>,
    #[serde(default)]
    pub timers_cancelled: Vec<String>,
    #[serde(default)]
    pub messages: Vec<String>,
    #[serde(default)]
    pub calls: Vec<String>,
    /// The HTTP request that caused it, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// What a pending timer does when it fires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TimerTarget {
    /// Deliver the named timer event to the entity.
    Entity,
    /// Run an external call again (its retry).
    CallRetry { call_id: String },
}

/// A row of the timers table (indexed by due time).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimerRow {
    pub entity: EntityKey,
    pub name: String,
    pub due: DateTime<Utc>,
    pub set_seq: u64,
    pub set_at: DateTime<Utc>,
    pub target: TimerTarget,
}

impl TimerRow {
    /// `due ‖ kind\0id\0name\0`: the soonest timer is the first key.
    pub fn key(&self) -> Vec<u8> {
        let mut k = Vec::with_capacity(48);
        keys::push_u64(&mut k, keys::time_key(self.due));
        k.extend_from_slice(&self.entity.prefix());
        keys::push_str(&mut k, &self.name);
        k
    }
}

/// A message to another entity, kept until its receiver has processed it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OutboxRow {
    /// Also the receiver's input id, so a redelivery is deduplicated there.
    pub id: String,
    /// The request that caused the sender's transition, carried on to the receiver's journal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    pub from: EntityKey,
    pub to: EntityKey,
    pub body: Value,
    pub created_at: DateTime<Utc>,
}

impl OutboxRow {
    pub fn key(&self) -> Vec<u8> {
        self.id.as_bytes().to_vec()
    }
}

/// Where an external call stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CallStatus {
    /// To run now (or running).
    Pending,
    /// Failed and waiting for its retry timer.
    Retrying,
    /// Out of attempts: waits for an operator (retry or cancel).
    NeedsAttention,
    /// An at-most-once call being sent; found after a restart it means "outcome unknown".
    InFlight,
}

/// An external call started by a transition, kept until its result is consumed by the entity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CallRow {
    pub id: String,
    pub entity: EntityKey,
    pub call: String,
    pub request: Value,
    pub status: CallStatus,
    pub attempts: u32,
    pub created_at: DateTime<Utc>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
}

impl CallRow {
    pub fn key(&self) -> Vec<u8> {
        self.id.as_bytes().to_vec()
    }
}

/// The idempotency key of an input of an entity.
pub fn idempotency_key(key: &EntityKey, input_id: &str) -> Vec<u8> {
    let mut k = key.prefix();
    k.extend_from_slice(input_id.as_bytes());
    k
}

/// The journal key of an entry.
pub fn journal_key(key: &EntityKey, seq: u64) -> Vec<u8> {
    let mut k = key.prefix();
    keys::push_u64(&mut k, seq);
    k
}
