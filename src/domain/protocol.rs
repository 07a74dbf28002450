//! The messages between the product's entities, and the events each workflow takes, as types: a sender builds
//! the receiver's type (`Cx::tell`), so that a renamed field is a compile error, not a message stuck in the outbox.
//! Each workflow module re-exports its own event type. The entity kinds live here too, so that the workflows name
//! each other's kinds without importing each other.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::ids::{BindingId, Email, InvitationId, Name, OrgId, Role, UserId};
use crate::aliyun::spi::{AliUid, OrderBizId, OrderId, ProductCode, RequestId, SkuId};

/// The entity kind of a subscription (its id is the marketplace's instanceId).
pub const SUBSCRIPTION: &str = "subscription";
/// The entity kind of an organization.
pub const ORGANIZATION: &str = "organization";
/// The entity kind of a subscription's usage billing (one per subscription, same id).
pub const METERING: &str = "metering";

// The workflows' states: adapters and rules compare these, never state names.

states! {
    /// A subscription's states (`workflows/subscription.toml`).
    pub enum SubscriptionState {
        New = "new",
        /// createInstance answered; waiting for the marketplace to report it opened.
        Opening = "opening",
        ActivationFailed = "activation_failed",
        Active = "active",
        Expired = "expired",
        Released = "released",
    }
}

impl SubscriptionState {
    /// Listed means active: the purchased list and the binding page show active subscriptions only, as the
    /// marketplace console does, and only an active one can be bound.
    pub fn listed(self) -> bool {
        self == SubscriptionState::Active
    }
}

states! {
    /// An organization's states (`workflows/organization.toml`): its billing status.
    pub enum OrganizationState {
        New = "new",
        Unbound = "unbound",
        Bound = "bound",
        /// The bound subscription was released; the organization runs until the switch window closes.
        Window = "window",
        Frozen = "frozen",
    }
}

impl OrganizationState {
    /// Billable means bound: usage is billed through the marketplace only while a subscription pays for it.
    pub fn billable(self) -> bool {
        self == OrganizationState::Bound
    }

    /// Billing status as users read it: frozen, or active.
    pub fn billing_status(self) -> &'static str {
        if self == OrganizationState::Frozen {
            "frozen"
        } else {
            "active"
        }
    }
}
states! {
    /// Metering's states (`workflows/metering.toml`).
    pub enum MeteringState {
        New = "new",
        Billing = "billing",
        Stopped = "stopped",
    }
}

/// What happens to a subscription.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SubscriptionEvent {
    /// createInstance. `auth_url` and `front_end_url` come from configuration (the public URL).
    Create {
        ali_uid: AliUid,
        order_biz_id: OrderBizId,
        order_id: OrderId,
        product_code: ProductCode,
        sku_id: SkuId,
        trial: bool,
        expired_on: Option<DateTime<Utc>>,
        #[serde(default)]
        extra: BTreeMap<String, String>,
        auth_url: String,
        front_end_url: String,
    },
    /// orderPay (支付成功): the marketplace says the order is paid, hence opened.
    OrderPaid { request_id: RequestId, order_id: OrderId },
    /// expiredInstance: closed for arrears.
    Expire,
    /// resumeInstance: arrears cleared.
    Resume { sku_id: SkuId },
    /// releaseInstance: closed by the buyer or released by the marketplace.
    Release { is_refund: bool, order_id: Option<OrderId> },
    /// renewInstance: a new expiry, no change of state.
    Renew { order_id: OrderId, expired_on: DateTime<Utc> },
    /// A user asks to bind this subscription to an organization.
    Bind { binding_id: BindingId, org_id: OrgId, user_id: UserId },
    /// From the organization: bound.
    BindingConfirmed { binding_id: BindingId, org_id: OrgId },
    /// From the organization: refused, with the reason's code.
    BindingRefused { binding_id: BindingId, org_id: OrgId, code: String },
    /// From the organization: a new subscription replaced this (suspended) one.
    Unlinked { org_id: OrgId },
    /// upgradeInstance: a new SKU, no change of state.
    Upgrade {
        sku_id: SkuId,
        order_id: Option<OrderId>,
        #[serde(default)]
        extra: BTreeMap<String, String>,
    },
    /// At start-up, for a live subscription of a build before the periodic checks: start them.
    StartChecks,
}

