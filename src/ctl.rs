//! `marketflow ctl`: the operators' command line over the HTTP ops API.
//!
//! It talks to a running service only through `/api/v1/ops/*` (and `/healthz` for the service's clock), the
//! same routes the console and scripts use, so it needs no access to the store and works against any
//! deployment. Output is either aligned tables for people or the service's JSON, pretty-printed, for scripts.
//!
//! Times relative to "now" (time in state, a timer's remaining time, `--due-before +30m`) are computed on the
//! service's clock, read from `/healthz`, because a demo or test service may run a scaled or manual clock
//! that is far from this machine's.
//!
//! The operator token is a [`Secret`]: it goes into the `Authorization` header (marked sensitive) and nowhere
//! else — not in errors, not in `Debug` output.

use std::fmt;
use std::io::Write;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use reqwest::header::{HeaderValue, RETRY_AFTER};
use reqwest::{Method, StatusCode, Url};
use serde_json::{json, Value};

use crate::config::Secret;

/// How long `ctl` waits for a connection: a service that does not accept one in this time is down or
/// unreachable, and saying so beats hanging.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one request may take in all; the ops reads are bounded pages, so this is generous.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The flags every `ctl` command takes, and the command.
///
/// The connection flags are global so they may stand before or after the subcommand
/// (`ctl --output json timers` and `ctl timers --output json`).
#[derive(Debug, Clone, clap::Args)]
pub struct CtlArgs {
    /// Base URL of the service.
    #[arg(
        long,
        global = true,
        help_heading = "Connection and output",
        env = "MARKETFLOW_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub url: String,
    /// The operator token (bearer); prefer the environment variable, so it stays out of shell history.
    #[arg(long, global = true, help_heading = "Connection and output", env = "MARKETFLOW_OPERATOR_TOKEN", hide_env_values = true, value_parser = parse_secret)]
    pub token: Option<Secret>,
    /// `table` for people, `json` for scripts (the service's JSON, pretty-printed).
    #[arg(long, global = true, help_heading = "Connection and output", value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Who you are, for the audit trail of actions (sent as `X-Operator`); defaults to `$USER`.
    #[arg(long, global = true, help_heading = "Connection and output")]
    pub operator: Option<String>,
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned columns, durations in words.
    Table,
    /// The service's JSON, pretty-printed.
    Json,
}

/// What `ctl` does.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum CtlCommand {
    /// Find entities (subscriptions, organizations) by kind, state, pending timers, failed calls, time in state.
    Entities {
        #[command(subcommand)]
        command: EntitiesCommand,
    },
    /// One entity: where it stands and why, or its history.
    Entity {
        #[command(subcommand)]
        command: EntityCommand,
    },
    /// Pending timers across the service, soonest first.
    Timers(TimersArgs),
    /// Act on an entity: retry, cancel, pause, resume, freeze, unfreeze (audited with --operator and --reason).
    Action(ActionArgs),
    /// The audit trail of operators' actions, newest first: who did what to which entity, when and why.
    Audit(AuditArgs),
    /// Finance's monthly export: every window pushed to the marketplace in a Beijing month, as CSV (or JSON).
    Finance(FinanceArgs),
    /// Billing windows whose push has an unknown outcome, resolved in bulk (see `windows resolve --help`).
    Windows {
        #[command(subcommand)]
        command: WindowsCommand,
    },
    /// The nodes sharing the database, their heartbeats, and the shards each holds (epochs, leases).
    Cluster,
    /// Metering pushes: whether they are held, and this node's batches (`pushes hold|release --reason`).
    Pushes {
        #[command(subcommand)]
        command: Option<PushesCommand>,
    },
    /// What needs a person: every cause with its count and next step, and the concerns (`--cause` narrows them);
    /// `attention dismiss` removes one, audited.
    Attention {
        #[command(subcommand)]
        command: Option<AttentionCommand>,
        /// Only concerns of this cause.
        #[arg(long)]
        cause: Option<String>,
        /// At most this many concerns (1–1000; default 100).
        #[arg(long)]
        limit: Option<usize>,
    },
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum AttentionCommand {
    /// Dismiss one concern (dealt with outside marketflow): it comes back only if it arises again.
    Dismiss {
        /// The entity, `kind/id`.
        entity: EntityRef,
        /// The concern's cause.
        #[arg(long)]
        cause: String,
        /// The concern's subject (a window's start, a call's id), as `ctl attention` prints it.
        #[arg(long, default_value = "")]
        subject: String,
        /// Why: kept in the audit trail.
        #[arg(long)]
        reason: Option<String>,
    },
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum PushesCommand {
    /// Hold every push (an incident switch): windows are still metered and wait, unsent.
    Hold {
        /// Why: kept in the audit trail.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Release held pushes: they go out in batches.
    Release {
        /// Why: kept in the audit trail.
        #[arg(long)]
        reason: Option<String>,
    },
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum WindowsCommand {
    /// Resolve windows of unknown outcome picked by hour, by instances, or both: `mark-pushed` (the marketplace's
    /// bill shows them), `push-again` (it does not) or `cancel`. `--dry-run` lists them and changes nothing.
    Resolve(ResolveArgs),
}

/// The flags of `ctl windows resolve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ResolveArgs {
    /// `mark-pushed`, `push-again` or `cancel`.
    pub resolution: String,
    /// Windows starting at this hour (RFC 3339, e.g. 2026-11-27T08:00:00Z).
    #[arg(long)]
    pub hour: Option<String>,
    /// Windows of this instance (repeat for several).
    #[arg(long = "instance", value_name = "INSTANCE_ID")]
    pub instances: Vec<String>,
    /// Why: recorded with each window and in the audit trail.
    #[arg(long)]
    pub reason: Option<String>,
    /// `mark-pushed`: the request id of the bill's record.
    #[arg(long)]
    pub request_id: Option<String>,
    /// List what would be resolved; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// The flags of `ctl finance`.
#[derive(Debug, Clone, clap::Args)]
pub struct FinanceArgs {
    /// The Beijing calendar month, `YYYY-MM` (default: the month before this one, on the service's clock).
    #[arg(long)]
    pub month: Option<String>,
}

/// `ctl entities ...`
#[derive(Debug, Clone, clap::Subcommand)]
pub enum EntitiesCommand {
    /// List entities matching every filter given.
    List(ListArgs),
}

/// The filters of `ctl entities list`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ListArgs {
    /// Only this kind (`subscription`, `organization`).
    #[arg(long)]
    pub kind: Option<String>,
    /// Only entities in this state (e.g. `opening`, `activation_failed`).
    #[arg(long)]
    pub state: Option<String>,
    /// Only entities with at least one pending timer.
    #[arg(long)]
    pub waiting_on_timer: bool,
    /// Only entities that need a person (any cause; `ctl attention` lists the causes).
    #[arg(long)]
    pub needs_attention: bool,
    /// Only entities with a concern of this cause (e.g. `window_failed`).
    #[arg(long)]
    pub cause: Option<String>,
    /// Only entities in their state at least this long (e.g. `10m`, `2h`), on the service's clock.
    #[arg(long, value_name = "DURATION")]
    pub min_time_in_state: Option<String>,
    /// Page size (1–1000; the service's default is 50).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Start after this entity (`kind/id`, as printed by a previous page).
    #[arg(long, conflicts_with = "all")]
    pub cursor: Option<String>,
    /// Follow the cursors and print every page as one list.
    #[arg(long)]
    pub all: bool,
}

/// `ctl entity ...`
#[derive(Debug, Clone, clap::Subcommand)]
pub enum EntityCommand {
    /// State, definition and version, time in state, timers, pending calls and messages, data.
    Show {
        /// The entity, `kind/id` (e.g. `subscription/1000123`).
        entity: EntityRef,
    },
    /// The entity's journal: every input, the transition it caused and why.
    Journal(JournalArgs),
}

/// The flags of `ctl entity journal`.
#[derive(Debug, Clone, clap::Args)]
pub struct JournalArgs {
    /// The entity, `kind/id`.
    pub entity: EntityRef,
    /// Entries after this sequence number.
    #[arg(long)]
    pub after: Option<u64>,
    /// At most this many entries (1–1000; the service's default is 100).
    #[arg(long)]
    pub limit: Option<usize>,
}

/// The flags of `ctl timers`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TimersArgs {
    /// Only timers due before this: an RFC 3339 time, or `+30m` from the service's now.
    #[arg(long, value_name = "TIME|+DURATION")]
    pub due_before: Option<DueBefore>,
    /// At most this many timers (1–1000; the service's default is 100).
    #[arg(long)]
    pub limit: Option<usize>,
}

/// The flags of `ctl audit`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AuditArgs {
    /// At most this many entries (1–1000; the service's default is 100).
    #[arg(long)]
    pub limit: Option<usize>,
}

