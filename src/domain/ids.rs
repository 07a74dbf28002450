//! Identifiers and small values parsed at the edge: past the HTTP layer there are no raw strings for these.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a value was refused, with a stable code for clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    pub field: &'static str,
    pub code: &'static str,
    pub message: String,
}

fn invalid(field: &'static str, code: &'static str, message: impl Into<String>) -> Invalid {
    Invalid { field, code, message: message.into() }
}

macro_rules! string_id {
    ($(#[$m:meta])* $name:ident, $field:literal, $check:expr) => {
        string_id!($(#[$m])* $name, $field, $check, stored = $check);
    };
    // `stored` is the check a value read back from the store must pass: the rule of the oldest build that
    // wrote such values. A rule tightened at the edge must not make old records unreadable.
    ($(#[$m:meta])* $name:ident, $field:literal, $check:expr, stored = $stored:expr) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// The rule for new input, at the edge.
            pub fn parse(s: impl Into<String>) -> Result<Self, Invalid> {
                let s: String = s.into();
                let check: fn(&str) -> Result<String, Invalid> = $check;
                check(&s).map(Self)
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        /// Deserialisation reads stored records and messages: the `stored` rule.
        impl TryFrom<String> for $name {
            type Error = Invalid;
            fn try_from(s: String) -> Result<Self, Invalid> {
                let check: fn(&str) -> Result<String, Invalid> = $stored;
                check(&s).map(Self)
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

fn token_like(field: &'static str, prefix: &'static str, s: &str) -> Result<String, Invalid> {
    let ok = s.starts_with(prefix)
        && s.len() <= 64
        && s.len() > prefix.len()
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(s.to_string())
    } else {
        Err(invalid(field, "invalid_id", format!("not a valid {field}")))
    }
}

string_id!(
    /// A user, `usr_<32 hex>`.
    UserId, "user_id", |s| token_like("user_id", "usr_", s)
);
string_id!(
    /// An organization, `org_<32 hex>`; also its entity id.
    OrgId, "org_id", |s| token_like("org_id", "org_", s)
);
string_id!(
    /// An invitation, `inv_<32 hex>`.
    InvitationId, "invitation_id", |s| token_like("invitation_id", "inv_", s)
);
string_id!(
    /// A binding attempt, `bnd_<32 hex>`.
    BindingId, "binding_id", |s| token_like("binding_id", "bnd_", s)
);
string_id!(
    /// An e-mail address, lower-cased; the login name. Strict at the edge (see [`strict_email`]); records
    /// written before the rule was tightened still load.
    Email, "email", strict_email, stored = legacy_email
);
string_id!(
    /// A display name (of a person or an organization): 1 to 100 characters, no control, bidi-override or
    /// invisible formatting characters (they let a name pose as another in a list or an e-mail).
    Name, "name", strict_name, stored = legacy_name
);

/// Longest local part (RFC 5321 §4.5.3.1.1), in bytes.
pub const MAX_EMAIL_LOCAL: usize = 64;
/// Longest address as a path allows (RFC 5321 §4.5.3.1.3 less the brackets), in bytes.
pub const MAX_EMAIL: usize = 254;
/// Longest domain label (RFC 1035), in bytes.
const MAX_LABEL: usize = 63;
/// Longest display name, in characters.
pub const MAX_NAME: usize = 100;

/// Characters that change how text around them is displayed without being seen: bidi embeddings,
/// overrides and isolates, marks, zero-width joiners and spaces, the word joiner, the BOM, the soft hyphen,
/// variation selectors, Hangul fillers, tag characters.
fn invisible_format(c: char) -> bool {
    matches!(c, '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}'
        | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{206F}'
        | '\u{3164}' | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}' | '\u{FFA0}' | '\u{FFF0}'..='\u{FFFB}'
        | '\u{1D173}'..='\u{1D17A}' | '\u{E0000}'..='\u{E0FFF}')
}

/// Printable and plain: no control, white-space or invisible formatting character.
fn plain(c: char) -> bool {
    !c.is_control() && !c.is_whitespace() && !invisible_format(c)
}

/// One `@`; a local part of 1-64 bytes of RFC 5322 atext (or non-ASCII letters and digits), dots only between
/// characters; a domain of dot-separated labels of letters, digits and inner hyphens, 1-63 bytes each, with at
/// least one dot; at most 254 bytes in all. Trimmed and lower-cased first.
fn strict_email(s: &str) -> Result<String, Invalid> {
    let bad = || invalid("email", "invalid_email", "not a valid e-mail address");
    let t = s.trim().to_lowercase();
    if t.len() > MAX_EMAIL || !t.chars().all(plain) {
        return Err(bad());
    }
    let Some((local, domain)) = t.split_once('@') else { return Err(bad()) };
    let atext = |c: char| {
        c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || (!c.is_ascii() && c.is_alphanumeric())
    };
    let local_ok = !local.is_empty()
        && local.len() <= MAX_EMAIL_LOCAL
        && local.split('.').all(|part| !part.is_empty() && part.chars().all(atext));
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= MAX_LABEL
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c == '-' || c.is_alphanumeric())
    };
    let domain_ok = domain.contains('.') && domain.split('.').all(label_ok);
    if local_ok && domain_ok {
        Ok(t)
    } else {
        Err(bad())
    }
}

/// The rule of the first builds: what their records may hold.
fn legacy_email(s: &str) -> Result<String, Invalid> {
    let t = s.trim().to_lowercase();
    let valid = t.len() <= 254
        && t.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !t.contains(char::is_whitespace)
                && t.matches('@').count() == 1
        });
    if valid {
        Ok(t)
    } else {
        Err(invalid("email", "invalid_email", "not a valid e-mail address"))
    }
}

fn strict_name(s: &str) -> Result<String, Invalid> {
    let t = s.trim();
    let ok = !t.is_empty()
        && t.chars().count() <= MAX_NAME
        && t.chars()
            .all(|c| !c.is_control() && !invisible_format(c) && (c == ' ' || c == '\u{3000}' || !c.is_whitespace()));
    if ok {
        Ok(t.to_string())
    } else {
        Err(invalid(
            "name",
            "invalid_name",
            "a name has 1 to 100 characters and no control, line-break or bidi-override characters",
        ))
    }
}

fn legacy_name(s: &str) -> Result<String, Invalid> {
    let t = s.trim();
    if t.is_empty() || t.chars().count() > MAX_NAME || t.chars().any(char::is_control) {
        Err(invalid("name", "invalid_name", "a name has 1 to 100 characters and no control characters"))
    } else {
        Ok(t.to_string())
    }
}

impl UserId {
    pub fn generate() -> Self {
        Self(format!("usr_{}", uuid::Uuid::new_v4().simple()))
    }
}
impl OrgId {
    pub fn generate() -> Self {
        Self(format!("org_{}", uuid::Uuid::new_v4().simple()))
    }
}
impl InvitationId {
    pub fn generate() -> Self {
        Self(format!("inv_{}", uuid::Uuid::new_v4().simple()))
    }
}
impl BindingId {
    pub fn generate() -> Self {
        Self(format!("bnd_{}", uuid::Uuid::new_v4().simple()))
    }
}

/// A password as typed; never serialised, never printed.
pub struct Password(String);

impl Password {
    /// At least 8 and at most 128 characters.
    pub fn parse(s: String) -> Result<Self, Invalid> {
        let n = s.chars().count();
        if !(8..=128).contains(&n) {
            return Err(invalid("password", "weak_password", "a password has 8 to 128 characters"));
        }
        Ok(Self(s))
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(***)")
    }
}

/// A member's role in an organization.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Owner,
    BillingAdmin,
    Member,
}

impl Role {
    /// Owners and Billing Admins manage payment methods, hence marketplace subscriptions.
    pub fn may_manage_billing(self) -> bool {
        matches!(self, Role::Owner | Role::BillingAdmin)
    }

    /// Only Owners invite members (the API answers before the workflow, which decides).
    pub fn may_invite(self) -> bool {
        self == Role::Owner
    }
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        match s {
            "owner" => Ok(Role::Owner),
            "billing_admin" => Ok(Role::BillingAdmin),
            "member" => Ok(Role::Member),
            _ => Err(invalid("role", "invalid_role", "role is one of owner, billing_admin, member")),
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::BillingAdmin => "billing_admin",
            Role::Member => "member",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The role rules every adapter and the workflow ask: who sees and binds billing, who invites.
    #[test]
    fn owners_invite_and_owners_and_billing_admins_manage_billing() {
        assert!(Role::Owner.may_invite() && !Role::BillingAdmin.may_invite() && !Role::Member.may_invite());
        assert!(Role::Owner.may_manage_billing() && Role::BillingAdmin.may_manage_billing());
        assert!(!Role::Member.may_manage_billing());
    }

    #[test]
    fn values_are_parsed_at_the_edge() {
        assert_eq!(Email::parse(" Ann@Example.COM ").unwrap().as_str(), "ann@example.com");
        for bad in ["", "ann", "ann@", "@x.com", "a b@x.com", "a@@x.com", "a@x", "a@.x", "a@x."] {
            assert!(Email::parse(bad).is_err(), "{bad}");
        }
        assert!(Name::parse("  ").is_err());
        let long_local = format!("{}@x.com", "a".repeat(MAX_EMAIL_LOCAL + 1));
        let long_label = format!("a@{}.com", "b".repeat(64));
        let too_long = format!("a@{}.com", vec!["b".repeat(60); 5].join("."));
        for bad in [
            "a\u{1}b@x.com",
            "ab@x.com\u{7f}",
            "a\u{202e}b@x.com",
            "a\u{200b}@x.com",
            "a\tb@x.com",
            "a..b@x.com",
            ".a@x.com",
            "a.@x.com",
            "a\"b@x.com",
            "a<b>@x.com",
            "a@-x.com",
            "a@x-.com",
            "a@x..com",
            "a@x_y.com",
            &long_local,
            &long_label,
            &too_long,
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?}");
        }
        for good in ["a.b+tag@sub.example.com", "o'neil@example.co", "王小明@例子.中国", "x@a-b.io"] {
            assert!(Email::parse(good).is_ok(), "{good:?}");
        }
        assert!(Email::parse(format!("{}@x.com", "a".repeat(MAX_EMAIL_LOCAL))).is_ok());
        for bad in ["a\u{202e}b", "a\u{2066}b", "a\nb", "a\u{200f}", "\u{feff}x"] {
            assert!(Name::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Name::parse("王 小明").is_ok());
        assert!(Name::parse("x".repeat(101)).is_err());
        assert_eq!(Name::parse(" 向量 ").unwrap().as_str(), "向量");
        assert!(Password::parse("short".into()).is_err());
        assert!(OrgId::parse("org_abc").is_ok());
        assert!(OrgId::parse("usr_abc").is_err());
        assert!(OrgId::parse("org_a/b").is_err());
        assert_eq!(Role::parse("billing_admin").unwrap(), Role::BillingAdmin);
        assert!(Role::parse("admin").is_err());
        assert_eq!(format!("{:?}", Password::parse("secret-password".into()).unwrap()), "Password(***)");
    }

    /// A record written under the first, looser rules still loads: deserialisation uses the stored rule.
    #[test]
    fn values_stored_under_the_old_rules_still_load() {
        let old: Email = serde_json::from_str("\"a\\u0001b@x.com\"").unwrap();
        assert_eq!(old.as_str(), "a\u{1}b@x.com");
        assert!(Email::parse(old.as_str()).is_err());
        let name: Name = serde_json::from_str("\"a\\u202eb\"").unwrap();
        assert!(Name::parse(name.as_str()).is_err());
        assert!(serde_json::from_str::<Email>("\"nope\"").is_err());
    }
}
