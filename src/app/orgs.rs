//! The organizations' use cases: a user's memberships, invitations (send, accept), leaving, the billing overview
//! (帐单概览) and an operator's organization for a user. Who may do what is the domain's (`Role`, the organization
//! workflow); these check it before they send, so that a refusal changes nothing and reads the same on every
//! adapter.

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::Serialize;
use utoipa::ToSchema;

use super::accounts::{OrgCreation, User};
use super::{App, AppError};
use crate::domain::ids::{Email, InvitationId, Name, OrgId, Role, UserId};
use crate::domain::organization::{self, FrozenReason, HistoryEntry, Organization, OrganizationEvent};
use crate::engine::{Cause, EntityKey, Input, Status};

/// The Aliyun bill (费用账单) the billing overview links to.
pub const ALIYUN_BILL_URL: &str = "https://usercenter2.aliyun.com/finance/expense-report/expense-detail";

/// One of a user's organizations: their role there, and the organization as last committed.
#[derive(Debug, Clone)]
pub struct Membership {
    pub org_id: OrgId,
    pub role: Role,
    pub state: organization::State,
    pub org: Organization,
}

pub use crate::domain::protocol::{InvitationAccepted, InvitationCreated, OrgLeft};

/// An organization's billing overview (帐单概览).
#[derive(Serialize, ToSchema)]
pub struct BillingView {
    pub org_id: OrgId,
    pub name: Option<Name>,
    /// `active` or `frozen`.
    pub status: &'static str,
    pub frozen_reason: Option<FrozenReason>,
    /// The marketplace subscription paying for it (云市场扣费渠道), if any.
    pub payment_channel: Option<PaymentChannel>,
    /// During an account switch: when the organization is frozen unless a new subscription is bound.
    pub switch_deadline: Option<DateTime<Utc>>,
    /// What to do to unfreeze, for a frozen organization.
    pub recovery: Option<&'static str>,
    pub history: Vec<HistoryEntry>,
}

/// The marketplace payment channel of an organization.
#[derive(Serialize, ToSchema)]
pub struct PaymentChannel {
    /// Always `aliyun_marketplace`.
    pub kind: &'static str,
    pub label: &'static str,
    pub label_en: &'static str,
    pub instance_id: String,
    pub aliyun_account_id: crate::aliyun::spi::AliUid,
    pub bound_at: DateTime<Utc>,
    /// The Aliyun bill (费用账单).
    pub bill_url: &'static str,
}

/// What an operator's organization for a user came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgForUser {
    pub org_id: OrgId,
    pub owner: UserId,
    pub creation: OrgCreation,
}

pub(crate) fn org_key(org: &OrgId) -> Result<EntityKey, AppError> {
    EntityKey::new(organization::KIND, org.as_str()).map_err(|e| AppError::invalid("invalid_org_id", e.to_string()))
}

/// A workflow's reply read through the type that describes it, so that the answer cannot drift from the
/// description unnoticed (a mismatch is an internal error, logged).
pub(crate) fn typed_reply<T: DeserializeOwned>(reply: serde_json::Value) -> Result<T, AppError> {
    serde_json::from_value(reply).map_err(|e| AppError::internal(format!("the workflow's reply: {e}")))
}

/// The input an API caller sends, with its cause.
fn by(user: &User, id: String, event: &OrganizationEvent) -> Result<Input, AppError> {
    let body = serde_json::to_value(event).map_err(AppError::internal)?;
    Ok(Input::domain(id, body, Cause::Api { principal: user.id.to_string() }))
}

impl App {
    /// An organization's state and data, if it exists.
    pub async fn organization(&self, org: &OrgId) -> Result<Option<(organization::State, Organization)>, AppError> {
        let Some(r) = self.engine.record(&org_key(org)?).await? else { return Ok(None) };
        let data: Organization =
            serde_json::from_value(r.data).map_err(|e| AppError::internal(format!("organization data: {e}")))?;
        let st = organization::State::parse(&r.state)
            .ok_or_else(|| AppError::internal(format!("organization state `{}`", r.state)))?;
        Ok(Some((st, data)))
    }

    /// The user's organizations with their role and billing status.
    pub async fn memberships(&self, user: &User) -> Result<Vec<Membership>, AppError> {
        let mut out = Vec::new();
        for (org_id, role) in self.accounts.orgs_of(&user.id).await? {
            if let Some((state, org)) = self.organization(&org_id).await? {
                out.push(Membership { org_id, role, state, org });
            }
        }
        Ok(out)
    }

    /// The user's membership of `org`; not a member reads as "no such organization", so ids do not leak.
    pub async fn membership(&self, user: &User, org: &OrgId) -> Result<Membership, AppError> {
        let (state, data) = self.organization(org).await?.ok_or_else(|| AppError::not_found("no such organization"))?;
        let role = data.role_of(&user.id).ok_or_else(|| AppError::not_found("no such organization"))?;
        Ok(Membership { org_id: org.clone(), role, state, org: data })
    }