/// The flags of `ctl action`.
#[derive(Debug, Clone, clap::Args)]
pub struct ActionArgs {
    /// The entity, `kind/id`.
    pub entity: EntityRef,
    /// `retry`, `cancel`, `pause`, `resume`, `freeze`, `unfreeze` (the service decides which it knows).
    pub action: String,
    /// Why: recorded in the audit trail with the operator's name.
    #[arg(long)]
    pub reason: Option<String>,
    /// The external call to retry or cancel (its id, from `entity show`).
    #[arg(long = "call", value_name = "CALL_ID")]
    pub call_id: Option<String>,
}

/// An entity named on the command line as `kind/id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntityRef {
    pub kind: String,
    pub id: String,
}

impl FromStr for EntityRef {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once('/') {
            Some((kind, id)) if !kind.is_empty() && !id.is_empty() && !id.contains('/') => {
                Ok(Self { kind: kind.to_string(), id: id.to_string() })
            }
            _ => Err(format!("`{s}` is not `kind/id` (e.g. subscription/1000123)")),
        }
    }
}

impl fmt::Display for EntityRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind, self.id)
    }
}

/// The bound of `ctl timers --due-before`: a point in time, or a span from the service's now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DueBefore {
    At(DateTime<Utc>),
    In(Duration),
}

impl FromStr for DueBefore {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(t) = DateTime::parse_from_rfc3339(s) {
            return Ok(Self::At(t.with_timezone(&Utc)));
        }
        let span = s.strip_prefix('+').unwrap_or(s);
        humantime::parse_duration(span)
            .map(Self::In)
            .map_err(|_| format!("`{s}` is neither an RFC 3339 time (2026-11-27T09:00:00Z) nor a span from now (+30m)"))
    }
}

/// clap's parser for the token: wraps it at once so that it never prints.
fn parse_secret(s: &str) -> Result<Secret, std::convert::Infallible> {
    Ok(Secret::new(s))
}

/// Why a `ctl` command failed, in words that say what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("`{url}` is not a usable service URL ({reason}); set --url or MARKETFLOW_URL, e.g. http://127.0.0.1:8080")]
    InvalidUrl { url: String, reason: String },
    #[error("no operator token: set MARKETFLOW_OPERATOR_TOKEN (or pass --token)")]
    NoToken,
    #[error("`{0}` cannot be sent as the operator's name: use 1–64 printable ASCII characters (--operator)")]
    InvalidOperator(String),
    #[error("cannot connect to {url} ({reason}): is `marketflow serve` running there? Set --url or MARKETFLOW_URL")]
    Connect { url: String, reason: String },
    #[error("{url} did not answer within {}s ({reason})", REQUEST_TIMEOUT.as_secs())]
    Timeout { url: String, reason: String },
    #[error("the request to {url} failed: {reason}")]
    Http { url: String, reason: String },
    #[error("the operator token was refused (set MARKETFLOW_OPERATOR_TOKEN)")]
    Unauthorized,
    #[error("this token may not use the operator API ({message}): use the operator token (MARKETFLOW_OPERATOR_TOKEN)")]
    Forbidden { message: String },
    /// The service knows the route but not the entity; its message names it (`no subscription `x``).
    #[error("{message}")]
    NotFound { message: String },
    /// The service does not know the route at all: typically a service older than this `ctl`.
    #[error("the service at {url} has no route `{method} {path}` (404): it may be older than this ctl")]
    NoSuchRoute { url: String, method: String, path: String },
    #[error("the service answered {status}: {code}: {message}{}", retry_hint(.retry_after))]
    Server { status: StatusCode, code: String, message: String, retry_after: Option<String> },
    #[error("the service's answer to {path} is not what ctl expects: {reason}")]
    InvalidResponse { path: String, reason: String },
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}

