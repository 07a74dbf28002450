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

/// Whether the pausepoint `name` is configured (armed or not yet): a code path may take its slower, step-by-step
/// form only where a test stops the process.
pub fn pausepoint_set(name: &str) -> bool {
    pause_config().is_some_and(|(n, _)| n == name)
}

fn pause_config() -> Option<&'static (String, std::path::PathBuf)> {
    static ARMED: OnceLock<Option<(String, std::path::PathBuf)>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let name = std::env::var("MARKETFLOW_PAUSEPOINT").ok().filter(|s| !s.is_empty())?;
            let file = std::env::var("MARKETFLOW_PAUSEPOINT_ARM").ok().filter(|s| !s.is_empty())?;
            Some((name, file.into()))
        })
        .as_ref()
}

/// Pausepoints, for the fencing tests: with `MARKETFLOW_PAUSEPOINT=<name>` and `MARKETFLOW_PAUSEPOINT_ARM=<file>`,
/// the first time `name` is reached after the file appears, the process stops itself with SIGSTOP (as a long
/// garbage-collection pause or a frozen virtual machine would stop it) and removes the file; the test continues
/// it with SIGCONT. Unarmed (the variables unset, as in production), a pausepoint costs one check of a static.
pub fn pause(name: &str) {
    pause_when(name, |_| true)
}

/// [`pause`], but a file with content pauses only the step for which `matches(content)` holds: a node's commits
/// of other entities (a call's retry, a timer) pass, and the test stops exactly the commit it aimed at.
pub fn pause_when(name: &str, matches: impl FnOnce(&[u8]) -> bool) {
    let Some((armed, file)) = pause_config() else { return };
    if armed != name {
        return;
    }
    let Ok(content) = std::fs::read(file) else { return };
    if !content.is_empty() && !matches(&content) {
        return;
    }
    if std::fs::remove_file(file).is_err() {
        return;
    }
    eprintln!("marketflow: pausepoint `{name}` reached: stopping this process (SIGSTOP)");
    let _ = std::process::Command::new("kill").arg("-STOP").arg(std::process::id().to_string()).status();
    eprintln!("marketflow: pausepoint `{name}`: continued");
}