/// What happens to an organization.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OrganizationEvent {
    /// At registration (the user becomes Owner) or by an operator (support).
    Create {
        name: Name,
        owner: UserId,
        owner_email: Email,
    },
    Invite {
        invitation_id: InvitationId,
        email: Email,
        role: Role,
        by: UserId,
    },
    AcceptInvitation {
        invitation_id: InvitationId,
        user_id: UserId,
        email: Email,
    },
    /// A member leaves the organization.
    Leave {
        user_id: UserId,
    },
    /// From a subscription: bind me, on behalf of this user.
    BindRequest {
        binding_id: BindingId,
        instance_id: String,
        ali_uid: AliUid,
        user_id: UserId,
    },
    /// From the bound subscription: the buyer closed it (or the marketplace released it).
    ChannelReleased {
        instance_id: String,
    },
    /// From the bound subscription: closed for arrears.
    ChannelSuspended {
        instance_id: String,
    },
    /// From the suspended subscription: arrears cleared.
    ChannelResumed {
        instance_id: String,
    },
    Freeze {
        reason: String,
    },
    Unfreeze {
        reason: String,
    },
}

/// createInstance's answer: the instance id and where the buyer's 免登 link goes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreateInstanceReply {
    #[serde(rename = "instanceId")]
    pub instance_id: String,
    #[serde(rename = "appInfo")]
    pub app_info: AppInfo,
}

/// Where the marketplace sends the buyer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AppInfo {
    /// The 免登 address (`/aliyun/sso`).
    #[serde(rename = "authUrl")]
    pub auth_url: String,
    #[serde(rename = "frontEndUrl")]
    pub front_end_url: String,
}

/// The subscription's answer to a binding request: taken, and now for the organization to decide.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BindingPending {
    pub binding_id: BindingId,
    /// Always `pending`.
    pub status: String,
}

/// The organization's answer to an invitation sent.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InvitationCreated {
    pub invitation_id: InvitationId,
    pub expires_at: DateTime<Utc>,
}

/// The organization's answer to an accepted invitation: the organization joined, with the role.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InvitationAccepted {
    pub org_id: OrgId,
    pub role: Role,
}

/// The organization's answer to a member who left.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OrgLeft {
    pub left: OrgId,
}

/// What happens to metering.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum MeteringEvent {
    /// The subscription is bound and active (again) from `at`.
    Start { org: OrgId, at: DateTime<Utc> },
    /// The subscription stopped paying at `at` (release, expiry).
    Stop { at: DateTime<Utc> },
}

// The external calls the workflows name: the request a workflow builds and the answer it reads, the same types
// the call handlers (`crate::app::calls`) decode and encode.

/// `describe_instance`: where the marketplace says an instance stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DescribeInstance {
    pub instance_id: String,
}

/// The answer of `describe_instance`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InstanceDescribed {
    /// OPENING, OPENED, EXPIRED, CLOSED (as the marketplace spells it); `None` if it said nothing.
    pub status: Option<String>,
    pub request_id: Option<String>,
}

/// `meter_window`: the usage of an organization in a window, priced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeterWindow {
    pub org_id: OrgId,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    /// Records count for this window only if received by then: a minute before the window closed, so that every
    /// record received by then has been stored when the call reads. Absent in requests of earlier builds (every
    /// record counts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cut: Option<DateTime<Utc>>,
    /// The cut of the window closed before this one: a record received after it and before this cut was missed
    /// by the earlier windows it overlaps, and is billed here if their deadline had not passed when it arrived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<DateTime<Utc>>,
    /// The earlier windows a late record may belong to (the last day's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub earlier: Vec<EarlierWindow>,
}

/// A window closed before the one metered, as a late record is checked against it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EarlierWindow {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    /// The marketplace takes usage of this window until then.
    pub deadline: DateTime<Utc>,
}