fn retry_hint(retry_after: &Option<String>) -> String {
    match retry_after {
        Some(s) => format!(" (retry after {s} s)"),
        None => String::new(),
    }
}

/// Runs one `ctl` command against the service and prints its result to `out`.
///
/// `out` is a parameter (not stdout) so that tests read exactly what an operator would see.
pub async fn run(args: CtlArgs, out: &mut dyn Write) -> Result<(), Error> {
    let client = Client::new(&args)?;
    match &args.command {
        CtlCommand::Entities { command: EntitiesCommand::List(list) } => {
            entities_list(&client, list, args.output, out).await
        }
        CtlCommand::Entity { command: EntityCommand::Show { entity } } => {
            entity_show(&client, entity, args.output, out).await
        }
        CtlCommand::Entity { command: EntityCommand::Journal(j) } => journal(&client, j, args.output, out).await,
        CtlCommand::Timers(t) => timers(&client, t, args.output, out).await,
        CtlCommand::Action(a) => action(&client, a, args.output, out).await,
        CtlCommand::Audit(a) => audit(&client, a, args.output, out).await,
        CtlCommand::Finance(f) => finance(&client, f, args.output, out).await,
        CtlCommand::Windows { command: WindowsCommand::Resolve(r) } => {
            resolve_windows(&client, r, args.output, out).await
        }
        CtlCommand::Cluster => cluster(&client, args.output, out).await,
        CtlCommand::Pushes { command } => pushes(&client, command.as_ref(), args.output, out).await,
        CtlCommand::Attention {
            command: Some(AttentionCommand::Dismiss { entity, cause, subject, reason }), ..
        } => {
            let url = client.ops_url(&["entities", &entity.kind, &entity.id, "attention", "dismiss"], &[])?;
            client.post(url, json!({ "cause": cause, "subject": subject, "reason": reason })).await?;
            let about = if subject.is_empty() { String::new() } else { format!(" [{subject}]") };
            writeln!(out, "dismissed {cause}{about} of {entity}")?;
            Ok(())
        }
        CtlCommand::Attention { command: None, cause, limit } => {
            attention(&client, cause.as_deref(), *limit, args.output, out).await
        }
    }
}

/// Every cause with its count and next step, then the concerns.
async fn attention(
    client: &Client,
    cause: Option<&str>,
    limit: Option<usize>,
    output: Output,
    out: &mut dyn Write,
) -> Result<(), Error> {
    let mut q: Vec<(&str, String)> = Vec::new();
    if let Some(c) = cause {
        q.push(("cause", c.to_string()));
    }
    if let Some(l) = limit {
        q.push(("limit", l.to_string()));
    }
    let view = client.get(client.ops_url(&["attention"], &q)?).await?;
    if output == Output::Json {
        return print_json(out, &view);
    }
    let mut t = Table::new(&["CAUSE", "NOW", "NEXT STEP"]);
    for c in array(&view, "causes") {
        t.row(vec![text(&c, "cause"), c["count"].to_string(), text(&c, "next_step")]);
    }
    t.write(out, 0)?;
    let items = array(&view, "items");
    section(out, "Concerns", items.len())?;
    for i in &items {
        let subject = text(i, "subject");
        let about = if subject.is_empty() || subject == "-" { String::new() } else { format!(" [{subject}]") };
        writeln!(
            out,
            "  {}/{} {}{about} since {}",
            text(i, "kind"),
            text(i, "id"),
            text(i, "cause"),
            text(i, "since")
        )?;
        writeln!(out, "    {}", text(i, "next_step"))?;
    }
    Ok(())
}

