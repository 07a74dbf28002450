//! Users, sessions and the grants a 免登 link gives: records in the store, not workflows (nothing about them
//! waits on time). Organizations and memberships are the organization workflow's; this module reads its index.
//!
//! Passwords are hashed with Argon2id (memory-hard) off the async threads. Session tokens are random 256-bit
//! values; only their SHA-256 is stored, so a copy of the store does not log anyone in.

use std::sync::Arc;

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::aliyun::token::SsoLink;
use crate::domain::ids::{Email, Name, OrgId, Password, Role, UserId};
use crate::domain::organization::{self, OrganizationEvent};
use crate::engine::records::{RecordTable, Writes};
use crate::engine::{Cause, Engine, EntityKey, Input, Status};

/// How long a session lasts.
pub const SESSION_TTL: TimeDelta = TimeDelta::hours(12);

/// A registered user.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct User {
    pub id: UserId,
    pub email: Email,
    pub name: Name,
    /// Argon2id PHC string.
    pub password_hash: String,
    pub created_at: DateTime<Utc>,
    /// The organization created with the account (the user is its Owner).
    pub home_org: OrgId,
    /// When the user opened the link mailed to `email`; `None` until then. Accounts of the builds before
    /// verification load as unverified: an address nobody proved is not trusted because it is old.
    #[serde(default)]
    pub email_verified_at: Option<DateTime<Utc>>,
}

impl User {
    /// Whether the user proved that `email` is theirs.
    pub fn verified(&self) -> bool {
        self.email_verified_at.is_some()
    }
}

/// How long a verification link works (service clock).
pub const VERIFICATION_TTL: TimeDelta = TimeDelta::hours(24);

/// A mailed verification link, stored under its token's digest.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Verification {
    user_id: UserId,
    /// The address the link went to: a link verifies that address only.
    email: Email,
    expires_at: DateTime<Utc>,
}

/// An organization an operator created for a user whose address is not verified yet: made when it is.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PendingOrg {
    name: Name,
    /// The operator who asked.
    by: String,
    at: DateTime<Utc>,
}

/// What became of an operator's organization creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrgCreation {
    Created,
    /// The owner's address is not verified: the organization is made once it is.
    WaitingForVerification,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Session {
    user_id: UserId,
    expires_at: DateTime<Utc>,
}

/// A subscription a user may see (they came through its 免登 link).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Grant {
    at: DateTime<Utc>,
}

/// A 免登 grant waiting for the browser's user to log in or register.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PendingGrant {
    instance: String,
    expires_at: DateTime<Utc>,
}

/// A used 免登 link; kept until its window has passed on the clock the check reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct UsedLink {
    at: DateTime<Utc>,
    keep_until: DateTime<Utc>,
}

/// `user/{user}`.
const USERS: RecordTable<User> = RecordTable::records("user/");
/// `email/{address}`: the user of an address (one account per address).
const EMAILS: RecordTable<UserId> = RecordTable::index("email/");
/// `session/{sha256 of the token}`.
const SESSIONS: RecordTable<Session> = RecordTable::records("session/");
/// `grant/{user}/{instance}`.
const GRANTS: RecordTable<Grant> = RecordTable::records("grant/");
/// `pending-grant/{sha256 of the cookie's nonce}`.
const PENDING_GRANTS: RecordTable<PendingGrant> = RecordTable::records("pending-grant/");
/// `sso-link-used/{digest of the signed tuple}`.
const USED_LINKS: RecordTable<UsedLink> = RecordTable::records("sso-link-used/");
/// `sso-used/{token}`: used links as the first builds recorded them (the lower-cased token alone).
const LEGACY_USED_LINKS: RecordTable<serde_json::Value> = RecordTable::records("sso-used/");
/// `email-verify/{sha256 of the link's token}`.
const VERIFICATIONS: RecordTable<Verification> = RecordTable::records("email-verify/");
/// `pending-org/{user}/{org}`: operators' organizations waiting for their owner's verification.
const PENDING_ORGS: RecordTable<PendingOrg> = RecordTable::records("pending-org/");

