//! Which workflows and definitions the engine runs, and who performs each external call.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde_json::Value;

use super::definition::{self, Definition};
use super::workflow::DynWorkflow;

/// Why an external call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallError {
    /// Whether trying again may succeed (timeouts, 5xx, throttling) or not (a refusal on the merits).
    pub retryable: bool,
    /// Whether the call may have taken effect although it failed (a timeout after sending).
    pub outcome_unknown: bool,
    pub message: String,
}

impl CallError {
    pub fn retryable(message: impl Into<String>) -> Self {
        Self { retryable: true, outcome_unknown: false, message: message.into() }
    }
    pub fn permanent(message: impl Into<String>) -> Self {
        Self { retryable: false, outcome_unknown: false, message: message.into() }
    }
    /// Failed, and may have taken effect all the same.
    pub fn unknown(message: impl Into<String>) -> Self {
        Self { retryable: true, outcome_unknown: true, message: message.into() }
    }
}

/// A call's seat in something its handler forms before sending (a batch); see [`CallHandler::admit`]. Dropped
/// without being used (the attempt could not be recorded, the shard moved), it gives the seat up.
pub type Ticket = Box<dyn std::any::Any + Send>;

/// Performs external calls (the marketplace client, in production).
pub trait CallHandler: Send + Sync + 'static {
    fn call(&self, call: &str, request: Value) -> BoxFuture<'static, Result<Value, CallError>>;

    /// Waits until the call may be attempted, before the engine records the attempt. A handler that paces its
    /// calls or gathers them into batches holds them here, so that a call kept waiting (paced, or held by an
    /// operator) is not in flight: a crash meanwhile leaves it to be resumed, not an unknown outcome. A ticket
    /// goes to [`CallHandler::call_admitted`] once the attempt is durable. By default every call goes at once.
    fn admit(&self, _call: &str, _request: &Value) -> BoxFuture<'static, Option<Ticket>> {
        Box::pin(std::future::ready(None))
    }

    /// Performs a call that [`CallHandler::admit`] gave a ticket. The handler applies `timeout` to what it sends
    /// (not to its own waiting: a batch split after a refusal waits the marketplace's 60 s between its calls), and
    /// answers a timeout as an unknown outcome.
    fn call_admitted(
        &self,
        _ticket: Ticket,
        call: &str,
        request: Value,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Value, CallError>> {
        let call = self.call(call, request);
        Box::pin(async move {
            tokio::time::timeout(timeout, call)
                .await
                .unwrap_or_else(|_| Err(CallError::unknown(format!("timed out after {timeout:?}"))))
        })
    }
}

/// A workflow kind with its definitions.
pub struct Registered {
    pub workflow: Arc<dyn DynWorkflow>,
    /// The definition new instances start on (the highest version).
    pub current: Arc<Definition>,
    /// Every loaded version, for instances pinned to an older one.
    pub versions: BTreeMap<u32, Arc<Definition>>,
}

/// Everything the engine can run.
#[derive(Default)]
pub struct Registry {
    workflows: HashMap<String, Arc<dyn DynWorkflow>>,
    kinds: HashMap<String, Registered>,
    handlers: HashMap<String, Arc<dyn CallHandler>>,
    overrides: Vec<(String, String, Duration)>,
}