/// The hold on pushes and this node's batches; `hold` and `release` flip the hold first.
async fn pushes(
    client: &Client,
    command: Option<&PushesCommand>,
    output: Output,
    out: &mut dyn Write,
) -> Result<(), Error> {
    if let Some(c) = command {
        let (switch, reason) = match c {
            PushesCommand::Hold { reason } => ("hold", reason),
            PushesCommand::Release { reason } => ("release", reason),
        };
        client.post(client.ops_url(&["pushes", switch], &[])?, json!({ "reason": reason })).await?;
    }
    let view = client.get(client.ops_url(&["pushes"], &[])?).await?;
    if output == Output::Json {
        return print_json(out, &view);
    }
    let hold = &view["hold"];
    if hold["held"] == true {
        writeln!(
            out,
            "pushes HELD since {} by {}: {}",
            hold["since"].as_str().unwrap_or("?"),
            hold["operator"].as_str().unwrap_or("?"),
            hold["reason"].as_str().unwrap_or("?")
        )?;
    } else {
        writeln!(out, "pushes flowing")?;
    }
    writeln!(
        out,
        "this node: {} call(s) carrying {} window(s), {} split(s), {} window(s) waiting",
        view["calls"], view["records"], view["splits"], view["waiting"]
    )?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// HTTP

/// The service as `ctl` reaches it: base URL, credentials, and the mapping of HTTP answers to [`Error`]s.
struct Client {
    http: reqwest::Client,
    base: Url,
    token: Option<Secret>,
    operator: Option<HeaderValue>,
}

impl Client {
    fn new(args: &CtlArgs) -> Result<Self, Error> {
        let invalid = |reason: &str| Error::InvalidUrl { url: args.url.clone(), reason: reason.to_string() };
        let base = Url::parse(&args.url).map_err(|e| invalid(&e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() || base.host().is_none() {
            return Err(invalid("expected an http:// or https:// URL"));
        }
        let token = args.token.clone().filter(|t| !t.expose().is_empty());
        // An explicit --operator must be sendable; a $USER that is not simply leaves the server's default.
        let operator = match &args.operator {
            Some(name) => Some(operator_header(name).ok_or_else(|| Error::InvalidOperator(name.clone()))?),
            None => std::env::var("USER").or_else(|_| std::env::var("USERNAME")).ok().and_then(|n| operator_header(&n)),
        };
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("marketflow-ctl/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Http { url: args.url.clone(), reason: error_chain(&e) })?;
        Ok(Self { http, base, token, operator })
    }

    /// The URL of `segments` under the base URL (each segment percent-encoded), with `query`.
    fn url(&self, segments: &[&str], query: &[(&str, String)]) -> Result<Url, Error> {
        let mut url = self.base.clone();
        url.set_query(None);
        url.set_fragment(None);
        url.path_segments_mut()
            .map_err(|()| Error::InvalidUrl { url: self.base.to_string(), reason: "it cannot have a path".into() })?
            .pop_if_empty()
            .extend(segments);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        Ok(url)
    }

    fn ops_url(&self, segments: &[&str], query: &[(&str, String)]) -> Result<Url, Error> {
        let mut all = vec!["api", "v1", "ops"];
        all.extend_from_slice(segments);
        self.url(&all, query)
    }

    /// An authenticated GET of the ops API; the answer's JSON.
    async fn get(&self, url: Url) -> Result<Value, Error> {
        self.send(Method::GET, url, None).await
    }

    async fn post(&self, url: Url, body: Value) -> Result<Value, Error> {
        self.send(Method::POST, url, Some(body)).await
    }

    /// A GET whose answer is text (CSV), with the same errors as the JSON routes.
    async fn get_text(&self, url: Url) -> Result<String, Error> {
        let token = self.token.as_ref().ok_or(Error::NoToken)?;
        let mut req = self.http.get(url.clone()).bearer_auth(token.expose());
        if let Some(op) = &self.operator {
            req = req.header("X-Operator", op.clone());
        }
        let resp = req.send().await.map_err(|e| self.transport_error(&e))?;
        if resp.status().is_success() {
            return resp.text().await.map_err(|e| self.transport_error(&e));
        }
        match self.answer(&Method::GET, &url, resp).await {
            Err(e) => Err(e),
            Ok(_) => {
                Err(Error::InvalidResponse { path: url.path().to_string(), reason: "an error without one".into() })
            }
        }
    }

    async fn send(&self, method: Method, url: Url, body: Option<Value>) -> Result<Value, Error> {
        // Checked before sending: every ops route needs the token, and "set the variable" is the fix.
        let token = self.token.as_ref().ok_or(Error::NoToken)?;
        let mut req = self.http.request(method.clone(), url.clone()).bearer_auth(token.expose());
        if let Some(op) = &self.operator {
            req = req.header("X-Operator", op.clone());
        }
        if let Some(b) = &body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| self.transport_error(&e))?;
        self.answer(&method, &url, resp).await
    }

    /// The service's clock, from `/healthz` (no token needed).
    async fn service_now(&self) -> Result<DateTime<Utc>, Error> {
        let url = self.url(&["healthz"], &[])?;
        let resp = self.http.get(url.clone()).send().await.map_err(|e| self.transport_error(&e))?;
        let v = self.answer(&Method::GET, &url, resp).await?;
        v.get("now")
            .and_then(Value::as_str)
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.with_timezone(&Utc))
            .ok_or_else(|| Error::InvalidResponse { path: url.path().to_string(), reason: "no `now` time".into() })
    }

    fn transport_error(&self, e: &reqwest::Error) -> Error {
        let url = self.base.as_str().trim_end_matches('/').to_string();
        let reason = error_chain(e);
        if e.is_connect() {
            // "Connection refused", "failed to lookup address": the innermost cause is the whole story.
            let reason = innermost(e);
            Error::Connect { url, reason }
        } else if e.is_timeout() {
            Error::Timeout { url, reason }
        } else {
            Error::Http { url, reason }
        }
    }

    /// Maps a response to its JSON or to the [`Error`] that explains it.
    async fn answer(&self, method: &Method, url: &Url, resp: reqwest::Response) -> Result<Value, Error> {
        let status = resp.status();
        let retry_after = resp.headers().get(RETRY_AFTER).and_then(|v| v.to_str().ok()).map(String::from);
        let text = resp.text().await.map_err(|e| self.transport_error(&e))?;
        let path = url.path().to_string();
        if status.is_success() {
            return serde_json::from_str(&text)
                .map_err(|e| Error::InvalidResponse { path, reason: format!("not JSON ({e})") });
        }
        // Errors are `{"code", "message"}`; anything else (a proxy's page) is shown as its first line.
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let code = body.get("code").and_then(Value::as_str).unwrap_or("-").to_string();
        let message = match body.get("message").and_then(Value::as_str) {
            Some(m) => m.to_string(),
            None => text.lines().next().unwrap_or_default().chars().take(200).collect(),
        };
        Err(match status {
            StatusCode::UNAUTHORIZED => Error::Unauthorized,
            StatusCode::FORBIDDEN => Error::Forbidden { message },
            // The service names an unrouted path `no_such_route` (an older service: `not_found`, "no such route").
            StatusCode::NOT_FOUND if code == "not_found" && message != "no such route" && !message.is_empty() => {
                Error::NotFound { message }
            }
            StatusCode::NOT_FOUND => Error::NoSuchRoute {
                url: self.base.as_str().trim_end_matches('/').to_string(),
                method: method.to_string(),
                path,
            },
            _ => Error::Server { status, code, message, retry_after },
        })
    }
}

/// A name the service accepts in `X-Operator` (it ignores longer ones).
fn operator_header(name: &str) -> Option<HeaderValue> {
    let ok = !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
    if ok {
        HeaderValue::from_str(name).ok()
    } else {
        None
    }
}

/// An error with its causes ("connection refused" sits a few sources down in reqwest's errors).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !parts.iter().any(|p| p.contains(&s_text)) {
            parts.push(s_text);
        }
        source = s.source();
    }
    // reqwest's top line repeats the URL the message already names; the innermost cause says what happened.
    if parts.len() > 1 {
        parts.remove(0);
    }
    parts.join(": ")
}

fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut last = e;
    while let Some(s) = last.source() {
        last = s;
    }
    last.to_string()
}

// ---------------------------------------------------------------------------------------------------------
// Commands

