//! Who may bind a marketplace subscription to an organization: the one rule that the subscription workflow, the
//! organization workflow and the binding page all ask, so that the page offers exactly what the workflows then
//! accept.
//!
//! A binding needs both sides: the subscription must be active and not bound (nor on its way to being bound), and
//! the caller must manage billing in an organization that has no bound channel. Each side is decided by the
//! workflow that owns it; the page asks both.

use super::ids::Role;
use super::protocol::{OrganizationState, SubscriptionState};

/// Why a binding cannot be made. `code()` is what the API, the pages and the journal show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The caller is not an Owner or Billing Admin of the organization (权限不足).
    InsufficientPermission,
    /// The organization pays through a bound subscription already.
    OrgAlreadyBound,
    /// The subscription is bound to an organization already, or a binding of it is being decided.
    SubscriptionAlreadyBound,
    /// The subscription is not active (still opening, failed, expired or released).
    SubscriptionNotActive,
}

impl Refusal {
    pub fn code(self) -> &'static str {
        match self {
            Refusal::InsufficientPermission => "insufficient_permission",
            Refusal::OrgAlreadyBound => "org_already_bound",
            Refusal::SubscriptionAlreadyBound => "subscription_already_bound",
            Refusal::SubscriptionNotActive => "subscription_not_active",
        }
    }
}

/// The organization's side: may a caller with `role` (none: not a member) bind a subscription to an organization
/// in `state`? Permission first, so that a Member learns about their role, not about the channel.
pub fn organization_takes(role: Option<Role>, state: OrganizationState) -> Result<(), Refusal> {
    use OrganizationState::*;
    if !role.is_some_and(Role::may_manage_billing) {
        return Err(Refusal::InsufficientPermission);
    }
    match state {
        Unbound | Window | Frozen => Ok(()),
        Bound | New => Err(Refusal::OrgAlreadyBound),
    }
}

