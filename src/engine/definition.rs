//! Workflow definitions as data (`workflows/*.toml`): states, events, transitions naming the Rust guards and
//! actions they run, named timers with durations, and retry policies of external calls.
//!
//! A definition is validated against the catalog of the workflow that implements it before anything starts:
//! an unknown action, guard, event, timer or call, an unreachable state or a bad duration stops start-up with
//! `file:line: message`. Each running instance is pinned to a definition's name, version and fingerprint.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use toml::Spanned;

/// A definition that cannot be used, with where in which file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct Error {
    pub file: String,
    pub line: usize,
    pub message: String,
}

/// The names a workflow implementation provides, to check a definition against.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// The states the implementation knows (its `State` enum); a definition must declare exactly these. Empty:
    /// not checked (the engine's own test workflows).
    pub states: Vec<&'static str>,
    pub events: Vec<&'static str>,
    pub guards: Vec<&'static str>,
    pub actions: Vec<&'static str>,
    pub calls: Vec<&'static str>,
}

/// How an external call is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; then the call needs an operator.
    pub max_attempts: u32,
    /// Wait before the second attempt; doubled each time up to `max_backoff`.
    #[serde(with = "humantime_serde_compat")]
    pub initial_backoff: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub max_backoff: Duration,
    /// How long one attempt may take.
    #[serde(with = "humantime_serde_compat")]
    pub timeout: Duration,
    /// The call must not take effect twice (a metering push): its attempt is recorded before it is sent, and an
    /// attempt whose outcome is unknown (a crash or a timeout in the middle) goes to an operator instead of
    /// being sent again.
    #[serde(default)]
    pub at_most_once: bool,
}

impl RetryPolicy {
    /// The wait after `attempts` failed attempts (1-based): exponential with a cap.
    pub fn backoff(&self, attempts: u32) -> Duration {
        let shift = attempts.saturating_sub(1).min(30);
        self.initial_backoff.saturating_mul(1u32 << shift).min(self.max_backoff)
    }
}

mod humantime_serde_compat {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

/// A state of the graph.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub name: String,
    /// Timers set on entering this state and cancelled on leaving it.
    pub timers: Vec<String>,
    pub description: Option<String>,
}

/// A transition: in one of `from`, on `on`, if `guard`, run `actions` and go to `to` (or stay).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    /// Source states; empty means any non-terminal state.
    pub from: Vec<String>,
    pub on: String,
    pub to: Option<String>,
    pub guard: Option<String>,
    pub actions: Vec<String>,
    pub description: Option<String>,
    /// Line in the file, for messages and the console.
    pub line: usize,
}

/// A validated definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Definition {
    pub name: String,
    pub version: u32,
    pub description: Option<String>,
    /// sha256 of the normalised graph (comments and layout do not count), pinned by every instance.
    pub fingerprint: String,
    /// Where it was read from.
    pub file: String,
    pub initial: String,
    pub terminal: BTreeSet<String>,
    pub states: Vec<State>,
    pub timers: BTreeMap<String, Duration>,
    pub calls: BTreeMap<String, RetryPolicy>,
    pub transitions: Vec<Transition>,
    /// Older versions whose running instances move to this one at their next input (`upgrades_from = [1]`): the
    /// author declares that this graph keeps every state of theirs and means the same by it. Said in the file,
    /// journaled when it happens: never a silent switch.
    #[serde(default)]
    pub upgrades_from: BTreeSet<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefinition {
    name: Spanned<String>,
    version: Spanned<u32>,
    #[serde(default)]
    upgrades_from: Vec<Spanned<u32>>,
    description: Option<String>,
    initial: Spanned<String>,
    #[serde(default)]
    terminal: Vec<Spanned<String>>,
    #[serde(default)]
    timers: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    calls: BTreeMap<String, Spanned<RawCall>>,
    #[serde(default, rename = "state")]
    states: Vec<Spanned<RawState>>,
    #[serde(default, rename = "transition")]
    transitions: Vec<Spanned<RawTransition>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawState {
    name: Spanned<String>,
    #[serde(default)]
    timers: Vec<Spanned<String>>,
    description: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTransition {
    #[serde(default)]
    from: Vec<Spanned<String>>,
    on: Spanned<String>,
    to: Option<Spanned<String>>,
    guard: Option<Spanned<String>>,
    #[serde(default)]
    actions: Vec<Spanned<String>>,
    description: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCall {
    max_attempts: u32,
    initial_backoff: Spanned<String>,
    max_backoff: Spanned<String>,
    timeout: Option<Spanned<String>>,
    #[serde(default)]
    at_most_once: bool,
}

/// Reads the duration syntax of definitions and configuration (`90s`, `15m`, `1h`, `1h 30m`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("bad duration `{s}`: {e}"))
}

struct Ctx<'a> {
    file: &'a str,
    source: &'a str,
}

impl Ctx<'_> {
    fn line(&self, offset: usize) -> usize {
        self.source.get(..offset).map(|s| s.matches('\n').count() + 1).unwrap_or(1)
    }
    fn err<T>(&self, span: std::ops::Range<usize>, message: impl Into<String>) -> Result<T, Error> {
        Err(Error { file: self.file.to_string(), line: self.line(span.start), message: message.into() })
    }
}

