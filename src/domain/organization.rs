//! An organization: members and roles, invitations, and its payment through one marketplace subscription:
//! binding, the account-switch window, freezes and their recovery. The graph is `workflows/organization.toml`.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use super::ids::{Email, InvitationId, Name, OrgId, Role, UserId};

use super::binding;
pub use super::protocol::OrganizationEvent;
pub use super::protocol::OrganizationState as State;
use super::protocol::{InvitationAccepted, InvitationCreated, OrgLeft, SubscriptionEvent};
use crate::aliyun::spi::AliUid;
use crate::engine::definition::Catalog;
use crate::engine::records::RecordTable;
use crate::engine::{Cx, EntityKey, Reject, Signal, Workflow};

/// The entity kind.
pub const KIND: &str = super::protocol::ORGANIZATION;

/// At most this many members (the product's limit).
pub const MAX_MEMBERS: usize = 100;
/// Invitations expire after this long.
pub const INVITATION_TTL: TimeDelta = TimeDelta::hours(48);
/// History entries kept in the record (the journal keeps everything).
const MAX_HISTORY: usize = 200;
/// Bytes of history kept in the record, newest first: a freeze must always fit, whatever came before it.
pub const HISTORY_BUDGET: usize = 12 * 1024;
/// The organization's data stays below this many bytes as JSON. With the limits above (members and pending
/// invitations together at most [`MAX_MEMBERS`], addresses of at most 254 bytes, the history budget) new data
/// stays near 56 KiB at worst; the rest of the 64 KiB a stored value may have is the engine's record around it.
/// Only a record written under the old, looser rules can exceed it; [`fit`] then sheds pending invitations.
pub const DATA_BUDGET: usize = 58 * 1024;

/// A member of the organization.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    pub role: Role,
    pub email: Email,
    pub joined_at: DateTime<Utc>,
}

/// An invitation not yet accepted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Invitation {
    pub email: Email,
    pub role: Role,
    pub invited_by: UserId,
    pub expires_at: DateTime<Utc>,
}

/// The marketplace subscription the organization pays through (云市场扣费渠道).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Channel {
    pub instance_id: String,
    /// The subscribing Aliyun account.
    pub aliyun_account_id: AliUid,
    pub bound_at: DateTime<Utc>,
    /// The marketplace closed it for arrears: still linked, not shown as a payment channel.
    pub suspended: bool,
}

/// Why an organization is frozen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FrozenReason {
    Arrears,
    NoPaymentMethod,
    Operator,
}

impl FrozenReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FrozenReason::Arrears => "arrears",
            FrozenReason::NoPaymentMethod => "no_payment_method",
            FrozenReason::Operator => "operator",
        }
    }
}

/// One change of the payment channel or of the billing status, as the billing overview shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HistoryEntry {
    pub at: DateTime<Utc>,
    /// `bound`, `switched`, `recovered`, `released`, `window_opened`, `frozen`, `unfrozen`, `resumed`, `unlinked`.
    pub kind: String,
    pub instance_id: Option<String>,
    pub aliyun_account_id: Option<String>,
    /// For a switch: the previous Aliyun account.
    pub from_aliyun_account_id: Option<String>,
    pub reason: Option<String>,
    pub detail: String,
}

/// The organization's data.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Organization {
    pub name: Option<Name>,
    pub created_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub members: BTreeMap<UserId, Member>,
    #[serde(default)]
    pub invitations: BTreeMap<InvitationId, Invitation>,
    pub channel: Option<Channel>,
    /// The channel released last (during the switch window), to record the switch.
    pub released_channel: Option<Channel>,
    pub frozen_reason: Option<FrozenReason>,
    pub frozen_at: Option<DateTime<Utc>>,
    pub switch_deadline: Option<DateTime<Utc>>,
    #[serde(default)]
    pub history: Vec<HistoryEntry>,
}

impl Organization {
    pub fn role_of(&self, user: &UserId) -> Option<Role> {
        self.members.get(user).map(|m| m.role)
    }
}

/// Runs `workflows/organization.toml`.
pub struct OrganizationWorkflow;

fn instance_of(s: &Signal<OrganizationEvent>) -> Option<&str> {
    use OrganizationEvent as E;
    match s {
        Signal::Event(
            E::ChannelReleased { instance_id }
            | E::ChannelSuspended { instance_id }
            | E::ChannelResumed { instance_id }
            | E::BindRequest { instance_id, .. },
        ) => Some(instance_id),
        _ => None,
    }
}

