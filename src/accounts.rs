//! Users, sessions and the grants a 免登 link gives: records in the store, not workflows (nothing about them
//! waits on time). Organizations and memberships are the organization workflow's; this module reads its index.
//!
//! Passwords are hashed with Argon2id (memory-hard) off the async threads. Session tokens are random 256-bit
//! values; only their SHA-256 is stored, so a copy of the store does not log anyone in.

use std::ops::Bound;
use std::sync::Arc;

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::aliyun::token::SsoLink;
use crate::domain::ids::{Email, Name, OrgId, Password, Role, UserId};
use crate::domain::organization::{self, OrganizationEvent};
use crate::engine::{Cause, Engine, EntityKey, Input, Status};
use crate::store::{prefix_end, Batch, Table};

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
    /// Serialises registrations, so that two requests for one e-mail cannot both pass the uniqueness check
    /// (one node; a shared store would use a conditional insert instead).
    register_lock: tokio::sync::Mutex<()>,
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
    use crate::engine::sweep::{Rule, RuleClock::Service};
    let rule = |kind, prefix, field, grace| Rule { kind, prefix, field, grace, clock: Service };
    vec![
        rule("session", "session/", "expires_at", TimeDelta::zero()),
        rule("email_verification", "email-verify/", "expires_at", TimeDelta::zero()),
        rule("pending_grant", "pending-grant/", "expires_at", TimeDelta::zero()),
        rule("used_link", "sso-link-used/", "keep_until", TimeDelta::zero()),
        // Written by the first builds with the time of use only: kept a day, far past any link's window.
        rule("used_link", "sso-used/", "at", TimeDelta::days(1)),
    ]
}