/// Why an account operation failed. `code()` is what clients see.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("an account with this e-mail exists already")]
    EmailTaken,
    #[error("e-mail or password is wrong")]
    InvalidCredentials,
    #[error("not logged in, or the session has expired")]
    Unauthenticated,
    /// Too many log-ins for this account lately; try again after `retry_after` seconds. Nothing was checked.
    #[error("too many log-in attempts for this account; try again in {retry_after} s")]
    RateLimited { retry_after: u32 },
    /// Every password hashing slot is taken and the queue is full; nothing was done.
    #[error("the service is busy hashing passwords; try again shortly")]
    Busy,
    /// The caller's e-mail address is not verified; nothing was done.
    #[error("verify your e-mail address first: open the link mailed to you (or ask for a new one)")]
    EmailUnverified,
    /// The address is verified already; no mail was sent.
    #[error("this e-mail address is verified already")]
    AlreadyVerified,
    /// The link is unknown, used, expired, or for an address the account no longer has.
    #[error("this verification link is not valid (used, expired, or never sent); ask for a new one")]
    InvalidVerification,
    /// No SMTP server is configured: a verification mail cannot be sent.
    #[error("mail cannot be sent: no SMTP server is configured")]
    MailUnavailable,
    #[error("engine: {0}")]
    Engine(#[from] crate::engine::Error),
    #[error("storage: {0}")]
    Storage(String),
}

impl Error {
    pub fn code(&self) -> &'static str {
        match self {
            Error::EmailTaken => "email_taken",
            Error::InvalidCredentials => "invalid_credentials",
            Error::Unauthenticated => "unauthenticated",
            Error::RateLimited { .. } => "rate_limited",
            Error::Busy => "busy",
            Error::EmailUnverified => "email_unverified",
            Error::AlreadyVerified => "already_verified",
            Error::InvalidVerification => "invalid_verification_link",
            Error::MailUnavailable => "mail_unavailable",
            Error::Engine(e) => e.code(),
            Error::Storage(_) => "storage_unavailable",
        }
    }
}

