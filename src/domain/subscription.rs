//! A marketplace subscription (one instance, `instanceId` = `orderBizId`): the activation wait, expiry for
//! arrears, resume and release, as the marketplace reports them. The graph is `workflows/subscription.toml`;
//! this file implements the guards and actions it names.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use super::binding::Refusal;
use super::ids::{BindingId, OrgId, UserId};
pub use super::protocol::SubscriptionEvent;
pub use super::protocol::SubscriptionState as State;
use super::protocol::{
    AppInfo, BindingPending, CreateInstanceReply, DescribeInstance, InstanceDescribed, MeteringEvent, OrganizationEvent,
};
use crate::aliyun::spi::{AliUid, OrderBizId, OrderId, ProductCode, RequestId, SkuId};
use crate::engine::definition::Catalog;
use crate::engine::EntityKey;
use crate::engine::{AttentionCause, Concern, Cx, Reject, Signal, Workflow};

/// The entity kind.
pub const KIND: &str = super::protocol::SUBSCRIPTION;

/// What a check with DescribeInstance can find, as counted on `/metrics` (`marketflow_drift_total{kind}`): three
/// corrections, and an instance the marketplace does not know (which needs a person).
pub const DRIFT_KINDS: &[&str] = &["expired", "resumed", "released", "not_found"];

/// The error code of DescribeInstance for an instance the marketplace does not know.
const NOT_FOUND: &str = "InvalidInstanceId.NotFound";
/// Not opened within the activation deadline.
pub const ACTIVATION_OVERDUE: &str = "activation_overdue";
/// A live subscription the marketplace does not know.
pub const INSTANCE_NOT_FOUND: &str = "instance_not_found";

/// What the marketplace told us (and when), kept as the subscription's data.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Subscription {
    pub ali_uid: Option<AliUid>,
    pub order_biz_id: Option<OrderBizId>,
    pub order_id: Option<OrderId>,
    pub product_code: Option<ProductCode>,
    pub sku_id: Option<SkuId>,
    pub trial: bool,
    pub expired_on: Option<DateTime<Utc>>,
    /// Extra billing items and parameters the marketplace added.
    #[serde(default)]
    pub extra: BTreeMap<String, String>,
    pub created_at: Option<DateTime<Utc>>,
    pub activated_at: Option<DateTime<Utc>>,
    pub expired_at: Option<DateTime<Utc>>,
    pub resumed_at: Option<DateTime<Utc>>,
    pub released_at: Option<DateTime<Utc>>,
    pub is_refund: Option<bool>,
    /// The last status DescribeInstance reported (OPENING, OPENED, EXPIRED, CLOSED).
    pub marketplace_status: Option<String>,
    pub polls: u32,
    pub poll_failures: u32,
    /// Periodic checks with DescribeInstance made while live, and when the next one is due.
    #[serde(default)]
    pub checks: u32,
    #[serde(default)]
    pub check_due: Option<DateTime<Utc>>,
    pub last_poll_error: Option<String>,
    /// Since when DescribeInstance answers that the marketplace has no such instance (a live subscription it does
    /// not know: a person must find out why); cleared by the next answer that knows it.
    #[serde(default)]
    pub not_found_since: Option<DateTime<Utc>>,
    /// orderPay notices taken (their request ids).
    #[serde(default)]
    pub payments: Vec<RequestId>,
    pub renewals: u32,
    /// The createInstance answer, the same for every repetition.
    pub create_reply: Option<CreateInstanceReply>,
    /// The organization this subscription pays for (set once the organization confirmed).
    pub org: Option<OrgId>,
    /// The last binding attempt and where it stands.
    pub binding: Option<Binding>,
}

impl Subscription {
    /// Bound to an organization, or a binding of it is being decided: nobody else may bind it now.
    pub fn taken(&self) -> bool {
        self.org.is_some() || self.binding.as_ref().is_some_and(|b| b.status == "pending")
    }
}

