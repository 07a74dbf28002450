//! marketflow: durable, message-driven orchestration of Alibaba Cloud Marketplace subscriptions.
//!
//! # Layout
//! - [`clock`]: service time (system, scaled for demos, manual for tests); every deadline reads it.
//! - [`store`]: the storage trait (ordered tables, atomic durable batches), sled and in-memory backends, and
//!   the group committer that shares one fsync among many entities' commits. No sled type leaves it.
//! - [`engine`]: definitions as data (`workflows/*.toml`), the pure step of an entity, entity actors and their
//!   directory, durable timers, the outbox between entities, external calls with retry policies, inspection;
//!   typed record tables (`engine::records`: every key and value shape of the records beside the workflows),
//!   the operators' audit trail written in the commit of their action (`engine::audit`), entities by state as
//!   counters kept with the commits (`engine::by_state`), what needs a person indexed with the commit that
//!   raises it (`engine::attention`), the sweeper of ended records, retention of journals and outcomes
//!   (`engine::retention`), its own telemetry, the clock anchor. Only the engine reaches the store.
//!
//! - [`app`]: the use cases the JSON API, the pages and the console call, one function each on `app::App`
//!   with typed inputs and results and one error (`app::AppError {kind, code}`): accounts (users, sessions with
//!   Argon2id passwords and hashed tokens, verified addresses, 免登 grants), organizations (memberships,
//!   invitations, the billing overview), subscriptions (visibility, binding options, binding), usage (records,
//!   metering), operators' actions and the audit trail, the bulk resolution of windows of unknown outcome
//!   (`app::windows`), the marketplace's notices (SPI, and the failed ones fetched with DescribeFailedNotifications:
//!   `app::notices`), the metering pushes gathered into batches of 100 and paced 60 s per instance, with the
//!   operators' hold (`app::pushes`), and the external calls the workflows name.
//! - [`aliyun`]: the marketplace's protocol, pure: SPI tokens and parameters, Market OpenAPI signatures (V3
//!   `ACS3-HMAC-SHA256` and legacy RPC HMAC-SHA1) and request/response types.
//! - [`admin`]: `marketflow migrate`, `export` and `import`, straight on the store.
//! - [`cluster`]: several nodes on one PostgreSQL database: the lease loop, hand-over, forwarding (HMAC-signed).
//! - [`ctl`]: the operator CLI (`marketflow ctl`) over the HTTP ops API, tables or JSON.
//! - [`config`]: defaults < file < environment < flags; secrets that never print.
//! - [`demo`]: `marketflow demo`, the whole lifecycle walked in one process on a scaled clock.
//! - [`domain`]: the product's workflows (subscription, ...): a `State` enum each, checked against its
//!   definition, and the guards and actions `workflows/*.toml` names; the rules the adapters ask (listed,
//!   billable).
//! - [`http`]: routes (one table of every route and who it admits: `http::routes`), bearer-token roles, JSON
//!   errors with stable codes, the OpenAPI document built from the handlers' annotations (`http::openapi`), the
//!   buyer's pages and the operator console, and the web concerns they share once (`http::web`: csrf, cookies,
//!   origin, forms, render, i18n, security headers). Adapters: they parse, call `app`, map `AppError` to a status
//!   once (`http::error`), and render.
//!
//! - [`startup`]: builds and wires the `Application` the same way for `main` and the tests (zero2prod's name, so
//!   that `app/` can mean the use cases); the mailer, the sweeper's rules, the middlewares.
//! - [`mail`]: the verification links, over SMTP (`lettre`), or to standard output in `--dev`.
//! - [`ratelimit`]: rate-limit settings (per route class, per account) and bounded token buckets.
//!
//! Dependencies point one way: `engine` knows no organization or subscription, `store` knows no engine.
/// jemalloc instead of glibc's malloc, for every binary, test and bench that links this crate (so the benches
/// measure what the service runs). glibc's malloc took 35-45 % of the engine's CPU (sled copies and frees a leaf on
/// every write) and kept what was freed; jemalloc's background thread hands unused pages back after its decay time,
/// also while the process is idle, which mimalloc (as fast) did not. BENCHMARKS.md has the measurements.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read before `main` (`_RJEM_MALLOC_CONF` in the environment still overrides them).
/// `thp:always` backs jemalloc's arenas with transparent huge pages where the kernel allows it (`madvise` mode is
/// enough): opening a 1,000,000-entity sled store, which allocates its page table in a burst, took 2.7-3.1 s
/// without and 1.2-1.5 s with, and the restart target counts from the process's start. Memory still goes back
/// after idle (BENCHMARKS.md, round 3).
#[cfg(all(not(target_env = "msvc"), target_os = "linux"))]
#[export_name = "_rjem_malloc_conf"]
#[allow(non_upper_case_globals)]
pub static malloc_conf: Option<&'static std::ffi::c_char> = Some(unsafe { &*c"thp:always".as_ptr() });

pub mod admin;
pub mod aliyun;
pub mod app;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod ctl;
pub mod demo;
pub mod domain;
pub mod engine;
pub mod failpoint;
pub mod http;
pub mod mail;
pub mod ratelimit;
pub mod startup;
pub mod store;