/// The event name of a call's success and failure results.
pub fn call_event(call: &str, ok: bool) -> String {
    format!("{call}.{}", if ok { "ok" } else { "failed" })
}

impl Definition {
    /// Parses and validates `source` (named `file` in messages) against `catalog`.
    pub fn parse(file: &str, source: &str, catalog: &Catalog) -> Result<Self, Error> {
        let cx = Ctx { file, source };
        let raw: RawDefinition = toml::from_str(source).map_err(|e| Error {
            file: file.to_string(),
            line: e.span().map(|s| cx.line(s.start)).unwrap_or(1),
            // toml says nothing for some errors (`key =` at the end of the text): never an empty message.
            message: if e.message().is_empty() { "invalid TOML".to_string() } else { e.message().to_string() },
        })?;

        let mut timers = BTreeMap::new();
        for (name, d) in &raw.timers {
            match parse_duration(d.get_ref()) {
                Ok(dur) => {
                    timers.insert(name.clone(), dur);
                }
                Err(m) => return cx.err(d.span(), format!("timer `{name}`: {m}")),
            }
        }

        let mut calls = BTreeMap::new();
        for (name, c) in &raw.calls {
            if !catalog.calls.contains(&name.as_str()) {
                return cx.err(c.span(), format!("unknown call `{name}` (known: {})", catalog.calls.join(", ")));
            }
            let rc = c.get_ref();
            let dur = |s: &Spanned<String>| parse_duration(s.get_ref()).or_else(|m| cx.err(s.span(), m));
            if rc.max_attempts == 0 {
                return cx.err(c.span(), format!("call `{name}`: max_attempts must be at least 1"));
            }
            let policy = RetryPolicy {
                max_attempts: rc.max_attempts,
                initial_backoff: dur(&rc.initial_backoff)?,
                max_backoff: dur(&rc.max_backoff)?,
                timeout: match &rc.timeout {
                    Some(t) => dur(t)?,
                    None => Duration::from_secs(10),
                },
                at_most_once: rc.at_most_once,
            };
            calls.insert(name.clone(), policy);
        }

        let mut states = Vec::new();
        let mut names = BTreeSet::new();
        for s in &raw.states {
            let rs = s.get_ref();
            let name = rs.name.get_ref().clone();
            if !names.insert(name.clone()) {
                return cx.err(rs.name.span(), format!("state `{name}` is declared twice"));
            }
            for t in &rs.timers {
                if !timers.contains_key(t.get_ref()) {
                    return cx.err(t.span(), format!("state `{name}` sets undeclared timer `{}`", t.get_ref()));
                }
            }
            states.push(State {
                name,
                timers: rs.timers.iter().map(|t| t.get_ref().clone()).collect(),
                description: rs.description.clone(),
            });
        }
        if !catalog.states.is_empty() {
            for s in &raw.states {
                let name = s.get_ref().name.get_ref();
                if !catalog.states.contains(&name.as_str()) {
                    return cx.err(
                        s.get_ref().name.span(),
                        format!(
                            "state `{name}` is not a state of the implementation (known: {})",
                            catalog.states.join(", ")
                        ),
                    );
                }
            }
            if let Some(missing) = catalog.states.iter().find(|k| !names.contains(**k)) {
                return cx.err(0..0, format!("the implementation's state `{missing}` is not declared"));
            }
        }
        let known_state = |s: &Spanned<String>, what: &str| -> Result<String, Error> {
            if names.contains(s.get_ref()) {
                Ok(s.get_ref().clone())
            } else {
                cx.err(s.span(), format!("{what} names unknown state `{}`", s.get_ref()))
            }
        };
        let initial = known_state(&raw.initial, "initial")?;
        let mut terminal = BTreeSet::new();
        for t in &raw.terminal {
            terminal.insert(known_state(t, "terminal")?);
        }

        let mut events: BTreeSet<String> = catalog.events.iter().map(|s| s.to_string()).collect();
        events.extend(timers.keys().cloned());
        for c in calls.keys() {
            events.insert(call_event(c, true));
            events.insert(call_event(c, false));
        }

        let mut transitions = Vec::new();
        for t in &raw.transitions {
            let rt = t.get_ref();
            let line = cx.line(t.span().start);
            let mut from = Vec::new();
            for f in &rt.from {
                let s = known_state(f, "transition `from`")?;
                if terminal.contains(&s) {
                    return cx.err(f.span(), format!("terminal state `{s}` cannot have outgoing transitions"));
                }
                from.push(s);
            }
            if !events.contains(rt.on.get_ref()) {
                return cx.err(rt.on.span(), format!("unknown event `{}`", rt.on.get_ref()));
            }
            let to = rt.to.as_ref().map(|s| known_state(s, "transition `to`")).transpose()?;
            if let Some(g) = &rt.guard {
                if !catalog.guards.contains(&g.get_ref().as_str()) {
                    return cx.err(g.span(), format!("unknown guard `{}`", g.get_ref()));
                }
            }
            for a in &rt.actions {
                if !catalog.actions.contains(&a.get_ref().as_str()) {
                    return cx.err(a.span(), format!("unknown action `{}`", a.get_ref()));
                }
            }
            transitions.push(Transition {
                from,
                on: rt.on.get_ref().clone(),
                to,
                guard: rt.guard.as_ref().map(|g| g.get_ref().clone()),
                actions: rt.actions.iter().map(|a| a.get_ref().clone()).collect(),
                description: rt.description.clone(),
                line,
            });
        }

        // Every state must be reachable from the initial one.
        let mut reached = BTreeSet::from([initial.clone()]);
        let mut queue = VecDeque::from([initial.clone()]);
        while let Some(s) = queue.pop_front() {
            for t in &transitions {
                let applies = if t.from.is_empty() { !terminal.contains(&s) } else { t.from.contains(&s) };
                if let (true, Some(to)) = (applies, &t.to) {
                    if reached.insert(to.clone()) {
                        queue.push_back(to.clone());
                    }
                }
            }
        }
        for s in &raw.states {
            let name = s.get_ref().name.get_ref();
            if !reached.contains(name) {
                return cx.err(s.get_ref().name.span(), format!("state `{name}` is unreachable from `{initial}`"));
            }
        }

        let mut upgrades_from = BTreeSet::new();
        for v in &raw.upgrades_from {
            if *v.get_ref() >= *raw.version.get_ref() {
                return cx
                    .err(v.span(), format!("`upgrades_from` names version {}, not older than this one", v.get_ref()));
            }
            upgrades_from.insert(*v.get_ref());
        }
        let mut def = Definition {
            name: raw.name.get_ref().clone(),
            version: *raw.version.get_ref(),
            upgrades_from,
            description: raw.description,
            fingerprint: String::new(),
            file: file.to_string(),
            initial,
            terminal,
            states,
            timers,
            calls,
            transitions,
        };
        def.fingerprint = def.compute_fingerprint();
        Ok(def)
    }