/// A registry that cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Definition(#[from] definition::Error),
    #[error("{file}: no workflow implements definition `{name}`")]
    NoWorkflow { file: String, name: String },
    #[error("{file}: version {version} of `{name}` is loaded twice")]
    DuplicateVersion { file: String, name: String, version: u32 },
    #[error("workflow `{0}` has no definition")]
    NoDefinition(String),
    #[error("{file}: call `{call}` has no handler")]
    NoHandler { file: String, call: String },
    #[error("configuration overrides unknown timer `{timer}` of `{kind}`")]
    UnknownTimer { kind: String, timer: String },
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a workflow implementation; its definitions follow with [`Registry::add_definition`].
    pub fn add_workflow(&mut self, wf: Arc<dyn DynWorkflow>) {
        self.workflows.insert(wf.kind().to_string(), wf);
    }

    /// Sets who performs the external call `name`.
    pub fn add_handler(&mut self, name: &str, handler: Arc<dyn CallHandler>) {
        self.handlers.insert(name.to_string(), handler);
    }

    /// Overrides a timer's duration in every version of a kind's definition (configuration).
    pub fn override_timer(&mut self, kind: &str, timer: &str, d: Duration) {
        self.overrides.push((kind.to_string(), timer.to_string(), d));
    }

    /// Parses and validates one definition file's text.
    pub fn add_definition(&mut self, file: &str, source: &str) -> Result<(), Error> {
        #[derive(serde::Deserialize)]
        struct Head {
            name: Option<String>,
        }
        let name = toml::from_str::<Head>(source).ok().and_then(|h| h.name).unwrap_or_default();
        let wf = self
            .workflows
            .get(&name)
            .cloned()
            .ok_or_else(|| Error::NoWorkflow { file: file.to_string(), name: name.clone() })?;
        let def = Definition::parse(file, source, &wf.catalog())?;
        let entry = self.kinds.entry(name.clone()).or_insert_with(|| Registered {
            workflow: wf.clone(),
            current: Arc::new(def.clone()),
            versions: BTreeMap::new(),
        });
        if entry.versions.contains_key(&def.version) {
            return Err(Error::DuplicateVersion { file: file.to_string(), name, version: def.version });
        }
        let def = Arc::new(def);
        if def.version >= entry.current.version {
            entry.current = def.clone();
        }
        entry.versions.insert(def.version, def);
        Ok(())
    }

    /// Loads every `*.toml` of a directory.
    pub fn add_definition_dir(&mut self, dir: &std::path::Path) -> Result<(), Error> {
        let io = |e: std::io::Error| definition::Error {
            file: dir.display().to_string(),
            line: 0,
            message: format!("cannot read the directory: {e}"),
        };
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .map_err(io)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("toml"))
            .collect();
        files.sort();
        for f in files {
            let source = std::fs::read_to_string(&f).map_err(io)?;
            self.add_definition(&f.display().to_string(), &source)?;
        }
        Ok(())
    }

    /// Checks that every workflow has a definition and every declared call a handler, and applies overrides.
    pub fn finish(&mut self) -> Result<(), Error> {
        for kind in self.workflows.keys() {
            if !self.kinds.contains_key(kind) {
                return Err(Error::NoDefinition(kind.clone()));
            }
        }
        for r in self.kinds.values() {
            for d in r.versions.values() {
                for call in d.calls.keys() {
                    if !self.handlers.contains_key(call) {
                        return Err(Error::NoHandler { file: d.file.clone(), call: call.clone() });
                    }
                }
            }
        }
        for (kind, timer, d) in std::mem::take(&mut self.overrides) {
            let r = self.kinds.get_mut(&kind).ok_or_else(|| Error::NoDefinition(kind.clone()))?;
            let mut found = false;
            let mut versions = BTreeMap::new();
            for (v, def) in &r.versions {
                let mut def = (**def).clone();
                found |= def.override_timer(&timer, d);
                versions.insert(*v, Arc::new(def));
            }
            if !found {
                return Err(Error::UnknownTimer { kind, timer });
            }
            r.current = versions.get(&r.current.version).cloned().unwrap_or_else(|| r.current.clone());
            r.versions = versions;
        }
        Ok(())
    }

    pub fn kind(&self, kind: &str) -> Option<&Registered> {
        self.kinds.get(kind)
    }

    pub fn kinds(&self) -> impl Iterator<Item = (&String, &Registered)> {
        self.kinds.iter()
    }

    pub fn handler(&self, call: &str) -> Option<Arc<dyn CallHandler>> {
        self.handlers.get(call).cloned()
    }

    /// The causes of attention the workflows declare, in kind order.
    pub fn attention_causes(&self) -> Vec<super::attention::Cause> {
        let mut kinds: Vec<_> = self.workflows.iter().collect();
        kinds.sort_by_key(|(k, _)| k.as_str());
        kinds.into_iter().flat_map(|(_, w)| w.causes()).collect()
    }

    /// The concerns of an entity of `kind` in `state` with `data` (none for a kind no workflow runs).
    pub fn concerns(&self, kind: &str, state: &str, data: &Value) -> Vec<super::attention::Concern> {
        self.workflows.get(kind).map(|w| w.concerns(state, data)).unwrap_or_default()
    }
}