/// A record received after the earlier windows it overlaps were metered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LateRecord {
    pub record_id: String,
    pub received_at: DateTime<Utc>,
    /// Its part in earlier windows whose deadline had not passed when it arrived: billed in this window (and
    /// counted in its items).
    #[serde(default)]
    pub billed: Vec<MeteredItem>,
    /// Its part in earlier windows whose deadline had passed: the marketplace cannot bill it any more.
    #[serde(default)]
    pub past_deadline: Vec<MeteredItem>,
}

/// One metering item's exact units in a window, as a fraction over the catalog's denominator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeteredItem {
    pub key: String,
    pub assit: String,
    /// The numerator, as text: JSON numbers are not wide enough.
    pub numerator: String,
    /// Whether the numerator counts nanoseconds (every build since); an answer of an earlier build counted whole
    /// seconds and is scaled up when it is settled ([`crate::domain::pricing::SECONDS_SCALE`]).
    #[serde(default)]
    pub nanos: bool,
}

/// The answer of `meter_window`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowMetered {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    #[serde(default)]
    pub items: Vec<MeteredItem>,
    /// Usage records that overlapped the window.
    #[serde(default)]
    pub records: u64,
    /// Records that came after earlier windows were metered (their parts are in `items` when billed here).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub late: Vec<LateRecord>,
}

/// One item of a push.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PushedItem {
    pub key: String,
    pub value: u64,
    pub assit: String,
}

/// `push_metering_data`: one window of one instance, pushed once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PushMetering {
    pub instance_id: String,
    /// The window in epoch seconds, as the marketplace takes it.
    pub start: i64,
    pub end: i64,
    /// The window's start, to find the window again when the answer comes back.
    pub window_start: DateTime<Utc>,
    pub entities: Vec<PushedItem>,
}

/// The answer of `push_metering_data`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeteringPushed {
    pub request_id: Option<String>,
    pub window_start: Option<DateTime<Utc>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Pending calls and outbox rows written by the builds before these types (hand-written JSON) decode, and the
    /// types write the same JSON back.
    #[test]
    fn the_rows_of_the_untyped_builds_decode() {
        let push = json!({"instance_id": "500000000001", "start": 1764840000, "end": 1764843600,
                          "window_start": "2026-12-04T09:20:00Z",
                          "entities": [{"key": "Frequency", "value": 833, "assit": "cmgj00063418-Frequency-1"}]});
        let p: PushMetering = serde_json::from_value(push.clone()).unwrap();
        assert_eq!(serde_json::to_value(&p).unwrap(), push);
        let window = json!({"org_id": "org_0123456789abcdef0123456789abcdef", "start": "2026-12-04T09:00:00Z",
                            "end": "2026-12-04T10:00:00Z"});
        let w: MeterWindow = serde_json::from_value(window.clone()).unwrap();
        assert_eq!(serde_json::to_value(&w).unwrap(), window);
        let d: DescribeInstance = serde_json::from_value(json!({"instance_id": "500000000001"})).unwrap();
        assert_eq!(d.instance_id, "500000000001");
        for (row, kind) in [
            (
                json!({"type": "binding_refused", "binding_id": "bnd_0123456789abcdef0123456789abcdef",
                    "org_id": "org_0123456789abcdef0123456789abcdef", "code": "org_already_bound"}),
                "refused",
            ),
            (json!({"type": "unlinked", "org_id": "org_0123456789abcdef0123456789abcdef"}), "unlinked"),
        ] {
            let e: SubscriptionEvent = serde_json::from_value(row.clone()).unwrap_or_else(|e| panic!("{kind}: {e}"));
            assert_eq!(serde_json::to_value(&e).unwrap(), row, "{kind}");
        }
        let suspended = json!({"type": "channel_suspended", "instance_id": "500000000001"});
        let e: OrganizationEvent = serde_json::from_value(suspended.clone()).unwrap();
        assert_eq!(serde_json::to_value(&e).unwrap(), suspended);
        let start =
            json!({"type": "start", "org": "org_0123456789abcdef0123456789abcdef", "at": "2026-12-04T09:00:00Z"});
        let e: MeteringEvent = serde_json::from_value(start.clone()).unwrap();
        assert_eq!(serde_json::to_value(&e).unwrap(), start);
    }
}
