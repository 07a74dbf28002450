//! Billing windows whose push has an unknown outcome, resolved in bulk. A push is made at most once: when its
//! answer is lost (a timeout, a crash in flight) the marketplace may or may not have billed the window, and the
//! call waits for a person. After a crash in the hourly burst that is hundreds of windows at once, so an operator
//! picks them by hour, by instances, or both, sees what a resolution would change (a dry run), and then has each
//! one marked pushed (the bill shows it), pushed again (it does not), or cancelled, every one audited with who and
//! why. Each is the single-call action of the ops API (`Engine::act_on_call`), run on the node that holds it.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use super::{App, AppError};
use crate::domain::metering::KIND;
use crate::domain::protocol::{MeteringPushed, PushMetering};
use crate::engine::audit::Audit;
use crate::engine::inspect::EntityFilter;
use crate::engine::{services, CallAction, CallStatus, EntityKey, Route};

/// The call whose outcome can be unknown: pushes are made at most once.
const PUSH: &str = "push_metering_data";

/// What an operator decides for windows of unknown outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// The marketplace's bill shows the window: record it as pushed (with the bill's request id, if given).
    MarkPushed,
    /// The bill does not show it: push it again (a fresh budget of attempts).
    PushAgain,
    /// Give it up: the window is recorded as failed, with the operator's reason.
    Cancel,
}