fn subscription_key(instance_id: &str) -> Result<EntityKey, Reject> {
    EntityKey::new(super::protocol::SUBSCRIPTION, instance_id)
        .map_err(|e| Reject::new("invalid_instance", e.to_string()))
}

fn push_history(d: &mut Organization, e: HistoryEntry) {
    d.history.push(e);
    if d.history.len() > MAX_HISTORY {
        let extra = d.history.len() - MAX_HISTORY;
        d.history.drain(..extra);
    }
    // Oldest first out until the rest fits the budget; the newest entry always stays.
    let sizes: Vec<usize> = d.history.iter().map(|h| serde_json::to_vec(h).map(|v| v.len() + 1).unwrap_or(0)).collect();
    let mut total: usize = sizes.iter().sum();
    let mut drop = 0;
    while total > HISTORY_BUDGET && drop + 1 < sizes.len() {
        total -= sizes[drop];
        drop += 1;
    }
    d.history.drain(..drop);
}

fn data_len(d: &Organization) -> usize {
    serde_json::to_vec(d).map(|v| v.len()).unwrap_or(usize::MAX)
}

/// Keeps the organization's data within [`DATA_BUDGET`], so that no transition (a freeze above all) can fail
/// because the record outgrew the store's value limit. New data never gets there; a record written under the
/// old rules (addresses with control characters, which JSON spells six bytes each) may: it sheds expired
/// invitations, then the oldest pending ones (an Owner can invite again), each journaled. Members stay.
fn fit(cx: &mut Cx<'_, Organization>) {
    if data_len(cx.data) <= DATA_BUDGET {
        return;
    }
    let now = cx.now;
    let mut by_age: Vec<(DateTime<Utc>, InvitationId)> =
        cx.data.invitations.iter().map(|(id, i)| (i.expires_at, id.clone())).collect();
    // Expired ones first, then by expiry (= by when they were sent).
    by_age.sort_by_key(|(expires, _)| (*expires > now, *expires));
    for (_, id) in by_age {
        if data_len(cx.data) <= DATA_BUDGET {
            break;
        }
        if let Some(inv) = cx.data.invitations.remove(&id) {
            let _ = INVITATIONS.index_delete(cx, &[id.as_str()]);
            cx.note(format!(
                "invitation {id} for {} withdrawn: the organization's record was over its size budget",
                inv.email
            ));
        }
    }
}

/// This organization's id (its entity id), as the messages to subscriptions carry it.
fn own_id(id: &str) -> Result<OrgId, Reject> {
    OrgId::parse(id.to_string()).map_err(|e| Reject::new("invalid_input", e.to_string()))
}

fn entry(at: DateTime<Utc>, kind: &str, detail: impl Into<String>) -> HistoryEntry {
    HistoryEntry {
        at,
        kind: kind.into(),
        instance_id: None,
        aliyun_account_id: None,
        from_aliyun_account_id: None,
        reason: None,
        detail: detail.into(),
    }
}

/// A user's organizations: `member/{user}/{org}`, with the role (kept by this workflow, read by the accounts).
pub const MEMBERS: RecordTable<MemberRow> = RecordTable::index("member/");

/// Where an invitation is: `invitation/{invitation}`, the organization that sent it.
pub const INVITATIONS: RecordTable<InvitationRow> = RecordTable::index("invitation/");

/// A row of [`MEMBERS`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberRow {
    pub role: Role,
}

/// A row of [`INVITATIONS`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InvitationRow {
    pub org_id: OrgId,
}

impl Workflow for OrganizationWorkflow {
    type Data = Organization;
    type Event = OrganizationEvent;