    /// A hash of what the engine executes: the graph, timers and policies, not comments or descriptions.
    fn compute_fingerprint(&self) -> String {
        let graph = serde_json::json!({
            "name": self.name, "version": self.version, "initial": self.initial, "terminal": self.terminal,
            "states": self.states.iter().map(|s| (&s.name, &s.timers)).collect::<Vec<_>>(),
            "timers": self.timers.iter().map(|(k, v)| (k, v.as_millis() as u64)).collect::<BTreeMap<_, _>>(),
            "calls": self.calls,
            "transitions": self.transitions.iter()
                .map(|t| (&t.from, &t.on, &t.to, &t.guard, &t.actions)).collect::<Vec<_>>(),
        });
        // Only where declared, so the definitions written before it keep their fingerprints.
        let mut graph = graph;
        if !self.upgrades_from.is_empty() {
            graph["upgrades_from"] = serde_json::json!(self.upgrades_from);
        }
        let digest = Sha256::digest(graph.to_string().as_bytes());
        hex::encode(&digest[..12])
    }

    /// Reads a definition from a file.
    pub fn load(path: &Path, catalog: &Catalog) -> Result<Self, Error> {
        let file = path.display().to_string();
        let source = std::fs::read_to_string(path).map_err(|e| Error {
            file: file.clone(),
            line: 0,
            message: format!("cannot read: {e}"),
        })?;
        Self::parse(&file, &source, catalog)
    }