impl Resolution {
    pub fn parse(s: &str) -> Result<Self, AppError> {
        match s {
            "mark-pushed" | "mark_pushed" => Ok(Self::MarkPushed),
            "push-again" | "push_again" => Ok(Self::PushAgain),
            "cancel" => Ok(Self::Cancel),
            other => Err(AppError::invalid(
                "unknown_resolution",
                format!("`{other}` is not a resolution (mark-pushed, push-again, cancel)"),
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::MarkPushed => "mark-pushed",
            Self::PushAgain => "push-again",
            Self::Cancel => "cancel",
        }
    }
}

/// Which windows: those starting at `hour`, of the `instances` listed, or both (at least one must be given, so
/// that no resolution reaches every window by accident).
#[derive(Debug, Clone, Default)]
pub struct Selector {
    pub hour: Option<DateTime<Utc>>,
    pub instances: BTreeSet<String>,
}

impl Selector {
    /// From what an operator typed: each instance id checked as an entity id (`invalid_entity`).
    pub fn parse<'a>(
        hour: Option<DateTime<Utc>>,
        instances: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, AppError> {
        let mut ids = BTreeSet::new();
        for i in instances {
            let key = EntityKey::new(KIND, i).map_err(|e| AppError::invalid("invalid_entity", e.to_string()))?;
            ids.insert(key.id);
        }
        Ok(Self { hour, instances: ids })
    }

    fn admits(&self, push: &PushMetering) -> bool {
        self.hour.is_none_or(|h| push.window_start == h)
            && (self.instances.is_empty() || self.instances.contains(&push.instance_id))
    }
}

/// A window whose push has an unknown outcome.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UnknownWindow {
    pub instance_id: String,
    pub window_start: DateTime<Utc>,
    /// The window's end as pushed (epoch seconds, as the marketplace takes it).
    pub end: i64,
    /// The units the push carried.
    pub units: u64,
    /// The external call to resolve.
    pub call_id: String,
    pub attempts: u32,
    pub last_error: Option<String>,
}

/// What a resolution did, or would do (`dry_run`).
#[derive(Debug, Serialize, ToSchema)]
pub struct WindowsResolved {
    /// `mark-pushed`, `push-again` or `cancel`.
    pub resolution: String,
    /// Nothing was changed: these are the windows it would resolve.
    pub dry_run: bool,
    pub windows: Vec<UnknownWindow>,
}

impl App {
    /// The windows of unknown outcome that `selector` picks, oldest first.
    pub async fn unknown_windows(&self, selector: &Selector) -> Result<Vec<UnknownWindow>, AppError> {
        let filter = EntityFilter { kind: Some(KIND.into()), needs_attention: true, ..EntityFilter::default() };
        let mut found = vec![];
        let mut cursor: Option<String> = None;
        loop {
            let page = self.engine.list_entities(&filter, cursor.as_deref(), 500).await?;
            for record in &page.items {
                let key = EntityKey::new(KIND, &record.id).map_err(AppError::internal)?;
                let (_, calls) = services::pending_effects(&self.engine, &key).await?;
                for call in calls.into_iter().filter(|c| c.call == PUSH && c.status == CallStatus::NeedsAttention) {
                    let Ok(push) = serde_json::from_value::<PushMetering>(call.request.clone()) else {
                        tracing::error!(call = %call.id, "a push's request does not decode; left for the entity's page");
                        continue;
                    };
                    if selector.admits(&push) {
                        found.push(UnknownWindow {
                            units: push.entities.iter().map(|e| e.value).sum(),
                            instance_id: push.instance_id,
                            window_start: push.window_start,
                            end: push.end,
                            call_id: call.id,
                            attempts: call.attempts,
                            last_error: call.last_error,
                        });
                    }
                }
            }
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        found.sort_by(|a, b| (a.window_start, &a.instance_id).cmp(&(b.window_start, &b.instance_id)));
        Ok(found)
    }

    /// Resolves the windows `selector` picks as `resolution` says, each audited as `operator`'s with `reason`
    /// (required unless `dry_run`, which only lists them; `request_id`: the bill's, for `mark-pushed`). A window
    /// resolved meanwhile by someone else is skipped, not an error.
    pub async fn resolve_windows(
        &self,
        operator: &str,
        selector: &Selector,
        resolution: Resolution,
        reason: Option<String>,
        request_id: Option<String>,
        dry_run: bool,
    ) -> Result<WindowsResolved, AppError> {
        // A dry run changes nothing and audits nothing: it needs no reason.
        let reason = if dry_run { reason.unwrap_or_default() } else { super::ops::reason(reason)? };
        if selector.hour.is_none() && selector.instances.is_empty() {
            return Err(AppError::invalid("selector_required", "name an hour, instances, or both"));
        }
        if request_id.is_some() && resolution != Resolution::MarkPushed {
            return Err(AppError::invalid("invalid_parameter", "request_id goes with mark-pushed only"));
        }
        if request_id.as_ref().is_some_and(|r| r.is_empty() || r.len() > 128) {
            return Err(AppError::invalid("invalid_parameter", "request_id: 1 to 128 characters"));
        }
        let windows = self.unknown_windows(selector).await?;
        if dry_run {
            return Ok(WindowsResolved { resolution: resolution.as_str().into(), dry_run, windows });
        }
        let audit = Audit {
            operator: operator.to_string(),
            reason,
            action: format!("window:{}", resolution.as_str()),
            call: None,
        };
        let mut done = Vec::with_capacity(windows.len());
        for w in windows {
            let action = match resolution {
                Resolution::MarkPushed => {
                    let answer = MeteringPushed { request_id: request_id.clone(), window_start: Some(w.window_start) };
                    CallAction::Complete { response: serde_json::to_value(answer).map_err(AppError::internal)? }
                }
                Resolution::PushAgain => CallAction::Retry,
                Resolution::Cancel => CallAction::Cancel,
            };
            match self.engine.act_on_call(&w.call_id, action, &audit, Route::Owner).await {
                Ok(()) => done.push(w),
                Err(crate::engine::Error::NotFound) => {
                    tracing::info!(call = %w.call_id, "resolved meanwhile; skipped");
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(WindowsResolved { resolution: resolution.as_str().into(), dry_run, windows: done })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolutions_parse_in_both_spellings_and_nothing_else() {
        assert_eq!(Resolution::parse("mark-pushed").unwrap(), Resolution::MarkPushed);
        assert_eq!(Resolution::parse("push_again").unwrap(), Resolution::PushAgain);
        assert_eq!(Resolution::parse("cancel").unwrap(), Resolution::Cancel);
        assert_eq!(Resolution::parse("delete").unwrap_err().code, "unknown_resolution");
    }
}