    fn kind(&self) -> &'static str {
        KIND
    }

    fn catalog(&self) -> Catalog {
        Catalog {
            states: State::NAMES.to_vec(),
            events: vec![
                "create",
                "invite",
                "accept_invitation",
                "leave",
                "bind_request",
                "channel_released",
                "channel_suspended",
                "channel_resumed",
                "freeze",
                "unfreeze",
            ],
            guards: vec!["may_bind", "is_channel", "is_suspended_channel", "has_live_channel"],
            actions: vec![
                "create_org",
                "invite",
                "accept_invitation",
                "leave",
                "link_channel",
                "refuse_binding",
                "open_window",
                "freeze_arrears",
                "resume_channel",
                "unlink_channel",
                "freeze_no_payment",
                "operator_freeze",
                "operator_unfreeze",
            ],
            calls: vec![],
        }
    }

    fn event_name(&self, e: &OrganizationEvent) -> String {
        use OrganizationEvent as E;
        match e {
            E::Create { .. } => "create",
            E::Invite { .. } => "invite",
            E::AcceptInvitation { .. } => "accept_invitation",
            E::Leave { .. } => "leave",
            E::BindRequest { .. } => "bind_request",
            E::ChannelReleased { .. } => "channel_released",
            E::ChannelSuspended { .. } => "channel_suspended",
            E::ChannelResumed { .. } => "channel_resumed",
            E::Freeze { .. } => "freeze",
            E::Unfreeze { .. } => "unfreeze",
        }
        .to_string()
    }

    fn guard(&self, name: &str, cx: &Cx<'_, Organization>, s: &Signal<OrganizationEvent>) -> bool {
        let d = &*cx.data;
        match (name, s) {
            ("may_bind", Signal::Event(OrganizationEvent::BindRequest { user_id, .. })) => {
                State::parse(cx.state).is_some_and(|st| binding::organization_takes(d.role_of(user_id), st).is_ok())
            }
            ("is_channel", _) => {
                instance_of(s).is_some() && d.channel.as_ref().map(|c| c.instance_id.as_str()) == instance_of(s)
            }
            ("is_suspended_channel", _) => {
                d.channel.as_ref().is_some_and(|c| c.suspended && Some(c.instance_id.as_str()) == instance_of(s))
            }
            ("has_live_channel", _) => d.channel.as_ref().is_some_and(|c| !c.suspended),
            _ => false,
        }
    }

    fn action(&self, name: &str, cx: &mut Cx<'_, Organization>, s: &Signal<OrganizationEvent>) -> Result<(), Reject> {
        use OrganizationEvent as E;
        let now = cx.now;
        let org_id = cx.key.id.clone();
        // The entity's id as the organization id the replies carry.
        let this = || OrgId::parse(org_id.clone()).map_err(|e| Reject::new("invalid_input", e.to_string()));
        match (name, s) {
            ("create_org", Signal::Event(E::Create { name, owner, owner_email })) => {
                cx.data.name = Some(name.clone());
                cx.data.created_at = Some(now);
                cx.data
                    .members
                    .insert(owner.clone(), Member { role: Role::Owner, email: owner_email.clone(), joined_at: now });
                MEMBERS.index_put(cx, &[owner.as_str(), &org_id], &MemberRow { role: Role::Owner })?;
                cx.note(format!("organization `{name}` created; {owner} is Owner"));
            }
            ("invite", Signal::Event(E::Invite { invitation_id, email, role, by })) => {
                if !cx.data.role_of(by).is_some_and(Role::may_invite) {
                    return Err(Reject::new("insufficient_permission", "only an Owner invites members"));
                }
                if cx.data.members.values().any(|m| &m.email == email) {
                    return Err(Reject::new("already_member", format!("{email} is a member already")));
                }
                cx.data.invitations.retain(|_, i| i.expires_at > now);
                if cx.data.members.len() + cx.data.invitations.len() >= MAX_MEMBERS {
                    return Err(Reject::new("too_many_members", format!("at most {MAX_MEMBERS} members")));
                }
                cx.data.invitations.insert(
                    invitation_id.clone(),
                    Invitation {
                        email: email.clone(),
                        role: *role,
                        invited_by: by.clone(),
                        expires_at: now + INVITATION_TTL,
                    },
                );
                let row = InvitationRow {
                    org_id: OrgId::parse(org_id.clone()).map_err(|e| Reject::new("invalid_input", e.to_string()))?,
                };
                INVITATIONS.index_put(cx, &[invitation_id.as_str()], &row)?;
                cx.answer(&InvitationCreated {
                    invitation_id: invitation_id.clone(),
                    expires_at: now + INVITATION_TTL,
                });
                cx.note(format!("{by} invited {email} as {}", role.as_str()));
            }
            ("accept_invitation", Signal::Event(E::AcceptInvitation { invitation_id, user_id, email })) => {
                let Some(inv) = cx.data.invitations.get(invitation_id).cloned() else {
                    return Err(Reject::new("invitation_not_found", "no such invitation (or accepted already)"));
                };
                if inv.expires_at <= now {
                    return Err(Reject::new("invitation_expired", "the invitation has expired"));
                }
                if &inv.email != email {
                    return Err(Reject::new("invitation_for_another_user", "the invitation is for another e-mail"));
                }
                cx.data.invitations.remove(invitation_id);
                cx.data
                    .members
                    .insert(user_id.clone(), Member { role: inv.role, email: email.clone(), joined_at: now });
                MEMBERS.index_put(cx, &[user_id.as_str(), &org_id], &MemberRow { role: inv.role })?;
                INVITATIONS.index_delete(cx, &[invitation_id.as_str()])?;
                cx.answer(&InvitationAccepted { org_id: this()?, role: inv.role });
                cx.note(format!("{email} joined as {}", inv.role.as_str()));
            }
            ("leave", Signal::Event(E::Leave { user_id })) => {
                let Some(role) = cx.data.role_of(user_id) else {
                    return Err(Reject::new("not_a_member", "not a member of this organization"));
                };
                let owners = cx.data.members.values().filter(|m| m.role == Role::Owner).count();
                if role == Role::Owner && owners == 1 && cx.data.members.len() > 1 {
                    return Err(Reject::new("last_owner", "the last Owner cannot leave while other members remain"));
                }
                cx.data.members.remove(user_id);
                MEMBERS.index_delete(cx, &[user_id.as_str(), &org_id])?;
                cx.answer(&OrgLeft { left: this()? });
                cx.note(format!("{user_id} left the organization"));
            }
            ("link_channel", Signal::Event(E::BindRequest { binding_id, instance_id, ali_uid, user_id })) => {
                let previous = cx.data.channel.take();
                let released = cx.data.released_channel.take();
                let mut h = entry(now, "bound", format!("bound by {user_id}"));
                h.instance_id = Some(instance_id.clone());
                h.aliyun_account_id = Some(ali_uid.to_string());
                match cx.state {
                    "window" => {
                        h.kind = "switched".into();
                        h.from_aliyun_account_id = released.as_ref().map(|c| c.aliyun_account_id.to_string());
                        h.detail = format!(
                            "account switch: {} → {ali_uid} within the window",
                            h.from_aliyun_account_id.as_deref().unwrap_or("?")
                        );
                    }
                    "frozen" => {
                        h.kind = "recovered".into();
                        h.reason = cx.data.frozen_reason.map(|r| r.as_str().to_string());
                        h.from_aliyun_account_id = previous.as_ref().map(|c| c.aliyun_account_id.to_string());
                        h.detail = "a new subscription was bound: the organization is unfrozen".into();
                        if let Some(old) = &previous {
                            // A suspended subscription stays linked until a new one replaces it.
                            let event = SubscriptionEvent::Unlinked { org_id: own_id(&org_id)? };
                            cx.tell(subscription_key(&old.instance_id)?, &event)?;
                        }
                    }
                    _ => {}
                }
                cx.data.channel = Some(Channel {
                    instance_id: instance_id.clone(),
                    aliyun_account_id: ali_uid.clone(),
                    bound_at: now,
                    suspended: false,
                });
                cx.data.frozen_reason = None;
                cx.data.frozen_at = None;
                cx.data.switch_deadline = None;
                cx.note(h.detail.clone());
                push_history(cx.data, h);
                let event =
                    SubscriptionEvent::BindingConfirmed { binding_id: binding_id.clone(), org_id: own_id(&org_id)? };
                cx.tell(subscription_key(instance_id)?, &event)?;
            }
            ("refuse_binding", Signal::Event(E::BindRequest { binding_id, instance_id, user_id, .. })) => {
                let refusal =
                    State::parse(cx.state).map(|st| binding::organization_takes(cx.data.role_of(user_id), st));
                let code = match refusal {
                    Some(Err(r)) => r.code(),
                    // The guard took every binding this rule allows; what reaches here is refused.
                    _ => binding::Refusal::OrgAlreadyBound.code(),
                };
                cx.note(format!("binding of {instance_id} refused: {code}"));
                let event = SubscriptionEvent::BindingRefused {
                    binding_id: binding_id.clone(),
                    org_id: own_id(&org_id)?,
                    code: code.to_string(),
                };
                cx.tell(subscription_key(instance_id)?, &event)?;
            }
            ("open_window", Signal::Event(E::ChannelReleased { instance_id })) => {
                let old = cx.data.channel.take();
                let deadline = now
                    + cx.definition
                        .timers
                        .get("switch-window")
                        .and_then(|d| TimeDelta::from_std(*d).ok())
                        .unwrap_or(TimeDelta::hours(1));
                cx.data.switch_deadline = Some(deadline);
                let mut h = entry(
                    now,
                    "released",
                    format!("subscription {instance_id} released; bind a new one before {deadline}"),
                );
                h.instance_id = Some(instance_id.clone());
                h.aliyun_account_id = old.as_ref().map(|c| c.aliyun_account_id.to_string());
                cx.data.released_channel = old;
                cx.note(h.detail.clone());
                push_history(cx.data, h);
            }
            ("freeze_arrears", _) => {
                if let Some(c) = cx.data.channel.as_mut() {
                    c.suspended = true;
                }
                freeze(cx, FrozenReason::Arrears, "the marketplace closed the subscription for arrears".into());
            }
            ("resume_channel", _) => {
                if let Some(c) = cx.data.channel.as_mut() {
                    c.suspended = false;
                }
                cx.data.frozen_reason = None;
                cx.data.frozen_at = None;
                let mut h = entry(now, "resumed", "arrears cleared (resumeInstance): the organization is unfrozen");
                h.instance_id = cx.data.channel.as_ref().map(|c| c.instance_id.clone());
                cx.note(h.detail.clone());
                push_history(cx.data, h);
            }
            ("unlink_channel", Signal::Event(E::ChannelReleased { instance_id })) => {
                cx.data.channel = None;
                let mut h = entry(now, "unlinked", format!("subscription {instance_id} released while frozen"));
                h.instance_id = Some(instance_id.clone());
                cx.note(h.detail.clone());
                push_history(cx.data, h);
            }
            ("freeze_no_payment", _) => {
                cx.data.released_channel = None;
                cx.data.switch_deadline = None;
                freeze(cx, FrozenReason::NoPaymentMethod, "the switch window closed with no subscription bound".into());
            }
            ("operator_freeze", Signal::Event(E::Freeze { reason })) => {
                cx.data.switch_deadline = None;
                freeze(cx, FrozenReason::Operator, format!("frozen by an operator: {reason}"));
            }
            ("operator_unfreeze", Signal::Event(E::Unfreeze { reason })) => {
                cx.data.frozen_reason = None;
                cx.data.frozen_at = None;
                let mut h = entry(now, "unfrozen", format!("unfrozen by an operator: {reason}"));
                h.reason = Some(reason.clone());
                if cx.target == "window" {
                    let deadline = now
                        + cx.definition
                            .timers
                            .get("switch-window")
                            .and_then(|d| TimeDelta::from_std(*d).ok())
                            .unwrap_or(TimeDelta::hours(1));
                    cx.data.switch_deadline = Some(deadline);
                    h.detail.push_str(&format!("; no live channel: bind a subscription before {deadline}"));
                }
                cx.note(h.detail.clone());
                push_history(cx.data, h);
            }
            (other, _) => {
                return Err(Reject::new("unexpected_event", format!("action `{other}` does not apply to this event")))
            }
        }
        fit(cx);
        Ok(())
    }
}