async fn entities_list(client: &Client, a: &ListArgs, output: Output, out: &mut dyn Write) -> Result<(), Error> {
    let mut query: Vec<(&str, String)> = Vec::new();
    if let Some(k) = &a.kind {
        query.push(("kind", k.clone()));
    }
    if let Some(s) = &a.state {
        query.push(("state", s.clone()));
    }
    if a.waiting_on_timer {
        query.push(("waiting_on_timer", "true".into()));
    }
    if a.needs_attention {
        query.push(("needs_attention", "true".into()));
    }
    if let Some(c) = &a.cause {
        query.push(("cause", c.clone()));
    }
    if let Some(d) = &a.min_time_in_state {
        query.push(("min_time_in_state", d.clone()));
    }
    if let Some(l) = a.limit {
        query.push(("limit", l.to_string()));
    }
    let mut cursor = a.cursor.clone();
    let mut items: Vec<Value> = Vec::new();
    let next_cursor = loop {
        let mut q = query.clone();
        if let Some(c) = &cursor {
            q.push(("cursor", c.clone()));
        }
        let page = client.get(client.ops_url(&["entities"], &q)?).await?;
        if !a.all {
            if output == Output::Json {
                return print_json(out, &page);
            }
            items = array(&page, "items");
            break page.get("next_cursor").and_then(Value::as_str).map(String::from);
        }
        items.extend(array(&page, "items"));
        match page.get("next_cursor").and_then(Value::as_str) {
            // A cursor that does not move would loop for ever; the service's cursors always move.
            Some(next) if cursor.as_deref() != Some(next) => cursor = Some(next.to_string()),
            _ => break None,
        }
    };
    if output == Output::Json {
        // --all: the pages as one, as if the service had answered them at once.
        return print_json(out, &json!({ "items": items, "next_cursor": Value::Null }));
    }
    if items.is_empty() {
        writeln!(out, "no entities match")?;
        return Ok(());
    }
    let mut t = Table::new(&["ENTITY", "STATE", "DEFINITION", "IN STATE", "NEXT TIMER", "FLAGS"]);
    for e in &items {
        let timers = array(e, "timers");
        let next = timers.iter().min_by_key(|t| t.get("remaining_seconds").and_then(Value::as_i64).unwrap_or(i64::MAX));
        let next_timer = match next {
            Some(n) => {
                let more = if timers.len() > 1 { format!(" (+{} more)", timers.len() - 1) } else { String::new() };
                format!("{} {}{more}", text(n, "name"), remaining(n.get("remaining_seconds").and_then(Value::as_i64)))
            }
            None => "-".into(),
        };
        let in_state = e.get("seconds_in_state").and_then(Value::as_i64).map(|s| human_span(s.unsigned_abs()));
        t.row(vec![
            format!("{}/{}", text(e, "kind"), text(e, "id")),
            text(e, "state"),
            definition(e),
            in_state.unwrap_or_else(|| "-".into()),
            next_timer,
            if flag(e, "paused") { "paused".into() } else { String::new() },
        ]);
    }
    t.write(out, 0)?;
    let n = items.len();
    writeln!(out, "{n} {}", if n == 1 { "entity" } else { "entities" })?;
    if let Some(c) = next_cursor {
        writeln!(out, "more: --cursor {c} (or --all)")?;
    }
    Ok(())
}

async fn entity_show(client: &Client, e: &EntityRef, output: Output, out: &mut dyn Write) -> Result<(), Error> {
    let view = client.get(client.ops_url(&["entities", &e.kind, &e.id], &[])?).await?;
    if output == Output::Json {
        return print_json(out, &view);
    }
    // Time in state needs the service's clock; without it (an old service) the local clock is the best guess.
    let now = client.service_now().await.unwrap_or_else(|_| Utc::now());
    let since = view.get("state_since").and_then(Value::as_str).and_then(parse_time);
    let state = match since {
        Some(t) => format!(
            "{}  (for {}, since {})",
            text(&view, "state"),
            human_span((now - t).num_seconds().unsigned_abs()),
            show_time(t)
        ),
        None => text(&view, "state"),
    };
    let fingerprint: String = text(&view, "fingerprint").chars().take(12).collect();
    let mut head = Table::plain();
    head.row(vec!["state".into(), state]);
    head.row(vec!["definition".into(), format!("{}  (fingerprint {fingerprint})", definition(&view))]);
    head.row(vec!["paused".into(), yes_no(flag(&view, "paused"))]);
    head.row(vec!["needs attention".into(), yes_no(flag(&view, "needs_attention"))]);
    head.row(vec!["terminal".into(), yes_no(flag(&view, "terminal"))]);
    head.row(vec!["last error".into(), text(&view, "last_error")]);
    head.row(vec!["created".into(), time_text(&view, "created_at")]);
    head.row(vec!["updated".into(), time_text(&view, "updated_at")]);
    head.row(vec!["journal".into(), format!("{} entries (ctl entity journal {e})", text(&view, "seq"))]);
    writeln!(out, "{}/{}", text(&view, "kind"), text(&view, "id"))?;
    head.write(out, 2)?;

    let concerns = array(&view, "attention");
    if !concerns.is_empty() {
        section(out, "Needs attention", concerns.len())?;
        for c in &concerns {
            let subject = text(c, "subject");
            let about = if subject.is_empty() || subject == "-" { String::new() } else { format!(" [{subject}]") };
            writeln!(out, "  {}{about}: {}", text(c, "cause"), text(c, "next_step"))?;
        }
    }

    let timers = array(&view, "timers");
    section(out, "Timers", timers.len())?;
    if !timers.is_empty() {
        timer_table(&timers, false).write(out, 2)?;
    }

    let calls = array(&view, "pending_calls");
    section(out, "Pending calls", calls.len())?;
    if !calls.is_empty() {
        let mut t = Table::new(&["ID", "CALL", "STATUS", "ATTEMPTS", "NEXT RETRY", "LAST ERROR"]);
        for c in &calls {
            let next = match c.get("next_attempt_at").and_then(Value::as_str).and_then(parse_time) {
                Some(at) => format!("{} ({})", show_time(at), remaining(Some((at - now).num_seconds()))),
                None => "-".into(),
            };
            t.row(vec![
                text(c, "id"),
                text(c, "call"),
                text(c, "status"),
                text(c, "attempts"),
                next,
                text(c, "last_error"),
            ]);
        }
        t.write(out, 2)?;
    }

    let messages = array(&view, "pending_messages");
    section(out, "Pending messages", messages.len())?;
    if !messages.is_empty() {
        let mut t = Table::new(&["ID", "TO", "CREATED", "BODY"]);
        for m in &messages {
            let to = m.get("to").map(|to| format!("{}/{}", text(to, "kind"), text(to, "id"))).unwrap_or_default();
            let body = m.get("body").map(Value::to_string).unwrap_or_default();
            t.row(vec![text(m, "id"), to, time_text(m, "created_at"), body]);
        }
        t.write(out, 2)?;
    }

    writeln!(out)?;
    writeln!(out, "Data")?;
    print_json(out, view.get("data").unwrap_or(&Value::Null))
}

