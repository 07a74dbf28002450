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

/// What happens to metering.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum MeteringEvent {
    /// The subscription is bound and active (again) from `at`.
    Start { org: OrgId, at: DateTime<Utc> },
    /// The subscription stopped paying at `at` (release, expiry).
    Stop { at: DateTime<Utc> },
}