fn freeze(cx: &mut Cx<'_, Organization>, reason: FrozenReason, detail: String) {
    cx.data.frozen_reason = Some(reason);
    cx.data.frozen_at = Some(cx.now);
    let mut h = entry(cx.now, "frozen", detail);
    h.reason = Some(reason.as_str().to_string());
    h.instance_id = cx.data.channel.as_ref().map(|c| c.instance_id.clone());
    cx.note(h.detail.clone());
    push_history(cx.data, h);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ids::{MAX_EMAIL, MAX_EMAIL_LOCAL, MAX_NAME};

    fn longest_email(i: usize) -> Email {
        let local = format!("{i:03}{}", "x".repeat(MAX_EMAIL_LOCAL - 3));
        let mut domain = String::new();
        while local.len() + 1 + domain.len() + 4 < MAX_EMAIL {
            domain.push_str(&"d".repeat((MAX_EMAIL - local.len() - 1 - domain.len() - 4).min(63)));
            domain.push('.');
        }
        let e = format!("{local}@{domain}com");
        Email::parse(e).expect("a valid address of the greatest length")
    }

    fn uid(i: usize) -> UserId {
        UserId::parse(format!("usr_{i:032}")).unwrap()
    }

    /// The largest organization the API lets anyone build, with the largest history operators can write, fits the
    /// data budget, and its record fits the store's value limit: so a freeze can always be written.
    #[test]
    fn the_largest_organization_fits_the_store() {
        let now = Utc::now();
        let mut d = Organization {
            name: Some(Name::parse("组".repeat(MAX_NAME)).unwrap()),
            created_at: Some(now),
            ..Default::default()
        };
        // Members and pending invitations share MAX_MEMBERS; an invitation is the larger of the two.
        for i in 0..MAX_MEMBERS / 2 {
            d.members.insert(uid(i), Member { role: Role::BillingAdmin, email: longest_email(i), joined_at: now });
        }
        for i in MAX_MEMBERS / 2..MAX_MEMBERS {
            d.invitations.insert(
                InvitationId::parse(format!("inv_{i:032}")).unwrap(),
                Invitation { email: longest_email(i), role: Role::BillingAdmin, invited_by: uid(0), expires_at: now },
            );
        }
        let channel = Channel {
            instance_id: "i".repeat(64),
            aliyun_account_id: AliUid::new("1".repeat(32)).unwrap(),
            bound_at: now,
            suspended: true,
        };
        d.channel = Some(channel.clone());
        d.released_channel = Some(channel);
        d.frozen_reason = Some(FrozenReason::Operator);
        d.frozen_at = Some(now);
        d.switch_deadline = Some(now);
        // Operator reasons are at most 500 characters; CJK ones are three bytes each.
        let reason = "冻".repeat(500);
        for i in 0..MAX_HISTORY * 2 {
            let mut h = entry(now, if i % 2 == 0 { "frozen" } else { "unfrozen" }, format!("by an operator: {reason}"));
            h.reason = Some(reason.clone());
            h.instance_id = Some("i".repeat(64));
            push_history(&mut d, h);
        }
        assert!(d.history.len() > 1 && d.history.len() < MAX_HISTORY);
        let len = data_len(&d);
        assert!(len <= DATA_BUDGET, "{len} bytes > {DATA_BUDGET}");
        let record = crate::engine::EntityRecord {
            kind: KIND.into(),
            id: format!("org_{}", "0".repeat(32)),
            definition: "organization".into(),
            version: 1,
            fingerprint: "f".repeat(64),
            state: "frozen".into(),
            data: serde_json::to_value(&d).unwrap(),
            seq: u64::MAX,
            created_at: now,
            updated_at: now,
            state_since: now,
            timers: Default::default(),
            calls: vec![],
            paused: true,
        };
        let bytes = serde_json::to_vec(&record).unwrap().len();
        assert!(bytes < crate::store::sled_store::MAX_VALUE_BYTES, "{bytes} bytes");
    }

    /// An organization written under the first, looser rules (invitations to addresses full of control
    /// characters, which JSON spells six bytes each) still loads, and its next transition sheds pending
    /// invitations, expired ones first, until the data fits: members stay, each withdrawal is journaled and its
    /// index row removed.
    #[test]
    fn a_record_of_the_old_rules_loads_and_is_brought_within_budget() {
        let now = Utc::now();
        let mut invitations = serde_json::Map::new();
        for i in 0..60 {
            let email = format!("{i:03}{}@x.com", "\u{1}".repeat(200));
            let expires = if i < 5 { now - TimeDelta::hours(1) } else { now + TimeDelta::hours(i) };
            invitations.insert(
                format!("inv_{i:032}"),
                serde_json::json!({"email": email, "role": "member", "invited_by": uid(0), "expires_at": expires}),
            );
        }
        let stored = serde_json::json!({
            "name": "old",
            "created_at": now,
            "members": {uid(0).as_str(): {"role": "owner", "email": "owner@example.com", "joined_at": now}},
            "invitations": invitations,
            "channel": null, "released_channel": null, "frozen_reason": null, "frozen_at": null,
            "switch_deadline": null, "history": [],
        });
        let mut d: Organization = serde_json::from_value(stored).expect("an old record loads");
        assert!(data_len(&d) > DATA_BUDGET);
        let definition = crate::engine::Definition::parse(
            "workflows/organization.toml",
            include_str!("../../workflows/organization.toml"),
            &OrganizationWorkflow.catalog(),
        )
        .unwrap();
        let key = EntityKey::new(KIND, "org_x").unwrap();
        let mut fx = crate::engine::Effects::default();
        let mut cx = Cx {
            key: &key,
            now,
            state: "unbound",
            target: "frozen",
            data: &mut d,
            fx: &mut fx,
            definition: &definition,
        };
        fit(&mut cx);
        assert!(data_len(&d) <= DATA_BUDGET, "{}", data_len(&d));
        assert_eq!(d.members.len(), 1, "members stay");
        let shed = 60 - d.invitations.len();
        assert!(shed >= 5 && d.invitations.len() > 10, "{shed} shed");
        assert!(d.invitations.values().all(|i| i.expires_at > now), "the expired ones went first");
        assert_eq!(fx.index.len(), shed);
        assert_eq!(fx.notes.len(), shed);
    }
}
