//! The web concerns the buyer's pages and the operator console share, each written once: the form token
//! ([`csrf`]), cookies ([`cookies`]), whether a form comes from this service's own pages ([`origin`]), form
//! fields ([`forms`]), templates and the HTML answer's headers ([`render`]), the language of a page ([`i18n`]),
//! and the security headers of every answer ([`headers`]). The pages and the console keep only what differs
//! (paths, SameSite, their texts); their random tokens are the accounts' (`random_token`).

pub mod cookies;
pub mod csrf;
pub mod forms;
pub mod headers;
pub mod i18n;
pub mod origin;
pub mod render;

pub use cookies::{cleared, cookie, https, lasting};
pub use forms::{fields, param};
pub use origin::same_origin;
pub use render::{html, templates};
