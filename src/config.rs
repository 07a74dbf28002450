//! Configuration, layered: defaults < config file < `MARKETFLOW_*` environment < command-line flags.
//!
//! Secrets are [`Secret`]s: their `Debug` and `Display` print a placeholder, so a config dumped to the log at
//! start-up never carries a key or a token.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// A value that must never reach a log line.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    /// The secret itself, for the one place that needs it (signing, comparing).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The values in force: `old,new` during a rotation, both admitted until the old one is removed.
    pub fn values(&self) -> impl Iterator<Item = &str> {
        self.0.split(',').map(str::trim).filter(|v| !v.is_empty())
    }

    /// Whether `given` is one of the values. Every value is compared, by digest and in constant time, so neither
    /// which value matched, nor where a guess differs, nor a value's length shows in the time taken.
    pub fn admits(&self, given: &str) -> bool {
        let mut any = false;
        for v in self.values() {
            any |= same_secret(given, v);
        }
        any && !given.is_empty()
    }
}

/// Compares two secrets by their SHA-256 digests in constant time: equal lengths, so the time taken says nothing
/// about either value's length or content.
pub fn same_secret(a: &str, b: &str) -> bool {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    bool::from(Sha256::digest(a.as_bytes()).as_slice().ct_eq(Sha256::digest(b.as_bytes()).as_slice()))
}

/// One named operator token of `MARKETFLOW_OPERATOR_TOKENS`: whoever presents `token` is `name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedToken {
    /// The token's owner, as the audit trail and the journal name them.
    pub name: String,
    pub token: Secret,
}

/// The named operator tokens (`MARKETFLOW_OPERATOR_TOKENS` = `name:token,name2:token2`), in the order given.
///
/// Parsing is lenient (an entry without `:` has an empty name, a token with spaces around it is trimmed):
/// [`Config::resolve`] refuses whatever is wrong, naming the variable, so that every problem is reported at once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamedTokens(Vec<NamedToken>);

impl NamedTokens {
    pub fn parse(s: &str) -> Self {
        let entries = s.split(',').map(str::trim).filter(|e| !e.is_empty());
        Self(
            entries
                .map(|e| {
                    let (name, token) = e.split_once(':').unwrap_or(("", e));
                    NamedToken { name: name.trim().to_string(), token: Secret::new(token.trim()) }
                })
                .collect(),
        )
    }