    /// Invites an address into the organization with a role (Owners only: [`Role::may_invite`]).
    pub async fn invite(
        &self,
        user: &User,
        org: &OrgId,
        email: Email,
        role: Role,
    ) -> Result<InvitationCreated, AppError> {
        let me = self.membership(user, org).await?;
        if !me.role.may_invite() {
            return Err(AppError::forbidden("insufficient_permission", "only an Owner invites members (权限不足)"));
        }
        let invitation_id = InvitationId::generate();
        let event =
            OrganizationEvent::Invite { invitation_id: invitation_id.clone(), email, role, by: user.id.clone() };
        let input = by(user, format!("invite:{invitation_id}"), &event)?;
        let o = self.engine.send(org_key(org)?, input).await?;
        if o.status != Status::Accepted {
            return Err(AppError::refused(&o, "rejected"));
        }
        typed_reply(o.reply)
    }

    /// Accepts an invitation sent to the user's address, which they must have proved theirs.
    pub async fn accept_invitation(
        &self,
        user: &User,
        invitation: &InvitationId,
    ) -> Result<InvitationAccepted, AppError> {
        // An invitation names an address; only someone who proved the address is theirs may take it.
        if !user.verified() {
            return Err(super::accounts::Error::EmailUnverified.into());
        }
        let org = organization::INVITATIONS
            .get(&self.engine, &[invitation.as_str()])
            .await?
            .ok_or_else(|| AppError::new(super::Kind::NotFound, "invitation_not_found", "no such invitation"))?
            .org_id;
        let event = OrganizationEvent::AcceptInvitation {
            invitation_id: invitation.clone(),
            user_id: user.id.clone(),
            email: user.email.clone(),
        };
        let input = by(user, format!("accept:{invitation}:{}", user.id), &event)?;
        let o = self.engine.send(org_key(&org)?, input).await?;
        if o.status != Status::Accepted {
            return Err(AppError::refused(&o, "rejected"));
        }
        typed_reply(o.reply)
    }

    /// Leaves the organization (the workflow refuses the last Owner: `last_owner`).
    pub async fn leave(&self, user: &User, org: &OrgId) -> Result<OrgLeft, AppError> {
        self.membership(user, org).await?;
        let event = OrganizationEvent::Leave { user_id: user.id.clone() };
        let input = by(user, format!("leave:{}", uuid::Uuid::new_v4()), &event)?;
        let o = self.engine.send(org_key(org)?, input).await?;
        if o.status != Status::Accepted {
            return Err(AppError::refused(&o, "rejected"));
        }
        typed_reply(o.reply)
    }

    /// The billing overview, for Owners and Billing Admins ([`Role::may_manage_billing`]).
    pub async fn billing(&self, user: &User, org: &OrgId) -> Result<BillingView, AppError> {
        let m = self.membership(user, org).await?;
        if !m.role.may_manage_billing() {
            return Err(AppError::forbidden(
                "insufficient_permission",
                "only an Owner or a Billing Admin sees billing (权限不足)",
            ));
        }
        Ok(billing_view(org, m.state, &m.org))
    }

    /// An organization an operator makes for a registered user (support's answer to "I belong to no
    /// organization"); it waits for the owner's verified address.
    pub async fn create_org_for(&self, operator: &str, name: Name, owner: &Email) -> Result<OrgForUser, AppError> {
        let owner = self
            .accounts
            .user_by_email(owner)
            .await?
            .ok_or_else(|| AppError::new(super::Kind::NotFound, "user_not_found", "no user with this e-mail"))?;
        let org = OrgId::generate();
        let creation = self.accounts.create_org_for(&org, name, &owner, operator).await?;
        match creation {
            OrgCreation::Created => tracing::info!(org = %org, operator, "organization created by an operator"),
            OrgCreation::WaitingForVerification => {
                tracing::info!(org = %org, operator, "organization waits for its owner's verification")
            }
        }
        Ok(OrgForUser { org_id: org, owner: owner.id, creation })
    }
}

/// The billing overview of an organization as every adapter shows it (the page renders the same value).
pub fn billing_view(org: &OrgId, st: organization::State, data: &Organization) -> BillingView {
    let channel = data.channel.as_ref().filter(|c| !c.suspended).map(|c| PaymentChannel {
        kind: "aliyun_marketplace",
        label: "云市场扣费渠道",
        label_en: "Alibaba Cloud Marketplace",
        instance_id: c.instance_id.clone(),
        aliyun_account_id: c.aliyun_account_id.clone(),
        bound_at: c.bound_at,
        bill_url: ALIYUN_BILL_URL,
    });
    let recovery = match data.frozen_reason {
        Some(FrozenReason::Arrears) => Some(
            "阿里云云市场余额不足，订阅已被关闭。请在阿里云充值后重新开通云市场扣费渠道（订阅并免登绑定）。\
             / The marketplace closed the subscription for arrears: top up your Aliyun account, then subscribe again and bind it.",
        ),
        Some(FrozenReason::NoPaymentMethod) => Some(
            "没有可用的支付方式。请在阿里云云市场重新订阅 Zilliz Cloud 并绑定到本组织。\
             / No payment method: subscribe on the Alibaba Cloud Marketplace again and bind the subscription to this organization.",
        ),
        Some(FrozenReason::Operator) => Some("组织已被冻结，请提交工单联系我们。/ Frozen by support: please open a ticket."),
        None => None,
    };
    BillingView {
        org_id: org.clone(),
        name: data.name.clone(),
        status: st.billing_status(),
        frozen_reason: data.frozen_reason,
        payment_channel: channel,
        switch_deadline: data.switch_deadline,
        recovery,
        history: data.history.clone(),
    }
}
