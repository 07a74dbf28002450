//! The use cases the adapters call: accounts (registration, log-in, verified addresses, 免登 grants), usage records
//! (stored once, read per window) and the marketplace calls the workflows name. The JSON API, the pages and the
//! console call these; the rules they apply are the domain's (`crate::domain`), and what they store goes through
//! the engine's typed record tables (`crate::engine::records`).

pub mod accounts;
pub mod calls;
pub mod usage;
