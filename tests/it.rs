//! The integration tests, one binary: a module per area (linking one binary instead of one per file is most of
//! what a CI run saved). The crash and restart tests re-execute their own binary by test name, so they stay
//! binaries of their own (`tests/crash.rs`, `tests/restart.rs`); so does the chaos run (`tests/chaos.rs`): its
//! end-state checks race the service's scaled clock, and beside the other tests' load it lost that race.
//!
//! One area: `cargo test --test it access::`; one test: `cargo test --test it -- --exact access::<name>`.

mod common;
mod serve;
mod world;

#[path = "access.rs"]
mod access;
#[path = "api.rs"]
mod api;
#[path = "binding.rs"]
mod binding;
#[path = "binding_crash.rs"]
mod binding_crash;
#[path = "console.rs"]
mod console;
#[path = "ctl.rs"]
mod ctl;
#[path = "demo.rs"]
mod demo;
#[path = "deploy_files.rs"]
mod deploy;
#[path = "engine.rs"]
mod engine;
#[path = "lifecycle.rs"]
mod lifecycle;
#[path = "logs.rs"]
mod logs;
#[path = "metering.rs"]
mod metering;
#[path = "metering_crash.rs"]
mod metering_crash;
#[path = "openapi.rs"]
mod openapi;
#[path = "ops.rs"]
mod ops;
#[path = "pages.rs"]
mod pages;
#[path = "postgres.rs"]
mod postgres;
#[path = "properties.rs"]
mod properties;
#[path = "simulator.rs"]
mod simulator;
#[path = "storage_faults.rs"]
mod storage_faults;
#[path = "switch.rs"]
mod switch;
#[path = "upgrade.rs"]
mod upgrade;
#[path = "walk.rs"]
mod walk;
