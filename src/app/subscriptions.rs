//! The buyer's use cases of a marketplace subscription: which subscriptions a user may see, the purchased list,
//! the organizations a subscription may be bound to (with the reason when not) and the binding itself. The
//! options and the guard of the binding both ask `domain::binding`, so that the page never offers what the
//! workflow then refuses.

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use super::accounts::User;
use super::orgs::org_key;
use super::{App, AppError};
use crate::aliyun::spi::{AliUid, SkuId};
use crate::domain::binding;
use crate::domain::ids::{BindingId, Name, OrgId, Role};
use crate::domain::subscription::{self, Binding, Subscription, SubscriptionEvent};
use crate::engine::{Cause, EntityKey, Input, Status};

/// A marketplace subscription as its buyer sees it.
#[derive(Serialize, ToSchema)]
pub struct SubscriptionView {
    pub instance_id: String,
    /// The workflow state: `opening`, `active`, `activation_failed`, `expired`, `released`, ...
    pub status: String,
    /// Shown in the purchased list (active).
    pub listed: bool,
    pub aliyun_account_id: Option<AliUid>,
    pub sku_id: Option<SkuId>,
    pub created_at: Option<DateTime<Utc>>,
    pub activated_at: Option<DateTime<Utc>>,
    /// The organization it pays for, once bound.
    pub org_id: Option<OrgId>,
    /// The last binding attempt.
    pub binding: Option<Binding>,
}

/// Which of the caller's organizations the subscription may be bound to, and why not.
#[derive(Serialize, ToSchema)]
pub struct BindingOptions {
    pub instance_id: String,
    pub subscription_status: String,
    pub orgs: Vec<BindingOption>,
    /// Whether "confirm binding" (确认绑定) is possible.
    pub can_confirm: bool,
    /// Why not, for the subscription as a whole: `subscription_already_bound`, `subscription_not_active` or
    /// `no_organizations`.
    pub reason: Option<&'static str>,
    pub binding: Option<Binding>,
}

/// One of the caller's organizations on the binding page.
#[derive(Serialize, ToSchema)]
pub struct BindingOption {
    pub org_id: OrgId,
    pub name: Option<Name>,
    pub role: Role,
    pub bindable: bool,
    /// Why not: `insufficient_permission` or `org_already_bound`.
    pub reason: Option<&'static str>,
}

/// A subscription the user may see, as last committed.
pub struct Visible {
    pub state: subscription::State,
    pub sub: Subscription,
}

fn sub_key(instance: &str) -> Result<EntityKey, AppError> {
    EntityKey::new(subscription::KIND, instance).map_err(|e| AppError::invalid("invalid_instance_id", e.to_string()))
}

/// The view every adapter renders of a subscription.
pub fn view(instance: &str, st: subscription::State, d: &Subscription) -> SubscriptionView {
    SubscriptionView {
        instance_id: instance.to_string(),
        status: st.as_str().to_string(),
        listed: st.listed(),
        aliyun_account_id: d.ali_uid.clone(),
        sku_id: d.sku_id.clone(),
        created_at: d.created_at,
        activated_at: d.activated_at,
        org_id: d.org.clone(),
        binding: d.binding.clone(),
    }
}

/// The refusal a binding guard's [`binding::Refusal`] reads as, with the seed's words.
fn refusal(r: binding::Refusal) -> AppError {
    match r {
        binding::Refusal::InsufficientPermission => {
            AppError::forbidden(r.code(), "only an Owner or a Billing Admin may bind (权限不足)")
        }
        _ => AppError::conflict(
            r.code(),
            "the organization has a marketplace subscription bound already (已绑定云市场订阅)",
        ),
    }
}