    pub fn iter(&self) -> impl Iterator<Item = &NamedToken> {
        self.0.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The longest operator name (named tokens' names, `X-Operator`, the console login's name field).
pub const OPERATOR_NAME_MAX: usize = 64;

/// Whether `name` may name a token's owner: 1 to 64 of `A-Z a-z 0-9 . _ -`.
fn is_token_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= OPERATOR_NAME_MAX
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Who an operator token belongs to ([`Config::operator_for`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OperatorIdentity {
    /// A named token (`MARKETFLOW_OPERATOR_TOKENS`): the operator is its owner, whatever the request claims
    /// (`X-Operator`, the console login form's name).
    Named(String),
    /// The shared `MARKETFLOW_OPERATOR_TOKEN`: the request says who the person is.
    Shared,
}

/// Secrets we mint (operator and service tokens) are at least this long outside `--dev`.
pub const MIN_SECRET_LEN: usize = 16;

/// What `--dev` makes up: refused outside it, so a development value never guards a real service.
pub const DEV_VALUES: &[&str] =
    &["dev-isv-key", "dev-access-key-id", "dev-access-key-secret", "dev-operator-token", "dev-service-token"];

/// Flags and variables parse into a secret directly, so that no copy of one sits in a printable `String`.
impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self::new(s))
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Self::new(s)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

/// Everything `serve` runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: String,
    pub data_dir: PathBuf,
    pub public_url: String,
    pub isv_key: Option<Secret>,
    pub aliyun_endpoint: String,
    pub access_key_id: Option<String>,
    pub access_key_secret: Option<Secret>,
    pub product_code: String,
    pub operator_token: Option<Secret>,
    /// Named operator tokens (`MARKETFLOW_OPERATOR_TOKENS`); `Some` when the variable (or file key) was given.
    pub operator_tokens: Option<NamedTokens>,
    pub service_token: Option<Secret>,
    pub time_scale: f64,
    pub sso_window: Duration,
    /// Development mode: development secrets are made up when missing.
    pub dev: bool,
    /// Run the local marketplace in this process and point the Market client at it (`serve --dev` without an
    /// explicit endpoint).
    pub dev_simulator: bool,
    /// Where the in-process simulator listens (`MARKETFLOW_SIMULATOR_LISTEN`).
    pub simulator_listen: String,
    pub log_format: LogFormat,
    /// Definitions are read from here instead of the copies built into the binary.
    pub workflows_dir: Option<PathBuf>,
    /// Overrides of timer durations: `(kind, timer, duration)`.
    pub timer_overrides: Vec<(String, String, Duration)>,
    /// The price catalog; the built-in `config/catalog.toml` when unset.
    pub catalog_file: Option<PathBuf>,
    /// Whether the config file named the endpoint (then `--dev` does not replace it with the simulator).
    pub endpoint_from_file: bool,
    /// sled's page cache in MiB: more keeps a larger working set off the disk, and stays resident.
    pub sled_cache_mb: u64,
    /// `--dev` on an address other hosts can reach: asked for explicitly (`--dev-allow-remote`), since the
    /// development tokens are public.
    pub dev_allow_remote: bool,
    /// Requests per minute per route class (`MARKETFLOW_RATE_LIMITS`).
    pub rate_limits: crate::ratelimit::RateLimits,
    /// Where `X-Forwarded-For` names the client (`MARKETFLOW_TRUSTED_PROXIES`); nowhere by default.
    pub trusted_proxies: crate::ratelimit::TrustedProxies,
    /// A request's body must have arrived within this long (`MARKETFLOW_BODY_TIMEOUT`); then `408`.
    pub body_timeout: Duration,
    /// How often ended sessions, grants and used-link records are swept (real time; tests shorten it).
    pub sweep_interval: Duration,
    /// What `--dev` made up (variable, value): printed to standard output at start-up, never logged.
    pub dev_made_up: Vec<(&'static str, Secret)>,
    /// Where verification mail goes (`MARKETFLOW_SMTP_URL`); a secret, since the URL may carry a password.
    pub smtp_url: Option<Secret>,
    /// The sender of the service's mail (`MARKETFLOW_MAIL_FROM`).
    pub mail_from: String,
    /// PostgreSQL (`MARKETFLOW_DATABASE_URL`): set, the store is PostgreSQL shared with other nodes; unset, sled.
    /// A secret: the URL may carry a password.
    pub database_url: Option<Secret>,
    /// This node's unique name among the nodes of a database (`MARKETFLOW_NODE_ID`).
    pub node_id: String,
    /// The base URL other nodes reach this node at (`MARKETFLOW_NODE_URL`).
    pub node_url: String,
    /// The HMAC key of requests between nodes (`MARKETFLOW_CLUSTER_SECRET`); required with a database.
    pub cluster_secret: Option<Secret>,
    /// The shard lease (`MARKETFLOW_LEASE`), renewed at a fifth of it.
    pub lease: Duration,
    /// How often DescribeFailedNotifications is asked for the notices the marketplace gave up on
    /// (`MARKETFLOW_NOTICE_POLL_INTERVAL`), in service time.
    pub notice_poll_interval: Duration,
    /// The longest a window waits for its metering push's batch to fill (`MARKETFLOW_PUSH_LINGER`, real time); a
    /// batch also goes when full (100) or when no new window came for a tenth of this.
    pub push_linger: Duration,
    /// How long the outcome of an input is kept to answer its repetition (`MARKETFLOW_RETENTION_IDEMPOTENCY`,
    /// service time): far beyond the marketplace's retries.
    pub retention_idempotency: Duration,
    /// How long journals, usage records and the audit trail are kept (`MARKETFLOW_RETENTION_RECORDS`, service
    /// time): billing records.
    pub retention_records: Duration,
    /// Where alert events go as JSON (`MARKETFLOW_ALERT_WEBHOOK`); a secret, since the URL may carry a token.
    pub alert_webhook: Option<Secret>,
    /// How often the alert webhook's watcher looks (real time; tests shorten it).
    pub alert_interval: Duration,
    /// Test-only: commits are not fenced (`MARKETFLOW_UNSAFE_NO_FENCING`), to show that fencing is what keeps
    /// journals whole when a paused node wakes up. Never set it in production.
    pub unsafe_no_fencing: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            data_dir: PathBuf::from("./data"),
            public_url: "http://127.0.0.1:8080".into(),
            isv_key: None,
            aliyun_endpoint: "https://market.aliyuncs.com".into(),
            access_key_id: None,
            access_key_secret: None,
            product_code: "cmgj00063418".into(),
            operator_token: None,
            operator_tokens: None,
            service_token: None,
            time_scale: 1.0,
            sso_window: Duration::from_secs(600),
            dev: false,
            dev_simulator: false,
            simulator_listen: "127.0.0.1:9090".into(),
            log_format: LogFormat::Human,
            workflows_dir: None,
            timer_overrides: vec![],
            catalog_file: None,
            endpoint_from_file: false,
            sled_cache_mb: crate::store::sled_store::default_cache_mb(),
            dev_allow_remote: false,
            rate_limits: Default::default(),
            trusted_proxies: Default::default(),
            body_timeout: crate::http::limits::BODY_TIMEOUT,
            sweep_interval: Duration::from_secs(60),
            dev_made_up: vec![],
            smtp_url: None,
            mail_from: "marketflow <no-reply@localhost>".into(),
            database_url: None,
            node_id: String::new(),
            node_url: String::new(),
            cluster_secret: None,
            lease: Duration::from_secs(10),
            notice_poll_interval: Duration::from_secs(300),
            push_linger: Duration::from_secs(2),
            retention_idempotency: Duration::from_secs(30 * 86_400),
            retention_records: Duration::from_secs(400 * 86_400),
            alert_webhook: None,
            alert_interval: Duration::from_secs(30),
            unsafe_no_fencing: false,
        }
    }
}

/// The config file's shape (every field optional; unknown fields are an error, so typos do not pass silently).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub public_url: Option<String>,
    pub time_scale: Option<f64>,
    pub sso_window: Option<String>,
    pub log_format: Option<LogFormat>,
    pub workflows_dir: Option<PathBuf>,
    pub catalog: Option<PathBuf>,
    pub sled_cache_mb: Option<u64>,
    #[serde(default)]
    pub aliyun: AliyunFile,
    #[serde(default)]
    pub tokens: TokensFile,
    /// `[timers.<kind>] <timer> = "<duration>"`
    #[serde(default)]
    pub timers: std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AliyunFile {
    pub isv_key: Option<Secret>,
    pub endpoint: Option<String>,
    pub access_key_id: Option<String>,
    pub access_key_secret: Option<Secret>,
    pub product_code: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokensFile {
    pub operator: Option<Secret>,
    /// Named operator tokens, `"name:token,name2:token2"` (as `MARKETFLOW_OPERATOR_TOKENS`).
    pub operators: Option<Secret>,
    pub service: Option<Secret>,
}

/// The flags of `serve`; each also reads its `MARKETFLOW_*` variable (a flag wins over the variable).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// Config file (TOML); its values sit between the defaults and the environment.
    #[arg(long, env = "MARKETFLOW_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address the HTTP server binds.
    #[arg(long, env = "MARKETFLOW_LISTEN")]
    pub listen: Option<String>,
    /// Directory of the sled store.
    #[arg(long, env = "MARKETFLOW_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Base URL buyers' browsers reach (used in authUrl).
    #[arg(long, env = "MARKETFLOW_PUBLIC_URL")]
    pub public_url: Option<String>,
    #[arg(long, env = "MARKETFLOW_ALIYUN_ISV_KEY", hide_env_values = true)]
    pub isv_key: Option<Secret>,
    #[arg(long, env = "MARKETFLOW_ALIYUN_ENDPOINT")]
    pub aliyun_endpoint: Option<String>,
    #[arg(long, env = "MARKETFLOW_ALIYUN_ACCESS_KEY_ID")]
    pub access_key_id: Option<String>,
    #[arg(long, env = "MARKETFLOW_ALIYUN_ACCESS_KEY_SECRET", hide_env_values = true)]
    pub access_key_secret: Option<Secret>,
    #[arg(long, env = "MARKETFLOW_ALIYUN_PRODUCT_CODE")]
    pub product_code: Option<String>,
    #[arg(long, env = "MARKETFLOW_OPERATOR_TOKEN", hide_env_values = true)]
    pub operator_token: Option<Secret>,
    /// Named operator tokens, `name:token,name2:token2`: a request with one of them is its owner's, whatever
    /// `X-Operator` or the console login form say.
    #[arg(long, env = "MARKETFLOW_OPERATOR_TOKENS", hide_env_values = true)]
    pub operator_tokens: Option<Secret>,
    #[arg(long, env = "MARKETFLOW_SERVICE_TOKEN", hide_env_values = true)]
    pub service_token: Option<Secret>,
    /// Service seconds per real second (60: an hour passes in a minute).
    #[arg(long, env = "MARKETFLOW_TIME_SCALE")]
    pub time_scale: Option<f64>,
    /// How far the 免登 timeStamp may be from now (e.g. 10m).
    #[arg(long, env = "MARKETFLOW_SSO_WINDOW")]
    pub sso_window: Option<String>,
    /// Log output: human or json.
    #[arg(long, env = "MARKETFLOW_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Read workflow definitions from this directory instead of the built-in copies.
    #[arg(long, env = "MARKETFLOW_WORKFLOWS_DIR")]
    pub workflows_dir: Option<PathBuf>,
    /// The price catalog (TOML) instead of the built-in `config/catalog.toml`.
    #[arg(long, env = "MARKETFLOW_CATALOG")]
    pub catalog: Option<PathBuf>,
    /// sled's page cache in MiB (resident memory grows up to about this much with the entities touched).
    #[arg(long, env = "MARKETFLOW_SLED_CACHE_MB")]
    pub sled_cache_mb: Option<u64>,
    /// Where the in-process simulator of `--dev` listens.
    #[arg(long, env = "MARKETFLOW_SIMULATOR_LISTEN")]
    pub simulator_listen: Option<String>,
    /// Development mode: make up development secrets that are missing, and run the local marketplace in
    /// this process unless an endpoint is given.
    #[arg(long)]
    pub dev: bool,
    /// Requests per minute per route class, `class=n,...` (login, account, register, console_login, token,
    /// address); unnamed classes keep their defaults.
    #[arg(long, env = "MARKETFLOW_RATE_LIMITS")]
    pub rate_limits: Option<String>,
    /// Proxies whose `X-Forwarded-For` names the client: addresses and networks, `10.0.0.1,10.1.0.0/16`.
    #[arg(long, env = "MARKETFLOW_TRUSTED_PROXIES")]
    pub trusted_proxies: Option<String>,
    /// How long a request's body may take to arrive (e.g. 30s).
    #[arg(long, env = "MARKETFLOW_BODY_TIMEOUT")]
    pub body_timeout: Option<String>,
    /// Let `--dev` listen on an address other hosts can reach (its development tokens are public).
    #[arg(long, env = "MARKETFLOW_DEV_ALLOW_REMOTE")]
    pub dev_allow_remote: bool,
    /// Where verification mail goes: `smtp://host:port` (plain), `smtp://host:port?tls=required` (STARTTLS),
    /// `smtps://user:password@host` (TLS).
    #[arg(long, env = "MARKETFLOW_SMTP_URL", hide_env_values = true)]
    pub smtp_url: Option<Secret>,
    /// The sender of the service's mail, e.g. `marketflow <no-reply@example.com>`.
    #[arg(long, env = "MARKETFLOW_MAIL_FROM")]
    pub mail_from: Option<String>,
    /// PostgreSQL connection string: the store is PostgreSQL, shared with any number of nodes (unset: sled).
    #[arg(long, env = "MARKETFLOW_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<Secret>,
    /// This node's unique name (default: host name and listen port).
    #[arg(long, env = "MARKETFLOW_NODE_ID")]
    pub node_id: Option<String>,
    /// The base URL other nodes reach this node at (default: http:// and the listen address).
    #[arg(long, env = "MARKETFLOW_NODE_URL")]
    pub node_url: Option<String>,
    /// The HMAC key of requests between nodes (at least 16 characters; `old,new` during a rotation).
    #[arg(long, env = "MARKETFLOW_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<Secret>,
    /// The shard lease (e.g. 10s), renewed at a fifth of it.
    #[arg(long, env = "MARKETFLOW_LEASE")]
    pub lease: Option<String>,
    /// How often the notices the marketplace gave up on are fetched (service time, e.g. 5m).
    #[arg(long, env = "MARKETFLOW_NOTICE_POLL_INTERVAL")]
    pub notice_poll_interval: Option<String>,
    /// The longest a metering push waits for its batch to fill (real time, e.g. 2s).
    #[arg(long, env = "MARKETFLOW_PUSH_LINGER")]
    pub push_linger: Option<String>,
    /// How often every live subscription is checked with DescribeInstance (service time, e.g. 1h).
    #[arg(long, env = "MARKETFLOW_RECONCILE_INTERVAL")]
    pub reconcile_interval: Option<String>,
    /// Where alert events go (JSON POSTs, retried): `https://hooks.example.com/...`.
    #[arg(long, env = "MARKETFLOW_ALERT_WEBHOOK", hide_env_values = true)]
    pub alert_webhook: Option<Secret>,
    /// How long the outcome of an input is kept to answer its repetition (service time, e.g. 30d).
    #[arg(long, env = "MARKETFLOW_RETENTION_IDEMPOTENCY")]
    pub retention_idempotency: Option<String>,
    /// How long journals, usage records and the audit trail are kept (service time, e.g. 400d).
    #[arg(long, env = "MARKETFLOW_RETENTION_RECORDS")]
    pub retention_records: Option<String>,
    /// Test-only: do not fence commits (shows what fencing prevents). Never in production.
    #[arg(long, env = "MARKETFLOW_UNSAFE_NO_FENCING", hide = true)]
    pub unsafe_no_fencing: bool,
}

/// Configuration that cannot be used, in words an operator can act on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read config file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("{name}: {message}")]
    Invalid { name: &'static str, message: String },
    #[error("missing required settings (set them, or run `serve --dev`): {0}")]
    Missing(String),
    #[error("refusing to start: {0}")]
    Refused(String),
}

/// Whether `listen` (`host:port`) is reachable from this host only.
fn is_loopback(listen: &str) -> bool {
    if let Ok(addr) = listen.parse::<std::net::SocketAddr>() {
        return addr.ip().is_loopback();
    }
    listen.rsplit_once(':').is_some_and(|(host, _)| host.eq_ignore_ascii_case("localhost"))
}

fn duration(name: &'static str, s: &str) -> Result<Duration, Error> {
    crate::engine::definition::parse_duration(s).map_err(|message| Error::Invalid { name, message })
}

impl Config {
    /// Resolves the layers.
    pub fn resolve(args: &ServeArgs) -> Result<Self, Error> {
        let mut c = Config::default();
        if let Some(path) = &args.config {
            c.apply_file(path)?;
        }
        let secret = |s: &Option<Secret>| s.clone();
        if let Some(v) = &args.listen {
            c.listen = v.clone();
        }
        if let Some(v) = &args.data_dir {
            c.data_dir = v.clone();
        }
        if let Some(v) = &args.public_url {
            c.public_url = v.clone();
        }
        c.isv_key = secret(&args.isv_key).or(c.isv_key);
        if let Some(v) = &args.aliyun_endpoint {
            c.aliyun_endpoint = v.clone();
        }
        c.access_key_id = args.access_key_id.clone().or(c.access_key_id);
        c.access_key_secret = secret(&args.access_key_secret).or(c.access_key_secret);
        if let Some(v) = &args.product_code {
            c.product_code = v.clone();
        }
        c.operator_token = secret(&args.operator_token).or(c.operator_token);
        if let Some(v) = &args.operator_tokens {
            c.operator_tokens = Some(NamedTokens::parse(v.expose()));
        }
        c.service_token = secret(&args.service_token).or(c.service_token);
        c.smtp_url = secret(&args.smtp_url).or(c.smtp_url);
        c.alert_webhook = secret(&args.alert_webhook).or(c.alert_webhook);
        if let Some(v) = &args.mail_from {
            c.mail_from = v.clone();
        }
        if let Some(v) = args.time_scale {
            c.time_scale = v;
        }
        if let Some(v) = &args.sso_window {
            c.sso_window = duration("MARKETFLOW_SSO_WINDOW", v)?;
        }
        if let Some(v) = args.log_format {
            c.log_format = v;
        }
        if let Some(v) = &args.workflows_dir {
            c.workflows_dir = Some(v.clone());
        }
        if let Some(v) = &args.catalog {
            c.catalog_file = Some(v.clone());
        }
        if let Some(v) = &args.simulator_listen {
            c.simulator_listen = v.clone();
        }
        if let Some(v) = args.sled_cache_mb {
            c.sled_cache_mb = v;
        }
        if let Some(v) = &args.rate_limits {
            c.rate_limits = v.parse().map_err(|message| Error::Invalid { name: "MARKETFLOW_RATE_LIMITS", message })?;
        }
        if let Some(v) = &args.trusted_proxies {
            c.trusted_proxies =
                v.parse().map_err(|message| Error::Invalid { name: "MARKETFLOW_TRUSTED_PROXIES", message })?;
        }
        if let Some(v) = &args.body_timeout {
            c.body_timeout = duration("MARKETFLOW_BODY_TIMEOUT", v)?;
        }
        c.database_url = secret(&args.database_url).or(c.database_url);
        c.cluster_secret = secret(&args.cluster_secret).or(c.cluster_secret);
        if let Some(v) = &args.lease {
            c.lease = duration("MARKETFLOW_LEASE", v)?;
        }
        if let Some(v) = &args.notice_poll_interval {
            c.notice_poll_interval = duration("MARKETFLOW_NOTICE_POLL_INTERVAL", v)?;
        }
        if let Some(v) = &args.push_linger {
            c.push_linger = duration("MARKETFLOW_PUSH_LINGER", v)?;
        }
        if let Some(v) = &args.retention_idempotency {
            c.retention_idempotency = duration("MARKETFLOW_RETENTION_IDEMPOTENCY", v)?;
        }
        if let Some(v) = &args.retention_records {
            c.retention_records = duration("MARKETFLOW_RETENTION_RECORDS", v)?;
        }
        if let Some(v) = &args.reconcile_interval {
            let d = duration("MARKETFLOW_RECONCILE_INTERVAL", v)?;
            if !(Duration::from_secs(60)..=Duration::from_secs(7 * 86_400)).contains(&d) {
                return Err(Error::Invalid {
                    name: "MARKETFLOW_RECONCILE_INTERVAL",
                    message: "must be between 1m and 7d".into(),
                });
            }
            // The subscription's `check` timer: one rule, whether set here or in the file's [timers.subscription].
            c.timer_overrides.push(("subscription".into(), "check".into(), d));
        }
        if let Some(v) = &args.node_id {
            c.node_id = v.clone();
        }
        if let Some(v) = &args.node_url {
            c.node_url = v.clone();
        }
        c.unsafe_no_fencing = args.unsafe_no_fencing;
        c.dev = args.dev;
        c.dev_allow_remote = args.dev_allow_remote;
        c.dev_simulator = args.dev && args.aliyun_endpoint.is_none() && !c.endpoint_from_file;
        c.validate()?;
        Ok(c)
    }

