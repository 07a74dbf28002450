//! The product's rules as workflows: pure decisions, no actix, sled or clock. The engine runs them.

/// A workflow's states as an enum, with the names its definition (`workflows/*.toml`) uses. The registry checks
/// the definition against `NAMES` (a state missing on either side refuses start-up), so adapters compare enums,
/// never strings, and renaming a state in a TOML file cannot silently break a page.
macro_rules! states {
    ($(#[$m:meta])* pub enum $name:ident { $($(#[$vm:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $($(#[$vm])* $variant),+
        }

        impl $name {
            /// Every state, in the definition's order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            /// The states' names as the definition spells them.
            pub const NAMES: &'static [&'static str] = &[$($text),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            /// The state an entity record names; `None` for a name the definition does not have (impossible once
            /// the registry has checked the definition, so callers treat it as an internal error).
            pub fn parse(s: &str) -> Option<Self> {
                match s {
                    $($text => Some($name::$variant),)+
                    _ => None,
                }
            }
        }

        /// As the definition spells it (pages and views show the name).
        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

pub mod binding;
pub mod ids;
pub mod metering;
pub mod organization;
pub mod pricing;
pub mod protocol;
pub mod subscription;

use std::sync::Arc;

use crate::engine::workflow::DynWorkflow;

/// What the workflows count on `/metrics` ([`crate::engine::Cx::count`]): family, help text, and the kinds shown
/// at 0 before their first event.
pub const COUNTED: &[(&str, &str, &[&str])] = &[(
    "drift",
    "Corrections made because DescribeInstance disagreed with the notices received (a notice lost or overtaken), \
     by what the subscription became.",
    subscription::DRIFT_KINDS,
)];

/// Every workflow of the service, to register with the engine.
pub fn workflows() -> Vec<Arc<dyn DynWorkflow>> {
    vec![
        Arc::new(subscription::SubscriptionWorkflow),
        Arc::new(organization::OrganizationWorkflow),
        Arc::new(metering::MeteringWorkflow),
    ]
}