impl App {
    /// The subscription, if the user may see it: they came through its 免登 link, or it pays for one of their
    /// organizations. Anything else reads as "not found", so instance ids cannot be probed.
    pub async fn visible_subscription(&self, user: &User, instance: &str) -> Result<Visible, AppError> {
        let not_found = || AppError::not_found("no such subscription");
        let r = self.engine.record(&sub_key(instance)?).await?.ok_or_else(not_found)?;
        let sub: Subscription =
            serde_json::from_value(r.data).map_err(|e| AppError::internal(format!("subscription data: {e}")))?;
        let state = subscription::State::parse(&r.state)
            .ok_or_else(|| AppError::internal(format!("subscription state `{}`", r.state)))?;
        let granted = self.accounts.has_grant(&user.id, instance).await?;
        let member_of_bound = match &sub.org {
            Some(org) => self.accounts.orgs_of(&user.id).await?.iter().any(|(o, _)| o == org),
            None => false,
        };
        if granted || member_of_bound {
            Ok(Visible { state, sub })
        } else {
            Err(not_found())
        }
    }

    /// The purchased list: the subscriptions the user came to through 免登, listed ones only (as the marketplace
    /// console shows them), in the order they were granted.
    pub async fn purchased(&self, user: &User) -> Result<Vec<(String, Visible)>, AppError> {
        let mut items = Vec::new();
        for instance in self.accounts.granted(&user.id).await? {
            if let Ok(v) = self.visible_subscription(user, &instance).await {
                if v.state.listed() {
                    items.push((instance, v));
                }
            }
        }
        Ok(items)
    }

    /// The binding options: what the API answers and the binding page shows.
    pub async fn binding_options(&self, user: &User, instance: &str) -> Result<BindingOptions, AppError> {
        let v = self.visible_subscription(user, instance).await?;
        let orgs: Vec<BindingOption> = self
            .memberships(user)
            .await?
            .into_iter()
            .map(|m| {
                let why = binding::organization_takes(Some(m.role), m.state).err().map(binding::Refusal::code);
                BindingOption { org_id: m.org_id, name: m.org.name, role: m.role, bindable: why.is_none(), reason: why }
            })
            .collect();
        let sub_reason = match binding::subscription_can_be_bound(v.state, v.sub.taken()) {
            Err(r) => Some(r.code()),
            Ok(()) if orgs.is_empty() => Some("no_organizations"),
            Ok(()) => None,
        };
        let any = orgs.iter().any(|o| o.bindable);
        Ok(BindingOptions {
            instance_id: instance.to_string(),
            subscription_status: v.state.to_string(),
            can_confirm: sub_reason.is_none() && any,
            orgs,
            reason: sub_reason,
            binding: v.sub.binding,
        })
    }

    /// Asks the subscription to bind to the organization; the organization decides, asynchronously (follow the
    /// subscription's `binding`).
    pub async fn bind(&self, user: &User, instance: &str, org: &OrgId) -> Result<BindingId, AppError> {
        self.visible_subscription(user, instance).await?;
        let m = self.membership(user, org).await?;
        binding::organization_takes(Some(m.role), m.state).map_err(refusal)?;
        org_key(org)?;
        let binding_id = BindingId::generate();
        let event =
            SubscriptionEvent::Bind { binding_id: binding_id.clone(), org_id: org.clone(), user_id: user.id.clone() };
        let body = serde_json::to_value(event).map_err(AppError::internal)?;
        let cause = Cause::Api { principal: user.id.to_string() };
        let o = self.engine.send(sub_key(instance)?, Input::domain(format!("bind:{binding_id}"), body, cause)).await?;
        match o.status {
            Status::Accepted => Ok(binding_id),
            _ => Err(AppError::refused(&o, "subscription_not_active")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::Kind;

    #[test]
    fn the_binding_guards_refusals_read_as_the_seed_words() {
        let e = refusal(binding::Refusal::InsufficientPermission);
        assert_eq!((e.kind, e.code.as_ref()), (Kind::Forbidden, "insufficient_permission"));
        assert!(e.message.contains("权限不足"));
        let e = refusal(binding::Refusal::OrgAlreadyBound);
        assert_eq!((e.kind, e.code.as_ref()), (Kind::Conflict, "org_already_bound"));
    }
}