fn storage<E: std::fmt::Display>(e: E) -> Error {
    Error::Storage(e.to_string())
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// The accounts service.
pub struct Accounts {
    /// The engine, for its store, committer and clock, and to create organizations.
    engine: Engine,
    /// Log-ins per account (keyed by the e-mail's digest), whatever address they come from.
    attempts: crate::ratelimit::Bucket<[u8; 32]>,
    /// Argon2 runs at most this many at once (one per core): each takes 19 MiB and a core for tens of
    /// milliseconds, so unbounded concurrent log-ins would exhaust memory and starve everything else.
    hashing: Arc<tokio::sync::Semaphore>,
    /// Places for callers waiting for a hashing slot ([`HASH_QUEUE_PER_CORE`] per core); without one a caller
    /// is told to come back (`Busy`).
    queue: Arc<tokio::sync::Semaphore>,
    /// Sends verification links; the same mailer for the whole process.
    mailer: Arc<crate::mail::Mailer>,
    /// The base of the links in mail (`MARKETFLOW_PUBLIC_URL`, no trailing slash).
    public_url: String,
    /// Verification mails asked for again, per user: each goes to an address the user may not own, so they are
    /// few (a stranger registering someone's address cannot flood its mailbox).
    resends: crate::ratelimit::Bucket<UserId>,
}

/// Verification mails a user may ask for again, per minute.
const RESENDS_PER_MINUTE: u32 = 2;

/// Log-ins and registrations that may wait for a hashing slot, per core.
const HASH_QUEUE_PER_CORE: usize = 16;

/// What of the accounts' records ends, and when: swept by the engine ([`crate::engine::sweep`]).
pub fn sweep_rules() -> Vec<crate::engine::sweep::Rule> {
    use crate::engine::sweep::RuleClock::Service;
    vec![
        SESSIONS.sweep("session", "expires_at", TimeDelta::zero(), Service),
        VERIFICATIONS.sweep("email_verification", "expires_at", TimeDelta::zero(), Service),
        PENDING_GRANTS.sweep("pending_grant", "expires_at", TimeDelta::zero(), Service),
        USED_LINKS.sweep("used_link", "keep_until", TimeDelta::zero(), Service),
        // Written by the first builds with the time of use only: kept a day, far past any link's window.
        LEGACY_USED_LINKS.sweep("used_link", "at", TimeDelta::days(1), Service),
    ]
}

impl Accounts {
    /// `logins_per_minute`: log-ins per account (`RateLimits::account`).
    /// `public_url`: the base of links in mail.
    pub fn new(
        engine: Engine,
        logins_per_minute: u32,
        mailer: Arc<crate::mail::Mailer>,
        public_url: &str,
    ) -> Arc<Self> {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Arc::new(Self {
            engine,
            attempts: crate::ratelimit::Bucket::new(logins_per_minute),
            hashing: Arc::new(tokio::sync::Semaphore::new(cores)),
            queue: Arc::new(tokio::sync::Semaphore::new(cores * HASH_QUEUE_PER_CORE)),
            mailer,
            public_url: public_url.trim_end_matches('/').to_string(),
            resends: crate::ratelimit::Bucket::new(RESENDS_PER_MINUTE),
        })
    }

    /// Runs Argon2 (`work`) in a hashing slot, waiting in a bounded queue for one. The place in the queue is a
    /// permit too, so a caller that goes away while waiting gives it back (a counter would leak it).
    async fn hash_slot<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> Result<T, Error> {
        let Ok(place) = self.queue.clone().try_acquire_owned() else { return Err(Error::Busy) };
        let permit = self.hashing.clone().acquire_owned().await.map_err(storage)?;
        drop(place);
        tokio::task::spawn_blocking(move || {
            let out = work();
            drop(permit);
            out
        })
        .await
        .map_err(storage)
    }

    fn now(&self) -> DateTime<Utc> {
        self.engine.clock().now()
    }

    async fn commit(&self, w: Writes) -> Result<(), Error> {
        self.engine.write(w).await.map_err(Error::Engine)
    }

    /// Creates a user and their organization (they become its Owner).
    pub async fn register(&self, email: Email, password: Password, name: Name) -> Result<User, Error> {
        let hash = self.hash_slot(move || hash_password(password)).await??;
        let user = {
            // A quick answer for the common case; the store's unique key (`put_new`) is what holds across nodes.
            if EMAILS.exists(&self.engine, &[email.as_str()]).await? {
                return Err(Error::EmailTaken);
            }
            let user = User {
                id: UserId::generate(),
                email: email.clone(),
                name,
                password_hash: hash,
                created_at: self.now(),
                home_org: OrgId::generate(),
                email_verified_at: None,
            };
            let mut w = Writes::new();
            USERS.put(&mut w, &[user.id.as_str()], &user)?;
            EMAILS.put_new(&mut w, &[email.as_str()], &user.id)?;
            match self.commit(w).await {
                Err(Error::Engine(crate::engine::Error::Conflict)) => return Err(Error::EmailTaken),
                other => other?,
            }
            user
        };
        self.ensure_home_org(&user).await?;
        match self.send_verification(&user).await {
            Ok(()) | Err(Error::MailUnavailable) => {}
            // The account exists; the user can ask for the mail again.
            Err(e) => tracing::warn!(user = %user.id, error = %e, "no verification link for a new account"),
        }
        Ok(user)
    }

    /// Stores a fresh verification link for the user's address and mails it (in the background: an SMTP server
    /// that is slow or down must not hold up registration; a lost mail is asked for again).
    async fn send_verification(&self, user: &User) -> Result<(), Error> {
        if !self.mailer.can_send() {
            return Err(Error::MailUnavailable);
        }
        let token = random_token();
        let v = Verification {
            user_id: user.id.clone(),
            email: user.email.clone(),
            expires_at: self.now() + VERIFICATION_TTL,
        };
        let mut w = Writes::new();
        VERIFICATIONS.put(&mut w, &[&sha256_hex(&token)], &v)?;
        self.commit(w).await?;
        let link = format!("{}/verify-email?token={token}", self.public_url);
        let (mailer, to, name, id) = (self.mailer.clone(), user.email.clone(), user.name.clone(), user.id.clone());
        actix_rt::spawn(async move {
            match mailer.send_verification(&to, &name, &link).await {
                Ok(()) => tracing::info!(user = %id, "verification link mailed"),
                Err(e) => tracing::warn!(user = %id, error = %e, "the verification link could not be mailed"),
            }
        });
        Ok(())
    }

    /// Mails a new verification link to a user who is not verified yet (a few per minute per user).
    pub async fn resend_verification(&self, user: &User) -> Result<(), Error> {
        if user.verified() {
            return Err(Error::AlreadyVerified);
        }
        if !self.mailer.can_send() {
            return Err(Error::MailUnavailable);
        }
        self.resends.check(&user.id).map_err(|retry_after| Error::RateLimited { retry_after })?;
        self.send_verification(user).await
    }

    /// Verifies the address a link was mailed to. Opening a link twice is fine while it lasts; an unknown,
    /// expired or stale link (the account's address is another now) is `InvalidVerification`.
    pub async fn verify_email(&self, token: &str) -> Result<User, Error> {
        if token.len() != 64 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::InvalidVerification);
        }
        let key = sha256_hex(&token.to_ascii_lowercase());
        let v = VERIFICATIONS.get(&self.engine, &[&key]).await?.ok_or(Error::InvalidVerification)?;
        if v.expires_at <= self.now() {
            return Err(Error::InvalidVerification);
        }
        let mut user = self.user(&v.user_id).await?.ok_or(Error::InvalidVerification)?;
        if user.email != v.email {
            return Err(Error::InvalidVerification);
        }
        if !user.verified() {
            user.email_verified_at = Some(self.now());
            let mut w = Writes::new();
            USERS.put(&mut w, &[user.id.as_str()], &user)?;
            self.commit(w).await?;
            tracing::info!(user = %user.id, "e-mail address verified");
        }
        self.create_pending_orgs(&user).await?;
        Ok(user)
    }

    /// Creates an organization an operator asked for, owned by `owner`; while the owner's address is not
    /// verified it waits, and is made when the owner verifies (or logs in verified, after a crash between).
    pub async fn create_org_for(
        &self,
        org: &OrgId,
        name: Name,
        owner: &User,
        operator: &str,
    ) -> Result<OrgCreation, Error> {
        if owner.verified() {
            self.create_org(org, name, owner, &format!("create-by:{operator}")).await?;
            return Ok(OrgCreation::Created);
        }
        let p = PendingOrg { name, by: operator.to_string(), at: self.now() };
        let mut w = Writes::new();
        PENDING_ORGS.put(&mut w, &[owner.id.as_str(), org.as_str()], &p)?;
        self.commit(w).await?;
        Ok(OrgCreation::WaitingForVerification)
    }

    /// Makes the organizations that waited for `user`'s verification (idempotent: each creation is an input with
    /// a stable id, and its record goes only after it).
    async fn create_pending_orgs(&self, user: &User) -> Result<(), Error> {
        for (org, p) in PENDING_ORGS.list(&self.engine, &[user.id.as_str()], 1000, false).await? {
            let Ok(org) = OrgId::parse(org) else { continue };
            self.create_org(&org, p.name, user, &format!("create-by:{}", p.by)).await?;
            tracing::info!(org = %org, operator = %p.by, "organization created once its owner verified");
            let mut w = Writes::new();
            PENDING_ORGS.delete(&mut w, &[user.id.as_str(), org.as_str()])?;
            self.commit(w).await?;
        }
        Ok(())
    }

    /// Creates the user's own organization if it does not exist yet (idempotent: the registration may have
    /// stopped between the user's commit and the organization's).
    pub async fn ensure_home_org(&self, user: &User) -> Result<(), Error> {
        let name = Name::parse(format!("{}'s Organization", user.name)).unwrap_or_else(|_| user.name.clone());
        self.create_org(&user.home_org, name, user, "create").await.map(|_| ())
    }

    /// Creates an organization owned by `owner` (registration, or an operator for support).
    pub async fn create_org(&self, org: &OrgId, name: Name, owner: &User, input_id: &str) -> Result<Status, Error> {
        let key = EntityKey::new(organization::KIND, org.as_str()).map_err(|e| Error::Storage(e.to_string()))?;
        let body = serde_json::to_value(OrganizationEvent::Create {
            name,
            owner: owner.id.clone(),
            owner_email: owner.email.clone(),
        })
        .map_err(storage)?;
        let o = self
            .engine
            .send(key, Input::domain(input_id, body, Cause::Api { principal: owner.id.to_string() }))
            .await?;
        Ok(o.status)
    }

    /// Checks a password and opens a session.
    pub async fn login(&self, email: &Email, password: Password) -> Result<(String, DateTime<Utc>, User), Error> {
        let key: [u8; 32] = Sha256::digest(email.as_str().as_bytes()).into();
        self.attempts.check(&key).map_err(|retry_after| Error::RateLimited { retry_after })?;
        let user = match self.user_by_email(email).await? {
            Some(u) => u,
            None => {
                // Same work as a real check, so timing does not tell which e-mails exist; and the same `Busy`.
                self.hash_slot(move || verify_password(password, dummy_hash())).await?;
                return Err(Error::InvalidCredentials);
            }
        };
        let hash = user.password_hash.clone();
        if !self.hash_slot(move || verify_password(password, &hash)).await? {
            return Err(Error::InvalidCredentials);
        }
        let (token, expires_at) = self.open_session(&user.id).await?;
        self.ensure_home_org(&user).await?;
        if user.verified() {
            self.create_pending_orgs(&user).await?;
        }
        Ok((token, expires_at, user))
    }

    async fn open_session(&self, user: &UserId) -> Result<(String, DateTime<Utc>), Error> {
        let token = random_token();
        let expires_at = self.now() + SESSION_TTL;
        let mut w = Writes::new();
        SESSIONS.put(&mut w, &[&sha256_hex(&token)], &Session { user_id: user.clone(), expires_at })?;
        self.commit(w).await?;
        Ok((token, expires_at))
    }

    /// The user of a session token.
    pub async fn authenticate(&self, token: &str) -> Result<User, Error> {
        if token.is_empty() || token.len() > 128 {
            return Err(Error::Unauthenticated);
        }
        let s = SESSIONS.get(&self.engine, &[&sha256_hex(token)]).await?.ok_or(Error::Unauthenticated)?;
        if s.expires_at <= self.now() {
            return Err(Error::Unauthenticated);
        }
        self.user(&s.user_id).await?.ok_or(Error::Unauthenticated)
    }

    pub async fn logout(&self, token: &str) -> Result<(), Error> {
        let mut w = Writes::new();
        SESSIONS.delete(&mut w, &[&sha256_hex(token)])?;
        self.commit(w).await
    }

    pub async fn user(&self, id: &UserId) -> Result<Option<User>, Error> {
        Ok(USERS.get(&self.engine, &[id.as_str()]).await?)
    }

    pub async fn user_by_email(&self, email: &Email) -> Result<Option<User>, Error> {
        match EMAILS.get(&self.engine, &[email.as_str()]).await? {
            Some(id) => self.user(&id).await,
            None => Ok(None),
        }
    }

    /// The organizations a user belongs to, with their role (from the organization workflow's index).
    pub async fn orgs_of(&self, user: &UserId) -> Result<Vec<(OrgId, Role)>, Error> {
        let rows = organization::MEMBERS.list(&self.engine, &[user.as_str()], 1000, false).await?;
        Ok(rows.into_iter().filter_map(|(org, row)| OrgId::parse(org).ok().map(|org| (org, row.role))).collect())
    }

    /// Records that `user` may see subscription `instance` (they came through its 免登 link).
    pub async fn grant(&self, user: &UserId, instance: &str) -> Result<(), Error> {
        let mut w = Writes::new();
        GRANTS.put(&mut w, &[user.as_str(), instance], &Grant { at: self.now() })?;
        self.commit(w).await
    }

    pub async fn has_grant(&self, user: &UserId, instance: &str) -> Result<bool, Error> {
        Ok(GRANTS.exists(&self.engine, &[user.as_str(), instance]).await?)
    }

    /// The subscriptions a user came to through 免登.
    pub async fn granted(&self, user: &UserId) -> Result<Vec<String>, Error> {
        Ok(GRANTS
            .list(&self.engine, &[user.as_str()], 1000, false)
            .await?
            .into_iter()
            .map(|(instance, _)| instance)
            .collect())
    }

    /// A grant for a browser that has no session yet: a nonce for its cookie, redeemed at login or registration.
    pub async fn pending_grant(&self, instance: &str) -> Result<String, Error> {
        let nonce = random_token();
        let mut w = Writes::new();
        let p = PendingGrant { instance: instance.to_string(), expires_at: self.now() + TimeDelta::hours(1) };
        PENDING_GRANTS.put(&mut w, &[&sha256_hex(&nonce)], &p)?;
        self.commit(w).await?;
        Ok(nonce)
    }

    /// Turns a browser's pending grant into the user's grant; returns the instance.
    pub async fn redeem_pending_grant(&self, nonce: &str, user: &UserId) -> Result<Option<String>, Error> {
        if nonce.is_empty() {
            return Ok(None);
        }
        let key = sha256_hex(nonce);
        let Some(p) = PENDING_GRANTS.get(&self.engine, &[&key]).await? else {
            return Ok(None);
        };
        let mut w = Writes::new();
        PENDING_GRANTS.delete(&mut w, &[&key])?;
        let live = p.expires_at > self.now();
        if live {
            GRANTS.put(&mut w, &[user.as_str(), &p.instance], &Grant { at: self.now() })?;
        }
        self.commit(w).await?;
        Ok(live.then_some(p.instance))
    }

    /// Marks a 免登 link as used; `false` if it was used before (a replayed link). The record says until when it
    /// must be kept: past `keep_until` (the link's timeStamp + window, on the clock the check reads) the window
    /// refuses the link anyway, so a record swept then cannot let it be replayed.
    pub async fn use_sso_link(&self, link: &SsoLink, keep_until: DateTime<Utc>) -> Result<bool, Error> {
        let digest = link.digest();
        // The build before keyed the record on the lower-cased token alone: a link used just before an upgrade
        // is still within its window after it.
        if USED_LINKS.exists(&self.engine, &[&digest]).await?
            || LEGACY_USED_LINKS.exists(&self.engine, &[link.token.as_str()]).await?
        {
            return Ok(false);
        }
        let mut w = Writes::new();
        // Single use across nodes: the store refuses a second record of the same link.
        USED_LINKS.put_new(&mut w, &[&digest], &UsedLink { at: self.now(), keep_until })?;
        match self.commit(w).await {
            Err(Error::Engine(crate::engine::Error::Conflict)) => Ok(false),
            other => other.map(|()| true),
        }
    }
}

/// A random 256-bit token, hex: sessions, links, nonces and form tokens (the pages and the console use it too).
pub fn random_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// A hash of a random password, checked when the e-mail is unknown so both paths cost the same.
fn dummy_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default().hash_password(random_token().as_bytes(), &salt).map(|h| h.to_string()).unwrap_or_default()
    })
}

/// Blocking: runs in a hashing slot.
fn hash_password(password: Password) -> Result<String, Error> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default().hash_password(password.expose().as_bytes(), &salt).map(|h| h.to_string()).map_err(storage)
}

/// Blocking: runs in a hashing slot.
fn verify_password(password: Password, hash: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else { return false };
    Argon2::default().verify_password(password.expose().as_bytes(), &parsed).is_ok()
}
