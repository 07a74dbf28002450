//! The use cases the adapters call, one function each with typed inputs and results and one error
//! ([`error::AppError`]): accounts (registration, log-in, verified addresses, 免登 grants), organizations (members,
//! invitations, the billing overview), subscriptions (what a buyer sees and may bind), the marketplace's notices
//! (SPI), the 免登 hand-off, usage (records and metering), finance's monthly export, the operators' actions and audit trail, and the
//! marketplace calls the workflows name. The JSON API, the pages and the console call these and only render what
//! they answer; the rules they apply are the domain's (`crate::domain`), and what they store goes through the
//! engine's typed record tables (`crate::engine::records`).

pub mod accounts;
pub mod alerts;
pub mod attention;
pub mod call_errors;
pub mod calls;
pub mod cluster;
pub mod error;
pub mod finance;
pub mod notices;
pub mod ops;
pub mod orgs;
pub mod pushes;
pub mod sso;
pub mod subscriptions;
pub mod usage;
pub mod windows;

pub use error::{AppError, Kind};

use std::sync::Arc;

use crate::domain::pricing::Catalog;
use crate::engine::Engine;

/// What every use case reaches: built once by `startup` and shared by every adapter.
#[derive(Clone)]
pub struct App {
    /// The engine: entities, their inputs, the typed record tables and the clock.
    pub engine: Engine,
    /// Users, sessions, verified addresses and 免登 grants.
    pub accounts: Arc<accounts::Accounts>,
    /// The price catalog (CU types, units per CU-hour), for usage and metering.
    pub catalog: Arc<Catalog>,
}