fn user_key(id: &UserId) -> Vec<u8> {
    format!("user/{id}").into_bytes()
}
fn email_key(email: &Email) -> Vec<u8> {
    format!("email/{email}").into_bytes()
}
fn session_key(token: &str) -> Vec<u8> {
    format!("session/{}", sha256_hex(token)).into_bytes()
}
fn grant_key(user: &UserId, instance: &str) -> Vec<u8> {
    format!("grant/{user}/{instance}").into_bytes()
}
fn pending_grant_key(nonce: &str) -> Vec<u8> {
    format!("pending-grant/{}", sha256_hex(nonce)).into_bytes()
}
fn sso_used_key(link: &SsoLink) -> Vec<u8> {
    format!("sso-link-used/{}", link.digest()).into_bytes()
}
fn verification_key(token: &str) -> Vec<u8> {
    format!("email-verify/{}", sha256_hex(token)).into_bytes()
}
fn pending_orgs_prefix(user: &UserId) -> Vec<u8> {
    format!("pending-org/{user}/").into_bytes()
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
            register_lock: tokio::sync::Mutex::new(()),
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

    fn get<T: serde::de::DeserializeOwned>(&self, table: Table, key: &[u8]) -> Result<Option<T>, Error> {
        match self.engine.store().get(table, key).map_err(storage)? {
            Some(b) => Ok(Some(serde_json::from_slice(&b).map_err(storage)?)),
            None => Ok(None),
        }
    }

    async fn commit(&self, batch: Batch) -> Result<(), Error> {
        self.engine.committer().commit(batch).await.map_err(|e| Error::Engine(e.into()))
    }

    /// Creates a user and their organization (they become its Owner).
    pub async fn register(&self, email: Email, password: Password, name: Name) -> Result<User, Error> {
        let hash = self.hash_slot(move || hash_password(password)).await??;
        let user = {
            let _guard = self.register_lock.lock().await;
            if self.get::<UserId>(Table::Index, &email_key(&email))?.is_some() {
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
            let mut b = Batch::new();
            b.put(Table::Records, user_key(&user.id), serde_json::to_vec(&user).map_err(storage)?);
            b.put(Table::Index, email_key(&email), serde_json::to_vec(&user.id).map_err(storage)?);
            self.commit(b).await?;
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
        let mut b = Batch::new();
        b.put(Table::Records, verification_key(&token), serde_json::to_vec(&v).map_err(storage)?);
        self.commit(b).await?;
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
        let key = verification_key(&token.to_ascii_lowercase());
        let v: Verification = self.get(Table::Records, &key)?.ok_or(Error::InvalidVerification)?;
        if v.expires_at <= self.now() {
            return Err(Error::InvalidVerification);
        }
        let mut user = self.user(&v.user_id)?.ok_or(Error::InvalidVerification)?;
        if user.email != v.email {
            return Err(Error::InvalidVerification);
        }
        if !user.verified() {
            user.email_verified_at = Some(self.now());
            let mut b = Batch::new();
            b.put(Table::Records, user_key(&user.id), serde_json::to_vec(&user).map_err(storage)?);
            self.commit(b).await?;
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
        let mut key = pending_orgs_prefix(&owner.id);
        key.extend_from_slice(org.as_str().as_bytes());
        let mut b = Batch::new();
        b.put(Table::Records, key, serde_json::to_vec(&p).map_err(storage)?);
        self.commit(b).await?;
        Ok(OrgCreation::WaitingForVerification)
    }

    /// Makes the organizations that waited for `user`'s verification (idempotent: each creation is an input with
    /// a stable id, and its record goes only after it).
    async fn create_pending_orgs(&self, user: &User) -> Result<(), Error> {
        let prefix = pending_orgs_prefix(&user.id);
        let rows = self
            .engine
            .store()
            .scan(Table::Records, Bound::Included(prefix.clone()), prefix_end(&prefix), 1000, false)
            .map_err(storage)?;
        for (k, v) in rows {
            let Ok(org) = OrgId::parse(String::from_utf8_lossy(&k[prefix.len()..]).to_string()) else { continue };
            let p: PendingOrg = serde_json::from_slice(&v).map_err(storage)?;
            self.create_org(&org, p.name, user, &format!("create-by:{}", p.by)).await?;
            tracing::info!(org = %org, operator = %p.by, "organization created once its owner verified");
            let mut b = Batch::new();
            b.delete(Table::Records, k);
            self.commit(b).await?;
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
        let user = match self.user_by_email(email)? {
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
        let mut b = Batch::new();
        let s = Session { user_id: user.clone(), expires_at };
        b.put(Table::Records, session_key(&token), serde_json::to_vec(&s).map_err(storage)?);
        self.commit(b).await?;
        Ok((token, expires_at))
    }

    /// The user of a session token.
    pub fn authenticate(&self, token: &str) -> Result<User, Error> {
        if token.is_empty() || token.len() > 128 {
            return Err(Error::Unauthenticated);
        }
        let s: Session = self.get(Table::Records, &session_key(token))?.ok_or(Error::Unauthenticated)?;
        if s.expires_at <= self.now() {
            return Err(Error::Unauthenticated);
        }
        self.user(&s.user_id)?.ok_or(Error::Unauthenticated)
    }

    pub async fn logout(&self, token: &str) -> Result<(), Error> {
        let mut b = Batch::new();
        b.delete(Table::Records, session_key(token));
        self.commit(b).await
    }

    pub fn user(&self, id: &UserId) -> Result<Option<User>, Error> {
        self.get(Table::Records, &user_key(id))
    }

    pub fn user_by_email(&self, email: &Email) -> Result<Option<User>, Error> {
        match self.get::<UserId>(Table::Index, &email_key(email))? {
            Some(id) => self.user(&id),
            None => Ok(None),
        }
    }

    /// The organizations a user belongs to, with their role (from the organization workflow's index).
    pub fn orgs_of(&self, user: &UserId) -> Result<Vec<(OrgId, Role)>, Error> {
        let prefix = format!("member/{user}/").into_bytes();
        let rows = self
            .engine
            .store()
            .scan(Table::Index, Bound::Included(prefix.clone()), prefix_end(&prefix), 1000, false)
            .map_err(storage)?;
        let mut out = Vec::new();
        for (k, v) in rows {
            let org = String::from_utf8_lossy(&k[prefix.len()..]).to_string();
            let role: serde_json::Value = serde_json::from_slice(&v).map_err(storage)?;
            let role = role.get("role").and_then(|r| r.as_str()).and_then(|r| Role::parse(r).ok());
            if let (Ok(org), Some(role)) = (OrgId::parse(org), role) {
                out.push((org, role));
            }
        }
        Ok(out)
    }

    /// Records that `user` may see subscription `instance` (they came through its 免登 link).
    pub async fn grant(&self, user: &UserId, instance: &str) -> Result<(), Error> {
        let mut b = Batch::new();
        b.put(
            Table::Records,
            grant_key(user, instance),
            serde_json::to_vec(&json!({ "at": self.now() })).map_err(storage)?,
        );
        self.commit(b).await
    }

    pub fn has_grant(&self, user: &UserId, instance: &str) -> Result<bool, Error> {
        Ok(self.engine.store().get(Table::Records, &grant_key(user, instance)).map_err(storage)?.is_some())
    }

    /// The subscriptions a user came to through 免登.
    pub fn granted(&self, user: &UserId) -> Result<Vec<String>, Error> {
        let prefix = format!("grant/{user}/").into_bytes();
        let rows = self
            .engine
            .store()
            .scan(Table::Records, Bound::Included(prefix.clone()), prefix_end(&prefix), 1000, false)
            .map_err(storage)?;
        Ok(rows.iter().map(|(k, _)| String::from_utf8_lossy(&k[prefix.len()..]).to_string()).collect())
    }

    /// A grant for a browser that has no session yet: a nonce for its cookie, redeemed at login or registration.
    pub async fn pending_grant(&self, instance: &str) -> Result<String, Error> {
        let nonce = random_token();
        let mut b = Batch::new();
        let v = json!({ "instance": instance, "expires_at": self.now() + TimeDelta::hours(1) });
        b.put(Table::Records, pending_grant_key(&nonce), serde_json::to_vec(&v).map_err(storage)?);
        self.commit(b).await?;
        Ok(nonce)
    }

    /// Turns a browser's pending grant into the user's grant; returns the instance.
    pub async fn redeem_pending_grant(&self, nonce: &str, user: &UserId) -> Result<Option<String>, Error> {
        let Some(v) = self.get::<serde_json::Value>(Table::Records, &pending_grant_key(nonce))? else {
            return Ok(None);
        };
        let expires = v.get("expires_at").and_then(|e| serde_json::from_value::<DateTime<Utc>>(e.clone()).ok());
        let Some(instance) = v.get("instance").and_then(|i| i.as_str()).map(String::from) else {
            return Ok(None);
        };
        let mut b = Batch::new();
        b.delete(Table::Records, pending_grant_key(nonce));
        if expires.is_some_and(|e| e > self.now()) {
            b.put(
                Table::Records,
                grant_key(user, &instance),
                serde_json::to_vec(&json!({ "at": self.now() })).map_err(storage)?,
            );
            self.commit(b).await?;
            return Ok(Some(instance));
        }
        self.commit(b).await?;
        Ok(None)
    }

    /// Marks a 免登 link as used; `false` if it was used before (a replayed link). The record says until when it
    /// must be kept: past `keep_until` (the link's timeStamp + window, on the clock the check reads) the window
    /// refuses the link anyway, so a record swept then cannot let it be replayed.
    pub async fn use_sso_link(&self, link: &SsoLink, keep_until: DateTime<Utc>) -> Result<bool, Error> {
        let _guard = self.register_lock.lock().await;
        let key = sso_used_key(link);
        // The build before keyed the record on the lower-cased token alone: a link used just before an upgrade
        // is still within its window after it.
        let legacy = format!("sso-used/{}", link.token.as_str()).into_bytes();
        for k in [&key, &legacy] {
            if self.engine.store().get(Table::Records, k).map_err(storage)?.is_some() {
                return Ok(false);
            }
        }
        let mut b = Batch::new();
        let record = json!({ "at": self.now(), "keep_until": keep_until });
        b.put(Table::Records, key, serde_json::to_vec(&record).map_err(storage)?);
        self.commit(b).await?;
        Ok(true)
    }
}

fn random_token() -> String {
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