    pub fn state(&self, name: &str) -> Option<&State> {
        self.states.iter().find(|s| s.name == name)
    }

    pub fn is_terminal(&self, state: &str) -> bool {
        self.terminal.contains(state)
    }

    /// The transitions that may fire in `state` on `event`, in file order.
    pub fn candidates<'a>(&'a self, state: &'a str, event: &'a str) -> impl Iterator<Item = &'a Transition> + 'a {
        let terminal = self.is_terminal(state);
        self.transitions.iter().filter(move |t| {
            t.on == event && if t.from.is_empty() { !terminal } else { t.from.iter().any(|f| f == state) }
        })
    }

    /// Replaces a timer's duration (configuration overrides, e.g. the switch window).
    pub fn override_timer(&mut self, name: &str, d: Duration) -> bool {
        match self.timers.get_mut(name) {
            Some(v) => {
                *v = d;
                true
            }
            None => false,
        }
    }

    /// The graph in Graphviz-free Mermaid syntax, for the console and the docs.
    pub fn to_mermaid(&self) -> String {
        let mut out = String::from("stateDiagram-v2\n");
        out.push_str(&format!("    [*] --> {}\n", self.initial));
        for t in &self.transitions {
            let froms: Vec<&String> =
                if t.from.is_empty() { self.states.iter().map(|s| &s.name).collect() } else { t.from.iter().collect() };
            for f in froms {
                if self.is_terminal(f) {
                    continue;
                }
                let to = t.to.as_ref().unwrap_or(f);
                out.push_str(&format!("    {f} --> {to}: {}\n", t.on));
            }
        }
        for s in &self.terminal {
            out.push_str(&format!("    {s} --> [*]\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog {
        Catalog {
            states: vec![],
            events: vec!["go", "stop"],
            guards: vec!["ready"],
            actions: vec!["note"],
            calls: vec!["ping"],
        }
    }

    const GOOD: &str = r#"
name = "demo"
version = 1
initial = "idle"
terminal = ["done"]

[timers]
nudge = "15m"

[calls.ping]
max_attempts = 3
initial_backoff = "1s"
max_backoff = "10s"

[[state]]
name = "idle"

[[state]]
name = "running"
timers = ["nudge"]

[[state]]
name = "done"

[[transition]]
from = ["idle"]
on = "go"
to = "running"
guard = "ready"
actions = ["note"]

[[transition]]
from = ["running"]
on = "nudge"
actions = ["note"]

[[transition]]
on = "stop"
to = "done"
"#;

    #[test]
    fn a_good_definition_loads() {
        let d = Definition::parse("demo.toml", GOOD, &catalog()).unwrap();
        assert_eq!(d.initial, "idle");
        assert_eq!(d.timers["nudge"], Duration::from_secs(900));
        assert_eq!(d.candidates("idle", "go").count(), 1);
        assert_eq!(d.candidates("done", "stop").count(), 0, "terminal states absorb");
        assert_eq!(d.calls["ping"].backoff(1), Duration::from_secs(1));
        assert_eq!(d.calls["ping"].backoff(3), Duration::from_secs(4));
        assert_eq!(d.calls["ping"].backoff(30), Duration::from_secs(10));
        assert!(d.to_mermaid().contains("idle --> running: go"));
    }

    #[test]
    fn fingerprint_ignores_comments_but_not_the_graph() {
        let a = Definition::parse("a", GOOD, &catalog()).unwrap();
        let b = Definition::parse("b", &format!("# a comment\n{GOOD}"), &catalog()).unwrap();
        let c = Definition::parse("c", &GOOD.replace("\"15m\"", "\"16m\""), &catalog()).unwrap();
        assert_eq!(a.fingerprint, b.fingerprint);
        assert_ne!(a.fingerprint, c.fingerprint);
    }

    /// A definition declares exactly the implementation's states: one too many or one missing refuses it, so a
    /// renamed state cannot compile into pages that compare the old name.
    #[test]
    fn the_states_are_the_implementations() {
        let with = |states: Vec<&'static str>| Catalog { states, ..catalog() };
        assert!(Definition::parse("ok", GOOD, &with(vec!["idle", "running", "done"])).is_ok());
        let extra = Definition::parse("x", GOOD, &with(vec!["idle", "done"])).unwrap_err();
        assert!(extra.message.contains("state `running` is not a state of the implementation"), "{extra}");
        let missing = Definition::parse("x", GOOD, &with(vec!["idle", "running", "done", "paused"])).unwrap_err();
        assert!(missing.message.contains("the implementation's state `paused` is not declared"), "{missing}");
    }

    /// The built-in definitions declare exactly their workflows' `State` enums.
    #[test]
    fn the_built_in_definitions_match_the_state_enums() {
        let mut r = crate::engine::Registry::new();
        for wf in crate::domain::workflows() {
            r.add_workflow(wf);
        }
        for (file, source) in crate::startup::BUILTIN_WORKFLOWS {
            r.add_definition(file, source).unwrap_or_else(|e| panic!("{file}: {e}"));
        }
        let renamed = crate::startup::BUILTIN_WORKFLOWS[1].1.replace("name = \"frozen\"", "name = \"suspended\"");
        let mut r = crate::engine::Registry::new();
        for wf in crate::domain::workflows() {
            r.add_workflow(wf);
        }
        let e = r.add_definition("organization.toml", &renamed).unwrap_err().to_string();
        assert!(e.contains("state `suspended` is not a state of the implementation"), "{e}");
    }

    #[test]
    fn upgrades_from_names_only_older_versions_and_counts_in_the_fingerprint_only_when_declared() {
        let plain = Definition::parse("a", GOOD, &catalog()).unwrap();
        assert!(plain.upgrades_from.is_empty());
        let v2 = GOOD.replacen("version = 1", "version = 2\nupgrades_from = [1]", 1);
        let d = Definition::parse("b", &v2, &catalog()).unwrap();
        assert_eq!(d.upgrades_from, BTreeSet::from([1]));
        let v2_plain = GOOD.replacen("version = 1", "version = 2", 1);
        assert_ne!(d.fingerprint, Definition::parse("c", &v2_plain, &catalog()).unwrap().fingerprint);
        let e = error_of(&GOOD.replacen("version = 1", "version = 2\nupgrades_from = [2]", 1));
        assert!(e.message.contains("not older than this one"), "{e}");
    }

    fn error_of(src: &str) -> Error {
        Definition::parse("bad.toml", src, &catalog()).unwrap_err()
    }

    #[test]
    fn an_unknown_action_names_file_and_line() {
        let e = error_of(&GOOD.replace(
            "actions = [\"note\"]\n\n[[transition]]\nfrom = [\"running\"]",
            "actions = [\"nope\"]\n\n[[transition]]\nfrom = [\"running\"]",
        ));
        assert_eq!(e.file, "bad.toml");
        assert!(e.message.contains("unknown action `nope`"), "{e}");
        assert_eq!(e.line, 30, "{e}");
    }

    #[test]
    fn an_unreachable_state_is_refused() {
        let e = error_of(&format!("{GOOD}\n[[state]]\nname = \"orphan\"\n"));
        assert!(e.message.contains("unreachable"), "{e}");
        assert_eq!(e.line, 42, "{e}");
    }

    #[test]
    fn a_bad_duration_is_refused() {
        let e = error_of(&GOOD.replace("\"15m\"", "\"fifteen\""));
        assert!(e.message.contains("bad duration"), "{e}");
        assert_eq!(e.line, 8);
    }

    #[test]
    fn unknown_fields_and_events_are_refused() {
        assert!(error_of(&GOOD.replace("on = \"go\"", "on = \"went\"")).message.contains("unknown event"));
        assert!(error_of(&format!("bogus = 1\n{GOOD}")).line >= 1);
        assert!(error_of(&GOOD.replace("guard = \"ready\"", "guard = \"steady\"")).message.contains("unknown guard"));
    }
}