async fn journal(client: &Client, j: &JournalArgs, output: Output, out: &mut dyn Write) -> Result<(), Error> {
    let mut query: Vec<(&str, String)> = Vec::new();
    if let Some(a) = j.after {
        query.push(("after", a.to_string()));
    }
    if let Some(l) = j.limit {
        query.push(("limit", l.to_string()));
    }
    let page = client.get(client.ops_url(&["entities", &j.entity.kind, &j.entity.id, "journal"], &query)?).await?;
    if output == Output::Json {
        return print_json(out, &page);
    }
    let items = array(&page, "items");
    if items.is_empty() {
        writeln!(out, "no journal entries{}", j.after.map(|a| format!(" after {a}")).unwrap_or_default())?;
        return Ok(());
    }
    let mut t = Table::new(&["SEQ", "AT", "EVENT", "TRANSITION", "STATUS", "CAUSE", "NOTES"]);
    for e in &items {
        let (from, to) = (text(e, "from"), text(e, "to"));
        let transition = if from == to { to } else { format!("{from} → {to}") };
        let status = match e.get("code").and_then(Value::as_str) {
            Some(code) => format!("{} ({code})", text(e, "status")),
            None => text(e, "status"),
        };
        let notes: Vec<String> = array(e, "notes").iter().map(|n| n.as_str().unwrap_or_default().to_string()).collect();
        t.row(vec![
            text(e, "seq"),
            time_text(e, "at"),
            text(e, "event"),
            transition,
            status,
            e.get("cause").map(cause).unwrap_or_default(),
            notes.join("; "),
        ]);
    }
    t.write(out, 0)?;
    if let Some(next) = page.get("next_cursor").and_then(Value::as_str) {
        writeln!(out, "more: --after {next}")?;
    }
    Ok(())
}

async fn timers(client: &Client, a: &TimersArgs, output: Output, out: &mut dyn Write) -> Result<(), Error> {
    let mut query: Vec<(&str, String)> = Vec::new();
    let bound = match a.due_before {
        Some(DueBefore::At(t)) => Some(t),
        Some(DueBefore::In(d)) => {
            let span = chrono::TimeDelta::from_std(d).unwrap_or(chrono::TimeDelta::MAX);
            let now = client.service_now().await?;
            Some(now.checked_add_signed(span).unwrap_or(DateTime::<Utc>::MAX_UTC))
        }
        None => None,
    };
    if let Some(t) = bound {
        query.push(("due_before", t.to_rfc3339_opts(SecondsFormat::AutoSi, true)));
    }
    if let Some(l) = a.limit {
        query.push(("limit", l.to_string()));
    }
    let page = client.get(client.ops_url(&["timers"], &query)?).await?;
    if output == Output::Json {
        return print_json(out, &page);
    }
    let items = array(&page, "items");
    let before = bound.map(|t| format!(" due before {}", show_time(t))).unwrap_or_default();
    writeln!(out, "service time {}", time_text(&page, "now"))?;
    if items.is_empty() {
        writeln!(out, "no pending timers{before}")?;
        return Ok(());
    }
    timer_table(&items, true).write(out, 0)?;
    let n = items.len();
    writeln!(out, "{n} pending {}{before}", if n == 1 { "timer" } else { "timers" })?;
    Ok(())
}

async fn action(client: &Client, a: &ActionArgs, output: Output, out: &mut dyn Write) -> Result<(), Error> {
    let url = client.ops_url(&["entities", &a.entity.kind, &a.entity.id, "actions", &a.action], &[])?;
    let answer = client.post(url, json!({ "reason": a.reason, "call_id": a.call_id })).await?;
    if output == Output::Json {
        return print_json(out, &answer);
    }
    writeln!(out, "{} {}: done", a.action, a.entity)?;
    match &answer {
        Value::Object(map) => {
            let mut t = Table::plain();
            for (k, v) in map {
                let shown = match v {
                    Value::String(s) => s.clone(),
                    Value::Null => "-".into(),
                    other => other.to_string(),
                };
                t.row(vec![k.clone(), shown]);
            }
            t.write(out, 2)?;
            Ok(())
        }
        other => print_json(out, other),
    }
}

async fn audit(client: &Client, a: &AuditArgs, output: Output, out: &mut dyn Write) -> Result<(), Error> {
    let query: Vec<(&str, String)> = a.limit.map(|l| ("limit", l.to_string())).into_iter().collect();
    let page = client.get(client.ops_url(&["audit"], &query)?).await?;
    if output == Output::Json {
        return print_json(out, &page);
    }
    let items = array(&page, "items");
    if items.is_empty() {
        writeln!(out, "no operator actions yet")?;
        return Ok(());
    }
    let mut t = Table::new(&["AT", "OPERATOR", "ENTITY", "ACTION", "REASON"]);
    for e in &items {
        let text = |k: &str| e[k].as_str().unwrap_or("-").to_string();
        t.row(vec![time_text(e, "at"), text("operator"), text("entity"), text("action"), text("reason")]);
    }
    t.write(out, 0)?;
    let n = items.len();
    writeln!(out, "{n} {}", if n == 1 { "action" } else { "actions" })?;
    Ok(())
}

