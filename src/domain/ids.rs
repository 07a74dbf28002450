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
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn parse(s: impl Into<String>) -> Result<Self, Invalid> {
                let s: String = s.into();
                let check: fn(&str) -> Result<String, Invalid> = $check;
                check(&s).map(Self)
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = Invalid;
            fn try_from(s: String) -> Result<Self, Invalid> {
                Self::parse(s)
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
    /// An e-mail address, lower-cased; the login name.
    Email, "email", |s| {
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
);
string_id!(
    /// A display name (of a person or an organization): 1 to 100 characters, no control characters.
    Name, "name", |s| {
        let t = s.trim();
        if t.is_empty() || t.chars().count() > 100 || t.chars().any(char::is_control) {
            Err(invalid("name", "invalid_name", "a name has 1 to 100 characters and no control characters"))
        } else {
            Ok(t.to_string())
        }
    }
);

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

    #[test]
    fn values_are_parsed_at_the_edge() {
        assert_eq!(Email::parse(" Ann@Example.COM ").unwrap().as_str(), "ann@example.com");
        for bad in ["", "ann", "ann@", "@x.com", "a b@x.com", "a@@x.com", "a@x", "a@.x", "a@x."] {
            assert!(Email::parse(bad).is_err(), "{bad}");
        }
        assert!(Name::parse("  ").is_err());
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
}