/// The subscription's side: may a subscription in `state` be bound, given whether it is bound or has a binding
/// being decided (`taken`)?
pub fn subscription_can_be_bound(state: SubscriptionState, taken: bool) -> Result<(), Refusal> {
    if !state.listed() {
        return Err(Refusal::SubscriptionNotActive);
    }
    if taken {
        return Err(Refusal::SubscriptionAlreadyBound);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aliyun::spi::AliUid;
    use crate::domain::ids::{BindingId, Email, OrgId, UserId};
    use crate::domain::organization::{Member, Organization, OrganizationEvent};
    use crate::domain::subscription::{Binding, Subscription, SubscriptionEvent};
    use crate::domain::{organization, subscription};
    use crate::engine::definition::Definition;
    use crate::engine::workflow::{DecideInput, DecideOutput, DynWorkflow};
    use crate::engine::{EntityKey, Event};
    use chrono::Utc;

    /// What a workflow did with an input: took it, refused it with a code, or had no transition for it.
    #[derive(Debug, PartialEq)]
    enum Decided {
        Took,
        Refused(String),
        Ignored,
    }

    fn definition_of(wf: &dyn DynWorkflow) -> Definition {
        let (file, source) = crate::startup::BUILTIN_WORKFLOWS
            .iter()
            .find(|(f, _)| f.contains(wf.kind()))
            .expect("a built-in definition");
        Definition::parse(file, source, &wf.catalog()).expect("it loads")
    }

    /// Runs one input through the real workflow and definition, as the engine's step does.
    fn decide(
        wf: &dyn DynWorkflow,
        key: &EntityKey,
        state: &str,
        data: serde_json::Value,
        body: serde_json::Value,
    ) -> DecideOutput {
        let d = definition_of(wf);
        let event = Event::Domain { body };
        wf.decide(DecideInput { definition: &d, key, state, data: &data, event: &event, now: Utc::now() })
            .expect("decides")
    }

    /// For every role × organization state, the binding page's verdict (`organization_takes`, which it shows as
    /// bindable or with the reason) is what the organization workflow then does with the binding request.
    #[test]
    fn the_page_offers_exactly_the_organizations_the_workflow_binds() {
        let wf = crate::domain::organization::OrganizationWorkflow;
        let org = OrgId::generate();
        let key = EntityKey::new(organization::KIND, org.as_str()).unwrap();
        let (caller, owner) = (UserId::generate(), UserId::generate());
        // An organization in `new` has no members yet, so no page lists it.
        for state in organization::State::ALL.iter().copied().filter(|s| *s != organization::State::New) {
            for role in [None, Some(Role::Member), Some(Role::BillingAdmin), Some(Role::Owner)] {
                let mut data = Organization::default();
                let member =
                    |role| Member { role, email: Email::parse("m@example.com").unwrap(), joined_at: Utc::now() };
                data.members.insert(owner.clone(), member(Role::Owner));
                if let Some(r) = role {
                    data.members.insert(caller.clone(), member(r));
                }
                let body = serde_json::to_value(OrganizationEvent::BindRequest {
                    binding_id: BindingId::generate(),
                    instance_id: "500000000001".into(),
                    ali_uid: AliUid::new("1688000000000001").unwrap(),
                    user_id: caller.clone(),
                })
                .unwrap();
                let out = decide(&wf, &key, state.as_str(), serde_json::to_value(&data).unwrap(), body);
                let did = match out {
                    DecideOutput::Transition { effects, .. } => {
                        let told = effects.messages.iter().map(|(_, m)| m.clone()).next().unwrap_or_default();
                        match told["type"].as_str() {
                            Some("binding_confirmed") => Decided::Took,
                            Some("binding_refused") => Decided::Refused(told["code"].as_str().unwrap_or("").into()),
                            other => panic!("{state}/{role:?}: told the subscription {other:?}"),
                        }
                    }
                    DecideOutput::Ignored { .. } => Decided::Ignored,
                    other => panic!("{state}/{role:?}: {other:?}"),
                };
                let page = match organization_takes(role, state) {
                    Ok(()) => Decided::Took,
                    Err(r) => Decided::Refused(r.code().into()),
                };
                assert_eq!(did, page, "a {role:?} of a {state} organization");
            }
        }
    }

    /// For every subscription state, bound or not, the page's verdict (`subscription_can_be_bound`) is what the
    /// subscription workflow does with the binding (a state without a `bind` transition ignores it: refused).
    #[test]
    fn the_page_offers_exactly_the_subscriptions_the_workflow_binds() {
        let wf = crate::domain::subscription::SubscriptionWorkflow;
        let key = EntityKey::new(subscription::KIND, "500000000001").unwrap();
        let (org, user) = (OrgId::generate(), UserId::generate());
        for state in subscription::State::ALL.iter().copied() {
            for taken in ["free", "bound", "pending"] {
                let mut data =
                    Subscription { ali_uid: Some(AliUid::new("1688000000000001").unwrap()), ..Default::default() };
                match taken {
                    "bound" => data.org = Some(OrgId::generate()),
                    "pending" => {
                        data.binding = Some(Binding {
                            binding_id: BindingId::generate(),
                            org_id: OrgId::generate(),
                            user_id: UserId::generate(),
                            status: "pending".into(),
                            code: None,
                            requested_at: Utc::now(),
                            decided_at: None,
                        })
                    }
                    _ => {}
                }
                let body = serde_json::to_value(SubscriptionEvent::Bind {
                    binding_id: BindingId::generate(),
                    org_id: org.clone(),
                    user_id: user.clone(),
                })
                .unwrap();
                let page = subscription_can_be_bound(state, data.taken());
                let out = decide(&wf, &key, state.as_str(), serde_json::to_value(&data).unwrap(), body);
                match out {
                    DecideOutput::Transition { .. } => {
                        assert_eq!(page, Ok(()), "{state}, {taken}: the workflow took it")
                    }
                    DecideOutput::Rejected { reject, .. } => {
                        assert_eq!(page.map_err(Refusal::code), Err(reject.code.as_str()), "{state}, {taken}")
                    }
                    DecideOutput::Ignored { .. } => assert!(page.is_err(), "{state}, {taken}: ignored, but offered"),
                }
            }
        }
    }

    #[test]
    fn only_managers_of_billing_bind_and_only_to_an_organization_without_a_channel() {
        for state in organization::State::ALL.iter().copied() {
            for role in [None, Some(Role::Member), Some(Role::BillingAdmin), Some(Role::Owner)] {
                let got = organization_takes(role, state);
                let manager = matches!(role, Some(Role::Owner | Role::BillingAdmin));
                let free = !matches!(state, organization::State::Bound | organization::State::New);
                let want = match (manager, free) {
                    (false, _) => Err(Refusal::InsufficientPermission),
                    (true, false) => Err(Refusal::OrgAlreadyBound),
                    (true, true) => Ok(()),
                };
                assert_eq!(got, want, "{role:?} in a {state} organization");
            }
        }
    }

    #[test]
    fn only_an_active_subscription_that_nobody_has_taken_can_be_bound() {
        for state in subscription::State::ALL.iter().copied() {
            for taken in [false, true] {
                let got = subscription_can_be_bound(state, taken);
                let want = match (state == subscription::State::Active, taken) {
                    (false, _) => Err(Refusal::SubscriptionNotActive),
                    (true, true) => Err(Refusal::SubscriptionAlreadyBound),
                    (true, false) => Ok(()),
                };
                assert_eq!(got, want, "{state}, taken: {taken}");
            }
        }
    }
}
