//! The 免登 hand-off's use case, once the link's token and parameters were checked at the edge: the link is
//! within its window and never used before; a bound subscription leads to its organization's billing page and an
//! unbound one to the binding page, with a grant for the logged-in user, or a pending grant that a login or a
//! registration redeems.

use chrono::TimeDelta;

use super::accounts::User;
use super::App;
use crate::aliyun::spi::{beijing_to_utc, within_window};
use crate::aliyun::token::SsoLink;
use crate::domain::subscription::{self, Subscription};
use crate::engine::EntityKey;

/// Where the hand-off goes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandOff {
    /// The user is logged in and holds the grant now: on to `target`.
    Enter { target: String },
    /// No session: log in (or register) first; `nonce` is the pending grant the browser keeps for an hour.
    LogIn { nonce: String, target: String },
}

/// Why a hand-off was refused; every one has its words for the buyer (`http::sso`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Outside the service's window around the link's time stamp.
    Expired,
    /// The link was used before (single use).
    Used,
    /// No such subscription (yet: activation takes 1–5 minutes).
    NotFound,
    /// The subscription was closed.
    Released,
    /// The store could not record the use or the grant: nothing was granted, the buyer tries again.
    Unavailable,
}

impl Refusal {
    pub fn code(self) -> &'static str {
        match self {
            Refusal::Expired => "link_expired",
            Refusal::Used => "link_used",
            Refusal::NotFound => "subscription_not_found",
            Refusal::Released => "subscription_released",
            Refusal::Unavailable => "retry",
        }
    }
}

impl App {
    /// Takes a 免登 link whose token is valid, for the browser's user if it has a session.
    pub async fn sso_hand_off(
        &self,
        link: SsoLink,
        window: TimeDelta,
        user: Option<&User>,
    ) -> Result<HandOff, Refusal> {
        let now = self.engine.clock().now();
        if !within_window(link.time_stamp, now, window) {
            return Err(Refusal::Expired);
        }
        match self.accounts.use_sso_link(&link, beijing_to_utc(link.time_stamp) + window).await {
            Ok(true) => {}
            Ok(false) => return Err(Refusal::Used),
            Err(e) => {
                tracing::error!(error = %e, "免登: storage failed");
                return Err(Refusal::Unavailable);
            }
        }
        let instance = link.instance_id.to_string();
        let record = match EntityKey::new(subscription::KIND, &instance) {
            Ok(k) => self.engine.record(&k).await.ok().flatten(),
            Err(_) => None,
        };
        let Some(record) = record else { return Err(Refusal::NotFound) };
        if subscription::State::parse(&record.state) == Some(subscription::State::Released) {
            return Err(Refusal::Released);
        }
        let data: Subscription = serde_json::from_value(record.data).unwrap_or_default();
        let target = match &data.org {
            Some(org) => format!("/orgs/{org}/billing"),
            None => format!(
                "/bind/{}",
                percent_encoding::utf8_percent_encode(&instance, percent_encoding::NON_ALPHANUMERIC)
            ),
        };
        match user {
            Some(u) => {
                // Without the grant the binding page would not know the subscription: refuse rather than mislead.
                if let Err(e) = self.accounts.grant(&u.id, &instance).await {
                    tracing::error!(error = %e, "免登: could not record the grant");
                    return Err(Refusal::Unavailable);
                }
                Ok(HandOff::Enter { target })
            }
            None => match self.accounts.pending_grant(&instance).await {
                Ok(nonce) => Ok(HandOff::LogIn { nonce, target }),
                Err(e) => {
                    tracing::error!(error = %e, "免登: storage failed");
                    Err(Refusal::Unavailable)
                }
            },
        }
    }
}