    fn apply_file(&mut self, path: &Path) -> Result<(), Error> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read { path: p.clone(), source })?;
        let f: FileConfig =
            toml::from_str(&text).map_err(|e| Error::Parse { path: p.clone(), message: e.to_string() })?;
        if let Some(v) = f.listen {
            self.listen = v;
        }
        if let Some(v) = f.data_dir {
            self.data_dir = v;
        }
        if let Some(v) = f.public_url {
            self.public_url = v;
        }
        if let Some(v) = f.time_scale {
            self.time_scale = v;
        }
        if let Some(v) = f.sso_window {
            self.sso_window = duration("sso_window", &v)?;
        }
        if let Some(v) = f.log_format {
            self.log_format = v;
        }
        if let Some(v) = f.workflows_dir {
            self.workflows_dir = Some(v);
        }
        if let Some(v) = f.catalog {
            self.catalog_file = Some(v);
        }
        if let Some(v) = f.sled_cache_mb {
            self.sled_cache_mb = v;
        }
        self.isv_key = f.aliyun.isv_key.or(self.isv_key.take());
        if let Some(v) = f.aliyun.endpoint {
            self.aliyun_endpoint = v;
            self.endpoint_from_file = true;
        }
        self.access_key_id = f.aliyun.access_key_id.or(self.access_key_id.take());
        self.access_key_secret = f.aliyun.access_key_secret.or(self.access_key_secret.take());
        if let Some(v) = f.aliyun.product_code {
            self.product_code = v;
        }
        self.operator_token = f.tokens.operator.or(self.operator_token.take());
        if let Some(v) = f.tokens.operators {
            self.operator_tokens = Some(NamedTokens::parse(v.expose()));
        }
        self.service_token = f.tokens.service.or(self.service_token.take());
        for (kind, timers) in f.timers {
            for (timer, d) in timers {
                let d = duration("timers", &d)?;
                self.timer_overrides.push((kind.clone(), timer, d));
            }
        }
        Ok(())
    }

    /// What is wrong with the named tokens' shape: an entry without a name, a name that is not 1 to 64 of
    /// `A-Z a-z 0-9 . _ -`, a name or a token given twice, an empty token. Entries are named by position, never by
    /// content, since a token written where its name belongs must not reach the terminal.
    fn named_token_problems(&self) -> Vec<String> {
        const NAME: &str = "MARKETFLOW_OPERATOR_TOKENS";
        let Some(named) = &self.operator_tokens else { return vec![] };
        let tokens: Vec<&NamedToken> = named.iter().collect();
        let mut problems = Vec::new();
        for (i, t) in tokens.iter().enumerate() {
            let n = i + 1;
            if t.name.is_empty() {
                problems.push(format!("{NAME}: entry {n} has no name (give name:token)"));
            } else if !is_token_name(&t.name) {
                problems.push(format!(
                    "{NAME}: the name of entry {n} is not 1 to {OPERATOR_NAME_MAX} of A-Z a-z 0-9 . _ -"
                ));
            }
            if t.token.expose().is_empty() {
                problems.push(format!("{NAME}: entry {n} has no token (give name:token)"));
            }
            for (j, u) in tokens.iter().enumerate().take(i) {
                if !t.name.is_empty() && t.name == u.name {
                    problems.push(format!("{NAME}: entries {} and {n} have the same name", j + 1));
                }
                // At start-up, not per request: the time this takes says nothing to a caller.
                if !t.token.expose().is_empty() && t.token == u.token {
                    problems.push(format!("{NAME}: entries {} and {n} have the same token", j + 1));
                }
            }
        }
        problems
    }

    /// Who presents `token` as an operator: the owner of a named token it is, or [`OperatorIdentity::Shared`] for
    /// a value of `MARKETFLOW_OPERATOR_TOKEN`, or nobody. A named token wins over the shared one. Every configured
    /// value is compared, by digest and in constant time, with no early exit (see [`Config::identify_operator`]).
    /// Whether `token` is one the configuration knows: an operator's (shared or named) or the service's. Such
    /// a token has a rate-limit bucket of its own; any other counts against its client's address too.
    pub fn is_role_token(&self, token: &str) -> bool {
        let service = self.service_token.as_ref().is_some_and(|s| s.admits(token));
        let operator = self.operator_for(token).is_some();
        service | operator
    }

    pub fn operator_for(&self, token: &str) -> Option<OperatorIdentity> {
        if token.is_empty() {
            return None;
        }
        self.identify_operator(|value| same_secret(token, value))
    }

    /// The one rule of who an operator is, for any way of recognising a token: `is(value)` is asked of every
    /// configured operator token value (each named token, then each value of `MARKETFLOW_OPERATOR_TOKEN`, during
    /// a rotation both), whatever the answers, so the time taken does not depend on which one matched. The first
    /// named token recognised names the operator; otherwise a recognised shared value is [`OperatorIdentity::Shared`].
    ///
    /// [`Config::operator_for`] recognises a token presented now; a console session recognises the digest of the
    /// token it was opened with, so that a session ends when that token is no longer configured.
    pub fn identify_operator(&self, mut is: impl FnMut(&str) -> bool) -> Option<OperatorIdentity> {
        let mut named: Option<&str> = None;
        for t in self.operator_tokens.iter().flat_map(NamedTokens::iter) {
            let mut hit = false;
            for v in t.token.values() {
                hit |= is(v);
            }
            if hit && named.is_none() && !t.name.is_empty() {
                named = Some(&t.name);
            }
        }
        let mut shared = false;
        for v in self.operator_token.iter().flat_map(Secret::values) {
            shared |= is(v);
        }
        match named {
            Some(name) => Some(OperatorIdentity::Named(name.to_string())),
            None => shared.then_some(OperatorIdentity::Shared),
        }
    }

    /// The node's name and URL, and what a database needs: a cluster secret, a lease of a sane length, a URL other
    /// nodes can reach.
    fn resolve_cluster(&mut self, refused: &mut Vec<String>) -> Result<(), Error> {
        let wildcard = self.listen.starts_with("0.0.0.0:") || self.listen.starts_with("[::]:");
        if self.node_url.is_empty() {
            if wildcard && self.database_url.is_some() {
                return Err(Error::Refused(format!(
                    "MARKETFLOW_NODE_URL: listening on {} (every address), other nodes cannot know where to reach \
                     this one; give MARKETFLOW_NODE_URL",
                    self.listen
                )));
            }
            self.node_url = format!("http://{}", self.listen);
        }
        if self.node_id.is_empty() {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "marketflow".into());
            let port = self.listen.rsplit(':').next().unwrap_or("0");
            self.node_id = format!("{host}-{port}");
        }
        if !is_token_name(&self.node_id) {
            return Err(Error::Invalid {
                name: "MARKETFLOW_NODE_ID",
                message: format!("must be 1 to {OPERATOR_NAME_MAX} of A-Z a-z 0-9 . _ -"),
            });
        }
        if let Some(url) = &self.alert_webhook {
            let ok = reqwest::Url::parse(url.expose())
                .ok()
                .is_some_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
            if !ok {
                return Err(Error::Invalid {
                    name: "MARKETFLOW_ALERT_WEBHOOK",
                    message: "must be an http:// or https:// URL".into(),
                });
            }
        }
        // An hour at least: the marketplace retries a notice for hours, and a journal younger than the windows it
        // bills would lose their story.
        for (name, d) in [
            ("MARKETFLOW_RETENTION_IDEMPOTENCY", self.retention_idempotency),
            ("MARKETFLOW_RETENTION_RECORDS", self.retention_records),
        ] {
            if !(Duration::from_secs(3600)..=Duration::from_secs(100 * 365 * 86_400)).contains(&d) {
                return Err(Error::Invalid { name, message: "must be between 1h and 100 years".into() });
            }
        }
        if self.retention_idempotency > self.retention_records {
            return Err(Error::Invalid {
                name: "MARKETFLOW_RETENTION_IDEMPOTENCY",
                message: "must not be longer than MARKETFLOW_RETENTION_RECORDS (an outcome outlives its journal entry)"
                    .into(),
            });
        }
        if !(Duration::from_millis(10)..=Duration::from_secs(60)).contains(&self.push_linger) {
            return Err(Error::Invalid {
                name: "MARKETFLOW_PUSH_LINGER",
                message: "must be between 10ms and 60s".into(),
            });
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(86_400)).contains(&self.notice_poll_interval) {
            return Err(Error::Invalid {
                name: "MARKETFLOW_NOTICE_POLL_INTERVAL",
                message: "must be between 1s and 24h".into(),
            });
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(600)).contains(&self.lease) {
            return Err(Error::Invalid { name: "MARKETFLOW_LEASE", message: "must be between 1s and 10m".into() });
        }
        if self.database_url.is_some() {
            match &self.cluster_secret {
                None if self.dev => {
                    self.cluster_secret = Some(Secret::new("dev-cluster-secret"));
                    self.dev_made_up.push(("MARKETFLOW_CLUSTER_SECRET", Secret::new("dev-cluster-secret")));
                }
                None => {
                    return Err(Error::Missing(
                        "MARKETFLOW_CLUSTER_SECRET (required with MARKETFLOW_DATABASE_URL)".into(),
                    ))
                }
                Some(s) if !self.dev => {
                    if s.values().next().is_none() {
                        refused.push("MARKETFLOW_CLUSTER_SECRET is empty".into());
                    }
                    for v in s.values() {
                        if v == "dev-cluster-secret" {
                            refused.push("MARKETFLOW_CLUSTER_SECRET is a development value (only for --dev)".into());
                        } else if v.chars().count() < MIN_SECRET_LEN {
                            refused
                                .push(format!("MARKETFLOW_CLUSTER_SECRET is shorter than {MIN_SECRET_LEN} characters"));
                        }
                    }
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    fn validate(&mut self) -> Result<(), Error> {
        if !(self.time_scale.is_finite() && self.time_scale > 0.0 && self.time_scale <= 1_000_000.0) {
            return Err(Error::Invalid {
                name: "MARKETFLOW_TIME_SCALE",
                message: format!("must be a number in (0, 1000000], got {}", self.time_scale),
            });
        }
        if !(16..=1 << 20).contains(&self.sled_cache_mb) {
            return Err(Error::Invalid {
                name: "MARKETFLOW_SLED_CACHE_MB",
                message: format!("must be between 16 and 1048576 (MiB), got {}", self.sled_cache_mb),
            });
        }
        // Named tokens' shape, in --dev too: a name is what the audit trail will say.
        let mut refused = self.named_token_problems();
        self.resolve_cluster(&mut refused)?;
        if self.dev {
            if !refused.is_empty() {
                return Err(Error::Refused(refused.join("; ")));
            }
            if !self.dev_allow_remote && !is_loopback(&self.listen) {
                return Err(Error::Refused(format!(
                    "MARKETFLOW_LISTEN: `serve --dev` listens on loopback only (got {}); its development tokens are \
                     public. Pass --dev-allow-remote (MARKETFLOW_DEV_ALLOW_REMOTE=true) if you mean it",
                    self.listen
                )));
            }
            let mut made_up = Vec::new();
            let mut dev = |s: &mut Option<Secret>, name: &'static str, v: &'static str| {
                if s.is_none() {
                    *s = Some(Secret::new(v));
                    made_up.push((name, Secret::new(v)));
                }
            };
            dev(&mut self.isv_key, "MARKETFLOW_ALIYUN_ISV_KEY", "dev-isv-key");
            dev(&mut self.access_key_secret, "MARKETFLOW_ALIYUN_ACCESS_KEY_SECRET", "dev-access-key-secret");
            dev(&mut self.operator_token, "MARKETFLOW_OPERATOR_TOKEN", "dev-operator-token");
            dev(&mut self.service_token, "MARKETFLOW_SERVICE_TOKEN", "dev-service-token");
            if self.access_key_id.is_none() {
                self.access_key_id = Some("dev-access-key-id".into());
                made_up.push(("MARKETFLOW_ALIYUN_ACCESS_KEY_ID", Secret::new("dev-access-key-id")));
            }
            self.dev_made_up.extend(made_up);
            return Ok(());
        }
        let mut missing = Vec::new();
        if self.isv_key.is_none() {
            missing.push("MARKETFLOW_ALIYUN_ISV_KEY");
        }
        if self.access_key_id.is_none() {
            missing.push("MARKETFLOW_ALIYUN_ACCESS_KEY_ID");
        }
        if self.access_key_secret.is_none() {
            missing.push("MARKETFLOW_ALIYUN_ACCESS_KEY_SECRET");
        }
        if self.operator_token.is_none() && self.operator_tokens.is_none() {
            missing.push("MARKETFLOW_OPERATOR_TOKEN (or MARKETFLOW_OPERATOR_TOKENS)");
        }
        if self.service_token.is_none() {
            missing.push("MARKETFLOW_SERVICE_TOKEN");
        }
        if !missing.is_empty() {
            return Err(Error::Missing(missing.join(", ")));
        }
        let is_dev = |v: &str| DEV_VALUES.contains(&v);
        for (name, secret) in
            [("MARKETFLOW_OPERATOR_TOKEN", &self.operator_token), ("MARKETFLOW_SERVICE_TOKEN", &self.service_token)]
        {
            let Some(secret) = secret else { continue };
            if secret.values().next().is_none() {
                refused.push(format!("{name} is empty"));
            }
            for v in secret.values() {
                if is_dev(v) {
                    refused.push(format!("{name} is a development value (only for --dev)"));
                } else if v.chars().count() < MIN_SECRET_LEN {
                    refused.push(format!("{name} is shorter than {MIN_SECRET_LEN} characters"));
                }
            }
        }
        if let Some(named) = &self.operator_tokens {
            const NAME: &str = "MARKETFLOW_OPERATOR_TOKENS";
            if named.is_empty() {
                refused.push(format!("{NAME} is empty"));
            }
            for (i, t) in named.iter().enumerate() {
                let v = t.token.expose();
                if v.is_empty() {
                    continue; // already refused by its shape
                }
                if is_dev(v) {
                    refused
                        .push(format!("{NAME}: the token of entry {} is a development value (only for --dev)", i + 1));
                } else if v.chars().count() < MIN_SECRET_LEN {
                    refused.push(format!(
                        "{NAME}: the token of entry {} is shorter than {MIN_SECRET_LEN} characters",
                        i + 1
                    ));
                }
            }
        }
        // The marketplace issues its credentials as it does: any length, but present and not ours.
        let credentials = [
            ("MARKETFLOW_ALIYUN_ISV_KEY", self.isv_key.as_ref().map(Secret::expose)),
            ("MARKETFLOW_ALIYUN_ACCESS_KEY_ID", self.access_key_id.as_deref()),
            ("MARKETFLOW_ALIYUN_ACCESS_KEY_SECRET", self.access_key_secret.as_ref().map(Secret::expose)),
        ];
        for (name, value) in credentials {
            match value.map(str::trim) {
                Some("") => refused.push(format!("{name} is empty")),
                Some(v) if v.split(',').map(str::trim).any(is_dev) => {
                    refused.push(format!("{name} is a development value (only for --dev)"))
                }
                _ => {}
            }
        }
        // A value that is both a service and an operator token would let Zilliz Cloud's services act as an
        // operator (and the role it is taken for would depend on the order of checks).
        if let Some(service) = &self.service_token {
            let operator_values = self
                .operator_token
                .iter()
                .flat_map(|t| t.values())
                .chain(self.operator_tokens.iter().flat_map(|n| n.iter().map(|t| t.token.expose())));
            if operator_values.into_iter().any(|o| service.admits(o)) {
                refused.push("MARKETFLOW_SERVICE_TOKEN has a value that is also an operator token".into());
            }
        }
        if !refused.is_empty() {
            return Err(Error::Refused(refused.join("; ")));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_apply_in_order_and_secrets_stay_hidden() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:1\"\ntime_scale = 5.0\n[tokens]\noperator = \"from-file\"\n\
             [timers.organization]\nswitch-window = \"30m\"\n",
        )
        .unwrap();
        let args =
            ServeArgs { config: Some(file), listen: Some("127.0.0.1:2".into()), dev: true, ..Default::default() };
        let c = Config::resolve(&args).unwrap();
        assert_eq!(c.listen, "127.0.0.1:2", "flags/environment beat the file");
        assert_eq!(c.time_scale, 5.0, "the file beats the defaults");
        assert_eq!(c.operator_token.as_ref().unwrap().expose(), "from-file");
        assert_eq!(c.timer_overrides, vec![("organization".into(), "switch-window".into(), Duration::from_secs(1800))]);
        let dump = format!("{c:?}");
        assert!(!dump.contains("from-file") && !dump.contains("dev-isv-key"), "{dump}");
    }

    #[test]
    fn missing_secrets_are_named_outside_dev_mode() {
        let e = Config::resolve(&ServeArgs::default()).unwrap_err().to_string();
        for name in ["MARKETFLOW_ALIYUN_ISV_KEY", "MARKETFLOW_OPERATOR_TOKEN", "MARKETFLOW_SERVICE_TOKEN"] {
            assert!(e.contains(name), "{e}");
        }
        let bad = ServeArgs { time_scale: Some(-1.0), dev: true, ..Default::default() };
        assert!(Config::resolve(&bad).is_err());
    }

    fn production(operator: &str) -> ServeArgs {
        ServeArgs {
            isv_key: Some("k".into()),
            access_key_id: Some("ak".into()),
            access_key_secret: Some("s".into()),
            operator_token: Some(operator.into()),
            service_token: Some("service-token-of-16+".into()),
            ..Default::default()
        }
    }

    #[test]
    fn weak_empty_and_development_secrets_refuse_start_up_by_name() {
        assert!(Config::resolve(&production("operator-token-16+")).is_ok(), "short marketplace credentials are theirs");
        let args = format!("{:?}", production("operator-token-16+"));
        assert!(!args.contains("operator-token-16+") && !args.contains("service-token-of-16+"), "{args}");
        for (bad, why) in [
            ("short-token", "MARKETFLOW_OPERATOR_TOKEN is shorter than 16"),
            ("dev-operator-token", "MARKETFLOW_OPERATOR_TOKEN is a development value"),
            ("operator-token-16+,short", "MARKETFLOW_OPERATOR_TOKEN is shorter than 16"),
            (" , ", "MARKETFLOW_OPERATOR_TOKEN is empty"),
        ] {
            let e = Config::resolve(&production(bad)).unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        let empty_ak = ServeArgs { access_key_secret: Some(" ".into()), ..production("operator-token-16+") };
        let e = Config::resolve(&empty_ak).unwrap_err().to_string();
        assert!(e.contains("MARKETFLOW_ALIYUN_ACCESS_KEY_SECRET is empty"), "{e}");
        let shared = ServeArgs { service_token: Some("operator-token-16+".into()), ..production("operator-token-16+") };
        let e = Config::resolve(&shared).unwrap_err().to_string();
        assert!(e.contains("MARKETFLOW_SERVICE_TOKEN has a value that is also an operator token"), "{e}");
        let dev_key = ServeArgs { isv_key: Some("dev-isv-key".into()), ..production("operator-token-16+") };
        let e = Config::resolve(&dev_key).unwrap_err().to_string();
        assert!(e.contains("MARKETFLOW_ALIYUN_ISV_KEY is a development value"), "{e}");
    }

    #[test]
    fn a_rotation_admits_both_values_and_nothing_else() {
        let c = Config::resolve(&production("old-operator-token-1, new-operator-token-2")).unwrap();
        let t = c.operator_token.unwrap();
        assert!(t.admits("old-operator-token-1") && t.admits("new-operator-token-2"));
        for bad in ["", "old-operator-token-1, new-operator-token-2", "new-operator-token", "old-operator-token-1 "] {
            assert!(!t.admits(bad), "{bad:?}");
        }
    }

    fn named(tokens: &str) -> ServeArgs {
        ServeArgs { operator_tokens: Some(tokens.into()), ..production("operator-token-16+") }
    }

    #[test]
    fn named_operator_tokens_are_layered_and_never_printed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "[tokens]\noperators = \"alice:alice-token-from-file\"\n").unwrap();
        let from_file = ServeArgs { config: Some(file.clone()), ..production("operator-token-16+") };
        let c = Config::resolve(&from_file).unwrap();
        assert_eq!(c.operator_for("alice-token-from-file"), Some(OperatorIdentity::Named("alice".into())));
        let dump = format!("{c:?}");
        assert!(!dump.contains("alice-token-from-file") && dump.contains("alice"), "{dump}");

        let over = ServeArgs { operator_tokens: Some(" bob : bob-token-from-env-1 ,".into()), ..from_file };
        let c = Config::resolve(&over).unwrap();
        assert_eq!(c.operator_for("bob-token-from-env-1"), Some(OperatorIdentity::Named("bob".into())), "trimmed");
        assert_eq!(c.operator_for("alice-token-from-file"), None, "the environment replaces the file's list");
        assert!(!format!("{c:?}").contains("bob-token-from-env-1"));
    }

    #[test]
    fn named_tokens_alone_satisfy_the_required_operator_token() {
        let only_named = ServeArgs { operator_token: None, ..named("alice:alice-token-0123456") };
        let c = Config::resolve(&only_named).unwrap();
        assert!(c.operator_token.is_none());
        assert_eq!(c.operator_for("alice-token-0123456"), Some(OperatorIdentity::Named("alice".into())));
        let neither = ServeArgs { operator_token: None, ..production("x") };
        let e = Config::resolve(&neither).unwrap_err().to_string();
        assert!(e.contains("MARKETFLOW_OPERATOR_TOKEN (or MARKETFLOW_OPERATOR_TOKENS)"), "{e}");
    }

    #[test]
    fn named_tokens_with_a_bad_shape_or_a_weak_token_refuse_start_up_by_name() {
        assert!(Config::resolve(&named("alice:alice-token-0123456,b.o_b-2:bob-token-0123456789")).is_ok());
        for (bad, why) in [
            ("alice-token-0123456", "entry 1 has no name"),
            (":alice-token-0123456", "entry 1 has no name"),
            ("alice:", "entry 1 has no token"),
            ("al ice:alice-token-0123456", "the name of entry 1 is not 1 to 64 of"),
            ("alice/x:alice-token-0123456", "the name of entry 1 is not"),
            ("élise:alice-token-0123456", "the name of entry 1 is not"),
            (&format!("{}:alice-token-0123456", "a".repeat(65)), "the name of entry 1 is not"),
            ("alice:alice-token-0123456,alice:other-token-0123456", "entries 1 and 2 have the same name"),
            ("alice:same-token-0123456,bob:same-token-0123456", "entries 1 and 2 have the same token"),
            ("alice:short", "the token of entry 1 is shorter than 16 characters"),
            ("alice:alice-token-0123456,bob:dev-operator-token", "the token of entry 2 is a development value"),
            (" , ", "MARKETFLOW_OPERATOR_TOKENS is empty"),
        ] {
            let e = Config::resolve(&named(bad)).unwrap_err();
            assert!(matches!(e, Error::Refused(_)), "{bad:?}: {e}");
            let e = e.to_string();
            assert!(e.contains("MARKETFLOW_OPERATOR_TOKENS") && e.contains(why), "{bad:?}: {e}");
            for secret in ["alice-token-0123456", "other-token-0123456", "same-token-0123456"] {
                assert!(!e.contains(secret), "{bad:?}: the token is not echoed: {e}");
            }
        }
        // Every problem at once.
        let e = Config::resolve(&named("x y:short,:z")).unwrap_err().to_string();
        assert!(e.contains("the name of entry 1") && e.contains("entry 2 has no name") && e.contains("shorter"), "{e}");
        // --dev makes up tokens, but a name is still what the audit trail will say.
        let dev = |tokens: &str| ServeArgs { operator_tokens: Some(tokens.into()), dev: true, ..Default::default() };
        assert!(Config::resolve(&dev("alice:short")).is_ok(), "--dev takes short tokens");
        let e = Config::resolve(&dev("al ice:short")).unwrap_err().to_string();
        assert!(e.contains("MARKETFLOW_OPERATOR_TOKENS: the name of entry 1"), "{e}");
    }

    #[test]
    fn a_token_belongs_to_its_named_owner_or_to_the_shared_role() {
        let c = Config::resolve(&ServeArgs {
            operator_tokens: Some("alice:alice-token-0123456,bob:bob-token-0123456".into()),
            ..production("old-shared-token-1,new-shared-token-2")
        })
        .unwrap();
        let named = |n: &str| Some(OperatorIdentity::Named(n.into()));
        assert_eq!(c.operator_for("alice-token-0123456"), named("alice"));
        assert_eq!(c.operator_for("bob-token-0123456"), named("bob"));
        assert_eq!(c.operator_for("old-shared-token-1"), Some(OperatorIdentity::Shared));
        assert_eq!(c.operator_for("new-shared-token-2"), Some(OperatorIdentity::Shared));
        for nobody in ["", "alice", "alice-token-012345", "alice-token-0123456 ", "service-token-of-16+"] {
            assert_eq!(c.operator_for(nobody), None, "{nobody:?}");
        }
        // A value configured both ways is the named owner's: the owner is who holds it.
        let both = Config::resolve(&ServeArgs {
            operator_tokens: Some("carol:carol-token-0123456".into()),
            ..production("carol-token-0123456")
        })
        .unwrap();
        assert_eq!(both.operator_for("carol-token-0123456"), named("carol"));
        // Every configured value is asked, whatever matched first.
        let mut asked = vec![];
        c.identify_operator(|v| {
            asked.push(v.to_string());
            true
        });
        assert_eq!(asked, ["alice-token-0123456", "bob-token-0123456", "old-shared-token-1", "new-shared-token-2"]);
    }

    #[test]
    fn dev_mode_stays_on_loopback_unless_told_otherwise() {
        let dev = |listen: &str, allow| ServeArgs {
            listen: Some(listen.into()),
            dev: true,
            dev_allow_remote: allow,
            ..Default::default()
        };
        for ok in ["127.0.0.1:0", "[::1]:8080", "localhost:8080"] {
            assert!(Config::resolve(&dev(ok, false)).is_ok(), "{ok}");
        }
        for remote in ["0.0.0.0:8080", "[::]:8080", "10.1.2.3:80", "example.com:80"] {
            let e = Config::resolve(&dev(remote, false)).unwrap_err().to_string();
            assert!(e.contains("MARKETFLOW_LISTEN") && e.contains("--dev-allow-remote"), "{e}");
            assert!(Config::resolve(&dev(remote, true)).is_ok(), "{remote}");
        }
    }

    #[test]
    fn the_sled_cache_size_is_layered_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "sled_cache_mb = 64\n").unwrap();
        let dev = |config: Option<PathBuf>, sled_cache_mb| ServeArgs {
            config,
            sled_cache_mb,
            dev: true,
            ..Default::default()
        };
        assert_eq!(
            Config::resolve(&dev(None, None)).unwrap().sled_cache_mb,
            crate::store::sled_store::default_cache_mb()
        );
        assert_eq!(Config::resolve(&dev(Some(file.clone()), None)).unwrap().sled_cache_mb, 64);
        assert_eq!(Config::resolve(&dev(Some(file), Some(512))).unwrap().sled_cache_mb, 512);
        let e = Config::resolve(&dev(None, Some(0))).unwrap_err().to_string();
        assert!(e.contains("MARKETFLOW_SLED_CACHE_MB"), "{e}");
    }
}