/// Nodes (heartbeat age, state, shards held) and the shards' owners, epochs and leases, compressed into runs of
/// consecutive shards with the same owner.
async fn cluster(client: &Client, output: Output, out: &mut dyn Write) -> Result<(), Error> {
    let view = client.get(client.ops_url(&["cluster"], &[])?).await?;
    if output == Output::Json {
        return print_json(out, &view);
    }
    let now = view["now"].as_str().and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
    let age = |t: &Value| {
        let at = t.as_str().and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
        match (now, at) {
            (Some(n), Some(a)) => format!("{:.1} s", (n - a).num_milliseconds() as f64 / 1000.0),
            _ => "-".into(),
        }
    };
    writeln!(
        out,
        "{} mode, asked {}; lease {} s",
        view["mode"].as_str().unwrap_or("?"),
        view["node"].as_str().unwrap_or("?"),
        view["lease_seconds"]
    )?;
    let mut t = Table::new(&["NODE", "STATE", "HEARTBEAT AGO", "SHARDS", "URL"]);
    for n in array(&view, "nodes") {
        let name = n["node"].as_str().unwrap_or("-").to_string();
        let held = view["shards_by_node"][&name].as_u64().unwrap_or(0);
        t.row(vec![
            name,
            n["state"].as_str().unwrap_or("-").into(),
            age(&n["heartbeat"]),
            held.to_string(),
            n["url"].as_str().unwrap_or("-").into(),
        ]);
    }
    t.write(out, 0)?;
    writeln!(out, "{} shards without a live lease", view["unowned"])?;
    // Runs of shards with the same owner, for a view that fits a terminal.
    let mut t = Table::new(&["SHARDS", "OWNER", "EPOCHS", "LEASE ENDS IN"]);
    let shards = array(&view, "shards");
    let mut i = 0;
    while i < shards.len() {
        let owner = shards[i]["owner"].as_str().unwrap_or("-").to_string();
        let mut j = i;
        while j + 1 < shards.len() && shards[j + 1]["owner"].as_str().unwrap_or("-") == owner {
            j += 1;
        }
        let epochs: Vec<i64> = shards[i..=j].iter().filter_map(|s| s["epoch"].as_i64()).collect();
        let (lo, hi) = (epochs.iter().min().copied().unwrap_or(0), epochs.iter().max().copied().unwrap_or(0));
        let until = shards[i]["lease_until"].as_str().and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
        let ends = match (now, until) {
            (Some(n), Some(u)) => format!("{:.1} s", (u - n).num_milliseconds() as f64 / 1000.0),
            _ => "-".into(),
        };
        let range = if i == j { format!("{i}") } else { format!("{i}-{j}") };
        t.row(vec![range, owner, if lo == hi { lo.to_string() } else { format!("{lo}-{hi}") }, ends]);
        i = j + 1;
    }
    t.write(out, 0)?;
    Ok(())
}

/// CSV as the service makes it (one renderer, the service's), or its JSON with `--output json`.
async fn resolve_windows(client: &Client, r: &ResolveArgs, output: Output, out: &mut dyn Write) -> Result<(), Error> {
    let body = json!({
        "resolution": r.resolution, "hour": r.hour, "instances": r.instances, "reason": r.reason,
        "request_id": r.request_id, "dry_run": r.dry_run,
    });
    let answer = client.post(client.ops_url(&["windows", "resolve"], &[])?, body).await?;
    if output == Output::Json {
        return print_json(out, &answer);
    }
    let windows = array(&answer, "windows");
    let verb = if answer["dry_run"] == true { "would be resolved as" } else { "resolved as" };
    writeln!(out, "{} window(s) {verb} {}", windows.len(), answer["resolution"].as_str().unwrap_or("?"))?;
    if windows.is_empty() {
        return Ok(());
    }
    let mut t = Table::new(&["WINDOW", "INSTANCE", "UNITS", "CALL", "LAST ERROR"]);
    for w in &windows {
        let text = |k: &str| w[k].as_str().unwrap_or("-").to_string();
        t.row(vec![
            time_text(w, "window_start"),
            text("instance_id"),
            w["units"].to_string(),
            text("call_id"),
            text("last_error"),
        ]);
    }
    t.write(out, 0)?;
    Ok(())
}