/// A binding attempt, as the buyer follows it ("processing your authorization").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Binding {
    pub binding_id: BindingId,
    pub org_id: OrgId,
    pub user_id: UserId,
    /// `pending`, `bound`, `refused`.
    pub status: String,
    /// Why it was refused (`insufficient_permission`, `org_already_bound`).
    pub code: Option<String>,
    pub requested_at: DateTime<Utc>,
    pub decided_at: Option<DateTime<Utc>>,
}

fn org_key(org: &OrgId) -> Result<EntityKey, Reject> {
    EntityKey::new(super::protocol::ORGANIZATION, org.as_str()).map_err(|e| Reject::new("invalid_org", e.to_string()))
}

/// Tells the organization this subscription pays for (or is being bound to) about a change of the channel.
/// A pending binding counts: its bind request went out first and messages arrive in order, so the organization
/// learns of the release after it bound, never before.
fn notify_org(cx: &mut Cx<'_, Subscription>, event: fn(String) -> OrganizationEvent) -> Result<(), Reject> {
    let pending = cx.data.binding.as_ref().filter(|b| b.status == "pending").map(|b| b.org_id.clone());
    if let Some(org) = cx.data.org.clone().or(pending) {
        let instance_id = cx.key.id.clone();
        cx.tell(org_key(&org)?, &event(instance_id))?;
    }
    Ok(())
}

/// The marketplace's status as a notice tells it (the marketplace sends each notice once it has changed the
/// instance), so that what operators and buyers read follows the marketplace between two DescribeInstance answers.
fn follow_marketplace(cx: &mut Cx<'_, Subscription>, status: &str) {
    cx.data.marketplace_status = Some(status.to_string());
}

/// Starts or stops the usage billing of this subscription (its metering entity, same id).
fn metering(cx: &mut Cx<'_, Subscription>, start: bool) -> Result<(), Reject> {
    let Some(org) = cx.data.org.clone() else { return Ok(()) };
    let key = EntityKey::new(super::protocol::METERING, &cx.key.id)
        .map_err(|e| Reject::new("invalid_instance", e.to_string()))?;
    let event = if start { MeteringEvent::Start { org, at: cx.now } } else { MeteringEvent::Stop { at: cx.now } };
    cx.tell(key, &event)
}

/// How often a live subscription is checked with DescribeInstance: the `check` timer's duration
/// (`MARKETFLOW_RECONCILE_INTERVAL`, default 1 h).
fn check_interval(cx: &Cx<'_, Subscription>) -> TimeDelta {
    cx.definition
        .timers
        .get("check")
        .and_then(|d| TimeDelta::from_std(*d).ok())
        .filter(|d| *d >= TimeDelta::seconds(1))
        .unwrap_or(TimeDelta::hours(1))
}

