//! Failpoints for crash tests: `MARKETFLOW_FAILPOINT=<name>` makes the process abort at that point, the way a
//! power cut would, so a test can kill the service at an exact step (sled's crash tests use the same idea).

use std::sync::OnceLock;

fn armed() -> Option<&'static str> {
    static NAME: OnceLock<Option<String>> = OnceLock::new();
    NAME.get_or_init(|| std::env::var("MARKETFLOW_FAILPOINT").ok().filter(|s| !s.is_empty())).as_deref()
}

/// Aborts the process if the failpoint `name` is armed.
pub fn hit(name: &str) {
    if armed() == Some(name) {
        eprintln!("marketflow: failpoint `{name}` hit: aborting");
        std::process::abort();
    }
}

/// Aborts the process if the failpoint `<name>:<detail>` is armed (e.g. `after_call:push_metering_data`).
pub fn hit_at(name: &str, detail: &str) {
    if let Some(armed) = armed() {
        if armed.strip_prefix(name).and_then(|r| r.strip_prefix(':')) == Some(detail) {
            eprintln!("marketflow: failpoint `{name}:{detail}` hit: aborting");
            std::process::abort();
        }
    }
}