async fn finance(client: &Client, f: &FinanceArgs, output: Output, out: &mut dyn Write) -> Result<(), Error> {
    let mut query: Vec<(&str, String)> = f.month.iter().map(|m| ("month", m.clone())).collect();
    if output == Output::Json {
        query.push(("format", "json".into()));
        let page = client.get(client.ops_url(&["finance", "pushed-windows"], &query)?).await?;
        return print_json(out, &page);
    }
    let csv = client.get_text(client.ops_url(&["finance", "pushed-windows"], &query)?).await?;
    out.write_all(csv.as_bytes())?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// Rendering

/// Columns aligned on the widest cell; the last column is not padded, so lines carry no trailing blanks.
struct Table {
    header: Option<Vec<String>>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(header: &[&str]) -> Self {
        Self { header: Some(header.iter().map(|h| h.to_string()).collect()), rows: Vec::new() }
    }

    /// A table without a header (key/value lines).
    fn plain() -> Self {
        Self { header: None, rows: Vec::new() }
    }

    fn row(&mut self, cells: Vec<String>) {
        // A newline inside a cell (an error's text) would break the columns.
        self.rows.push(cells.into_iter().map(|c| c.replace(['\n', '\r'], " ")).collect());
    }

    fn write(&self, out: &mut dyn Write, indent: usize) -> std::io::Result<()> {
        let lines: Vec<&Vec<String>> = self.header.iter().chain(self.rows.iter()).collect();
        let columns = lines.iter().map(|l| l.len()).max().unwrap_or(0);
        let mut widths = vec![0usize; columns];
        for line in &lines {
            for (i, cell) in line.iter().enumerate() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        for line in lines {
            let mut s = " ".repeat(indent);
            for (i, cell) in line.iter().enumerate() {
                s.push_str(cell);
                if i + 1 < line.len() {
                    s.push_str(&" ".repeat(widths[i] - cell.chars().count() + 2));
                }
            }
            writeln!(out, "{}", s.trim_end())?;
        }
        Ok(())
    }
}

fn timer_table(timers: &[Value], with_entity: bool) -> Table {
    let mut t = if with_entity {
        Table::new(&["NAME", "ENTITY", "DUE", "REMAINING"])
    } else {
        Table::new(&["NAME", "DUE", "REMAINING"])
    };
    for tm in timers {
        let mut row = vec![text(tm, "name")];
        if with_entity {
            row.push(text(tm, "entity"));
        }
        row.push(time_text(tm, "due"));
        row.push(remaining(tm.get("remaining_seconds").and_then(Value::as_i64)));
        t.row(row);
    }
    t
}

fn section(out: &mut dyn Write, title: &str, n: usize) -> std::io::Result<()> {
    writeln!(out)?;
    if n == 0 {
        writeln!(out, "{title}: none")
    } else {
        writeln!(out, "{title}")
    }
}

fn print_json(out: &mut dyn Write, v: &Value) -> Result<(), Error> {
    let s = serde_json::to_string_pretty(v).map_err(|e| Error::Output(std::io::Error::other(e)))?;
    writeln!(out, "{s}")?;
    Ok(())
}

/// A field as text: strings as they are, numbers and booleans printed, absent or null as `-`.
fn text(v: &Value, key: &str) -> String {
    match v.get(key) {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

fn array(v: &Value, key: &str) -> Vec<Value> {
    v.get(key).and_then(Value::as_array).cloned().unwrap_or_default()
}

fn flag(v: &Value, key: &str) -> bool {
    v.get(key).and_then(Value::as_bool).unwrap_or(false)
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.into()
}

fn definition(v: &Value) -> String {
    format!("{}@{}", text(v, "definition"), text(v, "version"))
}

fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s).ok().map(|t| t.with_timezone(&Utc))
}

fn show_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A time field to the second (the service sends nanoseconds), or as sent if it does not parse.
fn time_text(v: &Value, key: &str) -> String {
    match v.get(key).and_then(Value::as_str) {
        Some(s) => parse_time(s).map(show_time).unwrap_or_else(|| s.to_string()),
        None => "-".into(),
    }
}

/// A journal entry's cause in words, as the engine's `Cause` prints it.
fn cause(c: &Value) -> String {
    let f = |k: &str| text(c, k);
    match c.get("kind").and_then(Value::as_str) {
        Some("api") => format!("api call by {}", f("principal")),
        Some("spi") => format!("marketplace SPI {}", f("action")),
        Some("timer") => format!("timer {}", f("name")),
        Some("message") => format!("message from {}", f("from")),
        Some("call") => format!("result of {}", f("call")),
        Some("operator") => format!("operator {}: {}", f("operator"), f("reason")),
        Some("system") => format!("system: {}", f("detail")),
        _ => c.to_string(),
    }
}

/// A span in the largest units that keep it readable: `45 s`, `41 min`, `2 h 5 min`, `3 d 4 h`.
pub fn human_span(secs: u64) -> String {
    match secs {
        0..=59 => format!("{secs} s"),
        60..=3599 => format!("{} min", secs / 60),
        3600..=86_399 => match (secs / 3600, secs % 3600 / 60) {
            (h, 0) => format!("{h} h"),
            (h, m) => format!("{h} h {m} min"),
        },
        _ => match (secs / 86_400, secs % 86_400 / 3600) {
            (d, 0) => format!("{d} d"),
            (d, h) => format!("{d} d {h} h"),
        },
    }
}

/// A timer's remaining time: `in 41 min`, `3 min overdue`, `due now`.
pub fn remaining(secs: Option<i64>) -> String {
    match secs {
        None => "-".into(),
        Some(0) => "due now".into(),
        Some(s) if s > 0 => format!("in {}", human_span(s.unsigned_abs())),
        Some(s) => format!("{} overdue", human_span(s.unsigned_abs())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn spans_read_like_an_operator_would_say_them() {
        assert_eq!(remaining(Some(41 * 60 + 5)), "in 41 min");
        assert_eq!(remaining(Some(-3 * 60 - 59)), "3 min overdue");
        assert_eq!(remaining(Some(0)), "due now");
        assert_eq!(remaining(Some(30)), "in 30 s");
        assert_eq!(remaining(None), "-");
        assert_eq!(human_span(2 * 3600), "2 h");
        assert_eq!(human_span(2 * 3600 + 5 * 60), "2 h 5 min");
        assert_eq!(human_span(3 * 86_400 + 4 * 3600 + 59), "3 d 4 h");
        assert_eq!(human_span(86_400), "1 d");
    }

    #[test]
    fn tables_align_columns_without_trailing_blanks() {
        let mut t = Table::new(&["A", "LONGER", "C"]);
        t.row(vec!["wide cell".into(), "x".into(), "".into()]);
        t.row(vec!["y".into(), "z\nz".into(), "last".into()]);
        let mut buf = Vec::new();
        t.write(&mut buf, 2).unwrap();
        let s = String::from_utf8(buf).unwrap();
        assert_eq!(s, "  A          LONGER  C\n  wide cell  x\n  y          z z     last\n");
    }

    #[test]
    fn entity_refs_and_due_bounds_parse_or_say_why_not() {
        assert_eq!(
            "subscription/1000123".parse::<EntityRef>(),
            Ok(EntityRef { kind: "subscription".into(), id: "1000123".into() })
        );
        for bad in ["subscription", "/1", "subscription/", "a/b/c"] {
            assert!(bad.parse::<EntityRef>().unwrap_err().contains("kind/id"), "{bad}");
        }
        assert_eq!("+30m".parse::<DueBefore>(), Ok(DueBefore::In(Duration::from_secs(1800))));
        assert_eq!("2h".parse::<DueBefore>(), Ok(DueBefore::In(Duration::from_secs(7200))));
        let at = "2026-11-27T09:00:00+08:00".parse::<DueBefore>().unwrap();
        assert_eq!(at, DueBefore::At(Utc.with_ymd_and_hms(2026, 11, 27, 1, 0, 0).unwrap()));
        assert!("tomorrow".parse::<DueBefore>().unwrap_err().contains("RFC 3339"));
    }

    #[test]
    fn the_token_never_prints() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            args: CtlArgs,
        }
        let cli = Cli::try_parse_from(["ctl", "--token", "s3cret-token", "timers"]).unwrap();
        assert!(!format!("{:?}", cli.args).contains("s3cret-token"));
    }
}