/// A stable number of an instance id (FNV-1a: the same in every build and process), its place in the interval.
fn place(id: &str) -> u64 {
    id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// The next instant after `now` at this subscription's own place in the interval: each live subscription is
/// checked once per interval at an instant of its own, so N subscriptions make N checks spread evenly over it.
pub fn next_check(id: &str, now: DateTime<Utc>, interval: TimeDelta) -> DateTime<Utc> {
    let period = interval.num_milliseconds().max(1000);
    let phase = (place(id) % period as u64) as i64;
    let t = now.timestamp_millis();
    let mut at = t - t.rem_euclid(period) + phase;
    if at <= t {
        at += period;
    }
    DateTime::from_timestamp_millis(at).unwrap_or(now + interval)
}

/// Sets the periodic check at this subscription's next place in the interval.
fn arm_check(cx: &mut Cx<'_, Subscription>) {
    let at = next_check(&cx.key.id, cx.now, check_interval(cx));
    cx.data.check_due = Some(at);
    cx.set_timer_at("check", at);
}

/// Runs `workflows/subscription.toml`.
pub struct SubscriptionWorkflow;

fn reported(signal: &Signal<SubscriptionEvent>) -> Option<String> {
    match signal {
        Signal::CallOk { response, .. } => {
            serde_json::from_value::<InstanceDescribed>(response.clone()).ok().and_then(|d| d.status)
        }
        _ => None,
    }
}

impl Workflow for SubscriptionWorkflow {
    type Data = Subscription;
    type Event = SubscriptionEvent;

    fn attention(&self, state: &str, data: &Subscription) -> Vec<Concern> {
        let mut out = Vec::new();
        if state == State::ActivationFailed.as_str() {
            let since = data.created_at.map(|c| c.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
            out.push(Concern {
                cause: ACTIVATION_OVERDUE,
                subject: String::new(),
                next_step: format!(
                    "created {} and not opened within the activation deadline (polled {} times{}); look the instance \
                     up in the marketplace: a late OPENED still activates it, a CLOSED releases it",
                    since.as_deref().unwrap_or("at an unknown time"),
                    data.polls,
                    data.last_poll_error.as_deref().map(|e| format!(", last error: {e}")).unwrap_or_default(),
                ),
            });
        }
        if let (Some(since), false) = (data.not_found_since, state == State::Released.as_str()) {
            out.push(Concern {
                cause: INSTANCE_NOT_FOUND,
                subject: String::new(),
                next_step: format!(
                    "DescribeInstance has answered {NOT_FOUND} since {}: the marketplace does not know this live \
                     subscription; check the instance id with the marketplace (a wrong product, a deleted instance)",
                    since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                ),
            });
        }
        out
    }

    fn causes(&self) -> Vec<AttentionCause> {
        vec![
            AttentionCause {
                name: ACTIVATION_OVERDUE,
                covers: "a subscription the marketplace did not open within the activation deadline",
                next_step: "look the instance up in the marketplace; polling goes on, a late OPENED activates it",
            },
            AttentionCause {
                name: INSTANCE_NOT_FOUND,
                covers: "a live subscription whose instance the marketplace does not know (DescribeInstance)",
                next_step: "check the instance with the marketplace; nothing changes on our side until it answers",
            },
        ]
    }

    fn kind(&self) -> &'static str {
        KIND
    }

    fn catalog(&self) -> Catalog {
        Catalog {
            states: State::NAMES.to_vec(),
            events: vec![
                "create",
                "order_paid",
                "expire",
                "resume",
                "release",
                "renew",
                "upgrade",
                "start_checks",
                "bind",
                "binding_confirmed",
                "binding_refused",
                "unlinked",
            ],
            guards: vec!["reported_opened", "reported_closed", "reported_expired", "bindable", "is_pending_binding"],
            actions: vec![
                "record_order",
                "answer_create",
                "poll",
                "rearm_poll",
                "rearm_late_poll",
                "record_status",
                "record_poll_failure",
                "record_payment",
                "activate",
                "note_deadline",
                "expire",
                "resume",
                "release",
                "record_renewal",
                "record_upgrade",
                "schedule_reconcile",
                "periodic_check",
                "arm_check",
                "reconciled_resume",
                "reserve_binding",
                "refuse_already_bound",
                "refuse_not_active",
                "confirm_binding",
                "record_refusal",
                "unlink",
            ],
            calls: vec!["describe_instance"],
        }
    }

    fn event_name(&self, event: &SubscriptionEvent) -> String {
        match event {
            SubscriptionEvent::Create { .. } => "create",
            SubscriptionEvent::OrderPaid { .. } => "order_paid",
            SubscriptionEvent::Expire => "expire",
            SubscriptionEvent::Resume { .. } => "resume",
            SubscriptionEvent::Release { .. } => "release",
            SubscriptionEvent::Renew { .. } => "renew",
            SubscriptionEvent::Upgrade { .. } => "upgrade",
            SubscriptionEvent::StartChecks => "start_checks",
            SubscriptionEvent::Bind { .. } => "bind",
            SubscriptionEvent::BindingConfirmed { .. } => "binding_confirmed",
            SubscriptionEvent::BindingRefused { .. } => "binding_refused",
            SubscriptionEvent::Unlinked { .. } => "unlinked",
        }
        .to_string()
    }

    fn guard(&self, name: &str, cx: &Cx<'_, Subscription>, signal: &Signal<SubscriptionEvent>) -> bool {
        use SubscriptionEvent as E;
        let pending = cx.data.binding.as_ref().filter(|b| b.status == "pending");
        match (name, signal) {
            ("bindable", Signal::Event(E::Bind { .. })) => {
                let Some(state) = State::parse(cx.state) else { return false };
                return super::binding::subscription_can_be_bound(state, cx.data.taken()).is_ok();
            }
            (
                "is_pending_binding",
                Signal::Event(E::BindingConfirmed { binding_id, .. } | E::BindingRefused { binding_id, .. }),
            ) => return pending.is_some_and(|b| &b.binding_id == binding_id),
            _ => {}
        }
        match name {
            "reported_opened" => reported(signal).as_deref() == Some("OPENED"),
            "reported_closed" => reported(signal).as_deref() == Some("CLOSED"),
            "reported_expired" => reported(signal).as_deref() == Some("EXPIRED"),
            _ => false,
        }
    }

    fn action(
        &self,
        name: &str,
        cx: &mut Cx<'_, Subscription>,
        signal: &Signal<SubscriptionEvent>,
    ) -> Result<(), Reject> {
        use SubscriptionEvent as E;
        let now = cx.now;
        match (name, signal) {
            (
                "record_order",
                Signal::Event(E::Create {
                    ali_uid,
                    order_biz_id,
                    order_id,
                    product_code,
                    sku_id,
                    trial,
                    expired_on,
                    extra,
                    ..
                }),
            ) => {
                let d = &mut *cx.data;
                d.ali_uid = Some(ali_uid.clone());
                d.order_biz_id = Some(order_biz_id.clone());
                d.order_id = Some(order_id.clone());
                d.product_code = Some(product_code.clone());
                d.sku_id = Some(sku_id.clone());
                d.trial = *trial;
                d.expired_on = *expired_on;
                d.extra = extra.clone();
                d.created_at = Some(now);
                cx.note(format!("createInstance by Aliyun account {ali_uid} (order {order_id}, SKU {sku_id})"));
            }
            ("answer_create", Signal::Event(E::Create { order_biz_id, auth_url, front_end_url, .. })) => {
                let reply = CreateInstanceReply {
                    instance_id: order_biz_id.as_str().to_string(),
                    app_info: AppInfo { auth_url: auth_url.clone(), front_end_url: front_end_url.clone() },
                };
                cx.answer(&reply);
                cx.data.create_reply = Some(reply);
            }
            ("poll", _) => {
                cx.data.polls += 1;
                let id = cx.key.id.clone();
                cx.request("describe_instance", &DescribeInstance { instance_id: id })?;
            }
            ("rearm_poll", _) => cx.set_timer("activation-poll"),
            ("rearm_late_poll", _) => cx.set_timer("late-poll"),
            ("record_status", _) => {
                let status = reported(signal).unwrap_or_else(|| "UNKNOWN".into());
                if cx.data.marketplace_status.as_deref() != Some(status.as_str()) {
                    cx.note(format!("the marketplace reports {status}"));
                }
                cx.data.marketplace_status = Some(status);
                cx.data.last_poll_error = None;
                cx.data.not_found_since = None;
            }
            ("arm_check", _) => {
                if cx.data.check_due.is_none() {
                    arm_check(cx);
                    cx.note("periodic checks start (a subscription of a build before them)");
                }
            }
            ("periodic_check", _) => {
                let interval = check_interval(cx);
                let late = cx.data.check_due.map(|d| cx.now - d).unwrap_or_default();
                if late > interval / 4 {
                    // After downtime every check that fell due meanwhile fires at once; each goes to a place of its
                    // own in the next quarter of the interval instead, so the marketplace never sees a burst.
                    let quarter = (interval / 4).num_milliseconds().max(1);
                    let at = cx.now + TimeDelta::milliseconds((place(&cx.key.id) % quarter as u64) as i64);
                    cx.data.check_due = Some(at);
                    cx.set_timer_at("check", at);
                    cx.note(format!("the periodic check is {} min late (downtime): moved to {at}", late.num_minutes()));
                } else {
                    cx.data.checks += 1;
                    let id = cx.key.id.clone();
                    cx.request("describe_instance", &DescribeInstance { instance_id: id })?;
                    arm_check(cx);
                }
            }
            ("record_poll_failure", Signal::CallFailed { error, by_operator, .. }) => {
                if error.starts_with(NOT_FOUND) && !by_operator && cx.data.not_found_since.is_none() {
                    cx.data.not_found_since = Some(now);
                    cx.count("drift", "not_found");
                    cx.note("drift: the marketplace does not know this instance (DescribeInstance: not found)");
                }
                cx.data.poll_failures += 1;
                cx.data.last_poll_error = Some(error.clone());
                cx.note(format!("DescribeInstance failed: {error}"));
            }
            ("record_payment", Signal::Event(E::OrderPaid { request_id, order_id })) => {
                if !cx.data.payments.contains(request_id) {
                    cx.data.payments.push(request_id.clone());
                }
                cx.note(format!("orderPay {request_id} for order {order_id}"));
            }
            ("activate", signal) => {
                arm_check(cx);
                if matches!(signal, Signal::Event(E::OrderPaid { .. })) {
                    // orderPay is sent once the marketplace has opened the instance: what DescribeInstance says.
                    follow_marketplace(cx, "OPENED");
                }
                cx.data.activated_at = Some(now);
                let waited = cx.data.created_at.map(|c| (now - c).num_seconds()).unwrap_or(0);
                cx.note(format!("activated after {waited} s"));
            }
            ("note_deadline", _) => {
                cx.note("not opened within the activation deadline; polling continues every 10 minutes");
            }
            ("expire", signal) => {
                cx.data.expired_at = Some(now);
                follow_marketplace(cx, "EXPIRED");
                notify_org(cx, |instance_id| OrganizationEvent::ChannelSuspended { instance_id })?;
                metering(cx, false)?;
                arm_check(cx);
                if matches!(signal, Signal::Event(_)) {
                    cx.note("expiredInstance: closed by the marketplace for arrears");
                } else {
                    cx.count("drift", "expired");
                    cx.note("drift: the marketplace reports EXPIRED: an expiredInstance was missed or overtaken");
                }
            }
            ("schedule_reconcile", _) => cx.set_timer("reconcile"),
            ("reserve_binding", Signal::Event(E::Bind { binding_id, org_id, user_id })) => {
                let ali_uid = cx.data.ali_uid.clone().ok_or_else(|| Reject::new("internal_error", "no aliUid"))?;
                cx.data.binding = Some(Binding {
                    binding_id: binding_id.clone(),
                    org_id: org_id.clone(),
                    user_id: user_id.clone(),
                    status: "pending".into(),
                    code: None,
                    requested_at: now,
                    decided_at: None,
                });
                let instance_id = cx.key.id.clone();
                let request = OrganizationEvent::BindRequest {
                    binding_id: binding_id.clone(),
                    instance_id,
                    ali_uid,
                    user_id: user_id.clone(),
                };
                cx.tell(org_key(org_id)?, &request)?;
                cx.answer(&BindingPending { binding_id: binding_id.clone(), status: "pending".into() });
                cx.note(format!("{user_id} asks to bind this subscription to {org_id}"));
            }
            ("refuse_already_bound", _) => {
                return Err(Reject::new(
                    Refusal::SubscriptionAlreadyBound.code(),
                    "this subscription is bound to an organization already (or a binding is in progress)",
                ));
            }
            ("refuse_not_active", _) => {
                return Err(Reject::new(
                    Refusal::SubscriptionNotActive.code(),
                    "only an active subscription can be bound; wait for its activation",
                ));
            }
            ("confirm_binding", Signal::Event(E::BindingConfirmed { org_id, .. })) => {
                if let Some(b) = cx.data.binding.as_mut() {
                    b.status = "bound".into();
                    b.decided_at = Some(now);
                }
                cx.data.org = Some(org_id.clone());
                cx.note(format!("bound to {org_id}"));
                if cx.state == "active" {
                    metering(cx, true)?;
                }
                if cx.state == "expired" {
                    // Expired while the organization was deciding: it must learn that its new channel is suspended.
                    let instance_id = cx.key.id.clone();
                    cx.tell(org_key(org_id)?, &OrganizationEvent::ChannelSuspended { instance_id })?;
                }
            }
            ("record_refusal", Signal::Event(E::BindingRefused { code, org_id, .. })) => {
                if let Some(b) = cx.data.binding.as_mut() {
                    b.status = "refused".into();
                    b.code = Some(code.clone());
                    b.decided_at = Some(now);
                }
                cx.note(format!("{org_id} refused the binding: {code}"));
            }
            ("unlink", Signal::Event(E::Unlinked { org_id })) => {
                if cx.data.org.as_ref() == Some(org_id) {
                    cx.data.org = None;
                    cx.note(format!("{org_id} bound a new subscription; this one is unlinked"));
                }
            }
            ("reconciled_resume", _) => {
                cx.data.resumed_at = Some(now);
                notify_org(cx, |instance_id| OrganizationEvent::ChannelResumed { instance_id })?;
                metering(cx, true)?;
                arm_check(cx);
                cx.count("drift", "resumed");
                cx.note("drift: the marketplace reports OPENED: a resumeInstance was missed or overtaken");
            }
            ("resume", Signal::Event(E::Resume { sku_id })) => {
                cx.data.resumed_at = Some(now);
                follow_marketplace(cx, "OPENED");
                notify_org(cx, |instance_id| OrganizationEvent::ChannelResumed { instance_id })?;
                metering(cx, true)?;
                arm_check(cx);
                cx.data.sku_id = Some(sku_id.clone());
                cx.note("resumeInstance: arrears cleared");
            }
            ("release", signal) => {
                cx.data.released_at = Some(now);
                follow_marketplace(cx, "CLOSED");
                notify_org(cx, |instance_id| OrganizationEvent::ChannelReleased { instance_id })?;
                metering(cx, false)?;
                if let Signal::Event(E::Release { is_refund, .. }) = signal {
                    cx.data.is_refund = Some(*is_refund);
                    cx.note(format!("releaseInstance (refund: {is_refund})"));
                } else {
                    cx.count("drift", "released");
                    cx.note("drift: the marketplace reports the instance CLOSED: a releaseInstance was missed");
                }
            }
            ("record_renewal", Signal::Event(E::Renew { order_id, expired_on })) => {
                cx.data.renewals += 1;
                cx.data.expired_on = Some(*expired_on);
                cx.note(format!("renewInstance (order {order_id}): expires {expired_on}"));
            }
            ("record_upgrade", Signal::Event(E::Upgrade { sku_id, extra, .. })) => {
                let old = cx.data.sku_id.replace(sku_id.clone());
                for (k, v) in extra {
                    cx.data.extra.insert(k.clone(), v.clone());
                }
                cx.note(format!(
                    "upgradeInstance: SKU {} → {sku_id}",
                    old.map(|s| s.to_string()).unwrap_or_else(|| "?".into())
                ));
            }
            (other, _) => {
                return Err(Reject::new("unexpected_event", format!("action `{other}` does not apply to this event")))
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! The decisions without an engine: the definition from `workflows/` with this workflow, step by step.
    use super::*;
    use crate::engine::model::{Cause, EntityKey, Event, Input, Status};
    use crate::engine::step::step;
    use crate::engine::workflow::DynWorkflow;
    use crate::engine::Definition;
    use chrono::TimeZone;
    use serde_json::json;

    const DEF: &str = include_str!("../../workflows/subscription.toml");

    fn def() -> Definition {
        Definition::parse("workflows/subscription.toml", DEF, &DynWorkflow::catalog(&SubscriptionWorkflow)).unwrap()
    }

    fn create() -> Input {
        Input::domain(
            "spi:createInstance",
            json!({"type": "create", "ali_uid": "1234", "order_biz_id": "9001", "order_id": "o1",
                   "product_code": "cmgj00063418", "sku_id": "payg", "trial": false, "expired_on": null,
                   "auth_url": "http://x/aliyun/sso", "front_end_url": "http://x"}),
            Cause::Spi { action: "createInstance".into() },
        )
    }

    #[test]
    fn create_opens_the_wait_with_a_poll_and_a_deadline() {
        let d = def();
        let key = EntityKey::new(KIND, "9001").unwrap();
        let now = Utc.with_ymd_and_hms(2026, 11, 27, 8, 0, 0).unwrap();
        let s = step(&SubscriptionWorkflow, &d, &key, None, &create(), now).unwrap();
        assert_eq!(s.outcome.state, "opening");
        assert_eq!(s.outcome.reply["instanceId"], "9001");
        assert_eq!(s.outcome.reply["appInfo"]["authUrl"], "http://x/aliyun/sso");
        let rec = s.record.unwrap();
        assert_eq!(rec.timers["activation-poll"].due, now + chrono::TimeDelta::minutes(1));
        assert_eq!(rec.timers["activation-deadline"].due, now + chrono::TimeDelta::minutes(15));

        // The poll fires: a DescribeInstance call, and the poll re-armed.
        let poll = Input {
            id: "t1".into(),
            event: Event::Timer { name: "activation-poll".into(), set_seq: 1 },
            cause: Cause::Timer { name: "activation-poll".into() },
            request_id: None,
        };
        let later = now + chrono::TimeDelta::minutes(1);
        let s = step(&SubscriptionWorkflow, &d, &key, Some(&rec), &poll, later).unwrap();
        assert_eq!(s.calls.len(), 1);
        assert_eq!(s.calls[0].call, "describe_instance");
        let rec = s.record.unwrap();
        assert_eq!(rec.timers["activation-poll"].due, later + chrono::TimeDelta::minutes(1));

        // OPENED → active, timers of the wait cancelled.
        let ok = Input {
            id: "c1".into(),
            event: Event::CallResult {
                call: "describe_instance".into(),
                call_id: s.calls[0].id.clone(),
                result: Ok(json!({"status": "OPENED"})),
                request: None,
                by_operator: false,
            },
            cause: Cause::Call { call: "describe_instance".into() },
            request_id: None,
        };
        let s = step(&SubscriptionWorkflow, &d, &key, Some(&rec), &ok, later).unwrap();
        assert_eq!(s.outcome.state, "active");
        // The wait's timers are cancelled; the periodic check is set at this instance's place in the hour.
        let rec = s.record.unwrap();
        assert_eq!(rec.timers.keys().collect::<Vec<_>>(), ["check"]);
        let due = rec.timers["check"].due;
        assert!(due > later && due <= later + chrono::TimeDelta::hours(1), "{due}");
        assert_eq!(due, next_check("9001", later, chrono::TimeDelta::hours(1)));

        // On time: DescribeInstance, and the next check an hour later at the same place.
        let check = |seq| Input {
            id: format!("check-{seq}"),
            event: Event::Timer { name: "check".into(), set_seq: seq },
            cause: Cause::Timer { name: "check".into() },
            request_id: None,
        };
        let s = step(&SubscriptionWorkflow, &d, &key, Some(&rec), &check(rec.timers["check"].set_seq), due).unwrap();
        assert_eq!(s.calls.iter().map(|c| c.call.as_str()).collect::<Vec<_>>(), ["describe_instance"]);
        let rec = s.record.unwrap();
        assert_eq!(rec.timers["check"].due, due + chrono::TimeDelta::hours(1));

        // Two hours late (the service was down): no call now; the check moves into the next quarter hour.
        let late = due + chrono::TimeDelta::hours(3);
        let s = step(&SubscriptionWorkflow, &d, &key, Some(&rec), &check(rec.timers["check"].set_seq), late).unwrap();
        assert!(s.calls.is_empty());
        let moved = s.record.unwrap().timers["check"].due;
        assert!(moved >= late && moved < late + chrono::TimeDelta::minutes(15), "{moved}");
    }

    #[test]
    fn checks_are_spread_evenly_over_the_interval() {
        let now = Utc.with_ymd_and_hms(2026, 11, 27, 8, 0, 0).unwrap();
        let hour = chrono::TimeDelta::hours(1);
        let mut quarters = [0u32; 4];
        for n in 0..4000u64 {
            let id = (1_000_000_000_000_000 + n * 7919).to_string();
            let at = next_check(&id, now, hour);
            assert!(at > now && at <= now + hour, "{id}: {at}");
            assert_eq!(next_check(&id, now, hour), at, "the same place every time");
            quarters[((at - now).num_seconds() / 900).min(3) as usize] += 1;
        }
        // 1,000 expected in each quarter; a burst would put most in one.
        assert!(quarters.iter().all(|q| (800..=1200).contains(q)), "{quarters:?}");
    }

    #[test]
    fn marketplace_status_follows_the_notices() {
        let d = def();
        let key = EntityKey::new(KIND, "9001").unwrap();
        let now = Utc.with_ymd_and_hms(2026, 11, 27, 8, 0, 0).unwrap();
        let rec = step(&SubscriptionWorkflow, &d, &key, None, &create(), now).unwrap().record.unwrap();
        let notice = |id: &str, body: serde_json::Value, action: &str| {
            Input::domain(id, body, Cause::Spi { action: action.into() })
        };
        let status = |r: &crate::engine::EntityRecord| r.data["marketplace_status"].as_str().map(String::from);
        assert_eq!(status(&rec), None);
        let pay = notice("p", json!({"type": "order_paid", "request_id": "rq-1", "order_id": "o-1"}), "orderPay");
        let rec = step(&SubscriptionWorkflow, &d, &key, Some(&rec), &pay, now).unwrap().record.unwrap();
        assert_eq!((rec.state.as_str(), status(&rec).as_deref()), ("active", Some("OPENED")));
        let expire = notice("e", json!({"type": "expire"}), "expiredInstance");
        let rec = step(&SubscriptionWorkflow, &d, &key, Some(&rec), &expire, now).unwrap().record.unwrap();
        assert_eq!((rec.state.as_str(), status(&rec).as_deref()), ("expired", Some("EXPIRED")));
        let resume = notice("u", json!({"type": "resume", "sku_id": "sku"}), "resumeInstance");
        let rec = step(&SubscriptionWorkflow, &d, &key, Some(&rec), &resume, now).unwrap().record.unwrap();
        assert_eq!((rec.state.as_str(), status(&rec).as_deref()), ("active", Some("OPENED")));
        let release = notice("r", json!({"type": "release", "is_refund": false, "order_id": null}), "releaseInstance");
        let rec = step(&SubscriptionWorkflow, &d, &key, Some(&rec), &release, now).unwrap().record.unwrap();
        assert_eq!((rec.state.as_str(), status(&rec).as_deref()), ("released", Some("CLOSED")));
    }

    #[test]
    fn released_absorbs_everything() {
        let d = def();
        let key = EntityKey::new(KIND, "9001").unwrap();
        let now = Utc::now();
        let rec = step(&SubscriptionWorkflow, &d, &key, None, &create(), now).unwrap().record.unwrap();
        let rel = Input::domain(
            "r",
            json!({"type": "release", "is_refund": false, "order_id": null}),
            Cause::Spi { action: "releaseInstance".into() },
        );
        let rec = step(&SubscriptionWorkflow, &d, &key, Some(&rec), &rel, now).unwrap().record.unwrap();
        assert_eq!(rec.state, "released");
        for body in [
            json!({"type": "expire"}),
            json!({"type": "resume", "sku_id": "x"}),
            json!({"type": "release", "is_refund": true, "order_id": null}),
        ] {
            let s = step(
                &SubscriptionWorkflow,
                &d,
                &key,
                Some(&rec),
                &Input::domain("x", body, Cause::Spi { action: "test".into() }),
                now,
            )
            .unwrap();
            assert_eq!(s.outcome.status, Status::Ignored);
            assert_eq!(s.outcome.state, "released");
        }
    }
}
