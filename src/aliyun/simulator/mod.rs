//! A local Alibaba Cloud Marketplace (阿里云云市场), for `marketflow simulate`, for `serve --dev` and
//! `demo` (in-process, sharing the service's clock) and for black-box tests.
//!
//! It plays both sides the service meets in production:
//! - **the Market OpenAPI** at `/` (POST and GET): it verifies V3 (`ACS3-HMAC-SHA256`) and legacy
//!   RPC (`HMAC-SHA1`) signatures with the same code the client signs with, so the official SDKs
//!   talk to it; it refuses reused nonces and answers errors the way the gateway does
//!   (`{RequestId, HostId, Code, Message, Recommend}` with a 4xx/5xx status). Actions:
//!   DescribeInstance, PushMeteringData (with the documented rules enforced), and
//!   DescribeFailedNotifications/ConfirmNotification over the orderPay notices the service did not
//!   acknowledge.
//! - **the buyer and the marketplace's SPI caller**, steered through a small JSON API under `/sim/`
//!   (see [`buyer`]): open an instance (createInstance, retried up to 120 times while the answer is
//!   not a non-zero instanceId; OPENED after the activation delay; then orderPay), close it
//!   (releaseInstance), run out of balance (expiredInstance), top up (resumeInstance), click 免登
//!   (a signed `action=verify` URL), read back accepted metering, inject faults.
//!
//! # Time
//! Business time (activation delays, the metering rules, timeline stamps) is read from the clock
//! the simulator is given: the service's own clock in-process, a scaled clock for `simulate` with
//! `MARKETFLOW_TIME_SCALE`, a manual clock in tests. Signature timestamps are the exception: they
//! are checked against real UTC time, as the gateway does and as the official SDK signs, so a
//! scaled clock running hours ahead does not turn every call into `InvalidTimeStamp.Expired`.
//! Retries of SPI calls use short real-time backoffs (the marketplace's own schedule is minutes
//! to hours), so tests and demos do not wait.
//!
//! # Decisions the documentation leaves open (see also `state.rs`)
//! - An instance becomes OPENED only after createInstance succeeded, at its activation due time
//!   (created + a random 1–5 min of service time, or the requested delay), whichever is later.
//!   If createInstance never succeeds, the order is given up: CLOSED, `create_failed`.
//! - IDs are random numbers (orderBizId 12 digits, orderId 15 digits), seeded by `seed` for
//!   reproducible runs; random by default so that a restarted simulator does not reuse the IDs a
//!   persistent service already knows.
//! - After createInstance, SPI calls carry the instanceId the service answered.
//! - Calls for one instance go out in order, one at a time, unless `spi_reorder` is injected.
//!
//! # Layout
//! - [`state`]: instances, metering log, nonces, faults; the metering rules (pure, unit-tested).
//! - `openapi`: the Market OpenAPI endpoint.
//! - [`buyer`]: the `/sim/` API.
//! - `delivery`: the SPI caller (one queue per instance, retries, duplicates, reordering) and the
//!   activation loop.

pub mod buyer;
mod delivery;
mod openapi;
pub mod state;

use std::net::TcpListener;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use actix_web::{web, App, HttpResponse, HttpServer};
use chrono::{DateTime, Utc};
use serde_json::json;
use tokio::sync::{mpsc, watch};

use crate::clock::{Clock, ScaledClock, SystemClock};
use crate::config::Secret;

pub use state::{Faults, Instance, MeteringLogEntry, Status, TimelineEntry};

/// The product code the service sells under (DESIGN.md).
pub const DEFAULT_PRODUCT_CODE: &str = "cmgj00063418";
/// Activation normally takes 1–5 minutes (the Zilliz docs' "约 1-5 分钟").
pub const DEFAULT_ACTIVATION_DELAY: (Duration, Duration) = (Duration::from_secs(60), Duration::from_secs(300));
/// The SKU an instance is opened with when the buyer names none.
pub const DEFAULT_SKU: &str = "pay-as-you-go";
/// Development secrets, the same as `serve --dev` makes up, so `simulate --dev` and
/// `serve --dev` in two terminals agree.
pub const DEV_ISV_KEY: &str = "dev-isv-key";
pub const DEV_ACCESS_KEY_ID: &str = "dev-access-key-id";
pub const DEV_ACCESS_KEY_SECRET: &str = "dev-access-key-secret";

/// Bound of the queue between the HTTP handlers and the SPI caller.
const JOB_QUEUE: usize = 1024;
/// Timeout of one SPI call.
const SPI_TIMEOUT: Duration = Duration::from_secs(5);

/// Everything a simulator runs with.
#[derive(Clone)]
pub struct SimulatorConfig {
    /// Address to bind; port 0 picks a free one (see [`RunningSimulator::port`]).
    pub listen: String,
    /// Base URL of marketflow; the SPI is called at `{service_url}/aliyun/spi`.
    pub service_url: String,
    /// The SPI token secret shared with the service.
    pub isv_key: Secret,
    /// The one AccessKey the Market OpenAPI accepts.
    pub access_key_id: String,
    pub access_key_secret: Secret,
    /// The product every simulated instance belongs to.
    pub product_code: String,
    /// Service time; shared with the service when in-process.
    pub clock: Arc<dyn Clock>,
    /// Range of the activation delay in service time (random within); default 1–5 min.
    pub activation_delay: Option<(Duration, Duration)>,
    /// Seeds IDs and delays (and faults, until `POST /sim/faults` sets a seed).
    pub seed: Option<u64>,
    /// Send orderPay when an instance opens (the buyer can override this per instance).
    pub order_pay: bool,
    /// Where the marketplace's instances are kept across restarts (`serve --dev` keeps them in its data
    /// directory); `None` keeps them in memory only.
    pub state_file: Option<std::path::PathBuf>,
    /// Instances that exist, opened, from the start (instance id = orderBizId, Aliyun account): what a loader of a
    /// benchmark seeds instead of buying each one through `/sim/instances` and the SPI.
    pub opened: Vec<(String, String)>,
}

impl SimulatorConfig {
    /// A configuration with the defaults: listen on a free local port, the default product,
    /// activation after 1–5 min, random IDs, orderPay sent.
    pub fn new(
        service_url: impl Into<String>,
        isv_key: Secret,
        access_key_id: impl Into<String>,
        access_key_secret: Secret,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            listen: "127.0.0.1:0".into(),
            service_url: service_url.into(),
            isv_key,
            access_key_id: access_key_id.into(),
            access_key_secret,
            product_code: DEFAULT_PRODUCT_CODE.into(),
            clock,
            activation_delay: None,
            seed: None,
            order_pay: true,
            state_file: None,
            opened: Vec::new(),
        }
    }
}

impl std::fmt::Debug for SimulatorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimulatorConfig")
            .field("listen", &self.listen)
            .field("service_url", &self.service_url)
            .field("isv_key", &self.isv_key)
            .field("access_key_id", &self.access_key_id)
            .field("access_key_secret", &self.access_key_secret)
            .field("product_code", &self.product_code)
            .field("time_scale", &self.clock.scale())
            .field("activation_delay", &self.activation_delay)
            .field("seed", &self.seed)
            .field("order_pay", &self.order_pay)
            .finish()
    }
}

/// Why the simulator could not start or stopped with a failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: String, source: std::io::Error },
    #[error("{name}: {message}")]
    Invalid { name: &'static str, message: String },
    #[error("missing required settings (set them, or run `simulate --dev`): {0}")]
    Missing(String),
    #[error("cannot build the HTTP client: {0}")]
    HttpClient(String),
    #[error("the simulator's HTTP server failed: {0}")]
    Server(std::io::Error),
    #[error("the kept state cannot be read: {0}")]
    State(String),
}

/// What the handlers and the SPI caller share.
pub(crate) struct Shared {
    pub product_code: String,
    pub isv_key: Secret,
    pub access_key_id: String,
    pub access_key_secret: Secret,
    /// `{service_url}/aliyun/spi`.
    pub spi_url: String,
    pub clock: Arc<dyn Clock>,
    pub activation_delay: (Duration, Duration),
    pub order_pay: bool,
    pub state: Mutex<state::State>,
    /// To the SPI caller.
    pub jobs: mpsc::Sender<delivery::Job>,
    /// For SPI calls.
    pub http: reqwest::Client,
}

impl Shared {
    /// The state; a poisoned lock is taken over (every mutation leaves the state consistent
    /// between statements that could panic, and a handler never panics on input).
    pub fn lock(&self) -> MutexGuard<'_, state::State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }
}

/// A way to stop a running simulator from elsewhere. Cheap to clone.
#[derive(Clone)]
pub struct SimulatorHandle {
    server: actix_web::dev::ServerHandle,
    shutdown: Arc<watch::Sender<bool>>,
}

impl SimulatorHandle {
    /// Stops accepting, finishes in-flight requests, stops the SPI caller and the activation loop.
    pub async fn stop(&self) {
        let _ = self.shutdown.send(true);
        self.server.stop(true).await;
    }
}

/// A simulator serving on its port. Dropping it does not stop it (it then runs as long as the
/// runtime); stop it with [`RunningSimulator::stop`] or a [`SimulatorHandle`].
pub struct RunningSimulator {
    port: u16,
    base_url: String,
    handle: SimulatorHandle,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    driver: tokio::task::JoinHandle<()>,
}

impl RunningSimulator {
    /// The bound port (useful with `listen = "127.0.0.1:0"`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://host:port`: the Market API endpoint for [`crate::aliyun::client::MarketClient`]
    /// and the base of the `/sim/` API.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    pub fn handle(&self) -> SimulatorHandle {
        self.handle.clone()
    }

    /// Stops it and waits until it has stopped.
    pub async fn stop(self) -> Result<(), Error> {
        self.handle.stop().await;
        self.wait().await
    }

    /// Waits until it is stopped through a [`SimulatorHandle`].
    pub async fn wait(self) -> Result<(), Error> {
        let served = self.server.await;
        let _ = self.handle.shutdown.send(true);
        let _ = self.driver.await;
        match served {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Error::Server(e)),
            Err(e) => Err(Error::Server(std::io::Error::other(e.to_string()))),
        }
    }
}

fn validate_config(config: &SimulatorConfig) -> Result<(Duration, Duration), Error> {
    let url = reqwest::Url::parse(config.service_url.trim()).map_err(|e| Error::Invalid {
        name: "MARKETFLOW_SIMULATOR_SERVICE_URL",
        message: format!("{:?} is not a URL: {e}", config.service_url),
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(Error::Invalid {
            name: "MARKETFLOW_SIMULATOR_SERVICE_URL",
            message: format!("{:?} must be an http(s) URL with a host", config.service_url),
        });
    }
    let mut missing = Vec::new();
    if config.isv_key.expose().is_empty() {
        missing.push("MARKETFLOW_ALIYUN_ISV_KEY");
    }
    if config.access_key_id.trim().is_empty() {
        missing.push("MARKETFLOW_ALIYUN_ACCESS_KEY_ID");
    }
    if config.access_key_secret.expose().is_empty() {
        missing.push("MARKETFLOW_ALIYUN_ACCESS_KEY_SECRET");
    }
    if !missing.is_empty() {
        return Err(Error::Missing(missing.join(", ")));
    }
    if crate::aliyun::spi::ProductCode::new(config.product_code.clone()).is_err() {
        return Err(Error::Invalid {
            name: "MARKETFLOW_ALIYUN_PRODUCT_CODE",
            message: format!("{:?} is not a product code", config.product_code),
        });
    }
    let delay = config.activation_delay.unwrap_or(DEFAULT_ACTIVATION_DELAY);
    if delay.1 > Duration::from_secs(buyer::MAX_ACTIVATION_SECONDS) {
        return Err(Error::Invalid {
            name: "activation_delay",
            message: format!("the maximum {:?} is above 30 days", delay.1),
        });
    }
    if delay.0 > delay.1 {
        return Err(Error::Invalid {
            name: "activation_delay",
            message: format!("the minimum {:?} is above the maximum {:?}", delay.0, delay.1),
        });
    }
    Ok(delay)
}

/// Binds the simulator and starts serving, its SPI caller and its activation loop. Call it inside
/// a tokio runtime (an actix system, like [`crate::startup::Application::build`], or
/// `#[actix_rt::test]`). It does not handle signals: [`run`] does, and in-process users stop it
/// through [`RunningSimulator::stop`] or a [`SimulatorHandle`].
pub async fn start(config: SimulatorConfig) -> Result<RunningSimulator, Error> {
    let activation_delay = validate_config(&config)?;
    let listener =
        TcpListener::bind(&config.listen).map_err(|source| Error::Listen { addr: config.listen.clone(), source })?;
    let addr = listener.local_addr().map_err(|source| Error::Listen { addr: config.listen.clone(), source })?;
    let host = if addr.ip().is_unspecified() { "127.0.0.1".to_string() } else { addr.ip().to_string() };
    let base_url = match addr {
        std::net::SocketAddr::V6(_) if !addr.ip().is_unspecified() => format!("http://[{host}]:{}", addr.port()),
        _ => format!("http://{host}:{}", addr.port()),
    };
    let http = reqwest::Client::builder()
        .timeout(SPI_TIMEOUT)
        .user_agent("AliyunMarketplace-Simulator (marketflow)")
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| Error::HttpClient(e.to_string()))?;
    let (jobs_tx, jobs_rx) = mpsc::channel(JOB_QUEUE);
    let shared = Arc::new(Shared {
        product_code: config.product_code.clone(),
        isv_key: config.isv_key.clone(),
        access_key_id: config.access_key_id.trim().to_string(),
        access_key_secret: config.access_key_secret.clone(),
        spi_url: format!("{}/aliyun/spi", config.service_url.trim().trim_end_matches('/')),
        clock: config.clock.clone(),
        activation_delay,
        order_pay: config.order_pay,
        state: Mutex::new({
            let mut st = load_state(config.seed, config.state_file.as_deref())?;
            st.open_at_start(&config.opened, &config.product_code, config.clock.now());
            st
        }),
        jobs: jobs_tx,
        http,
    });
    let data = web::Data::from(shared.clone());
    let server = HttpServer::new(move || App::new().app_data(data.clone()).configure(configure))
        .workers(1)
        .disable_signals()
        .shutdown_timeout(5)
        .listen(listener)
        .map_err(|source| Error::Listen { addr: config.listen.clone(), source })?
        .run();
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let handle = SimulatorHandle { server: server.handle(), shutdown: Arc::new(shutdown_tx) };
    let saver =
        config.state_file.clone().map(|file| tokio::spawn(keep_state(shared.clone(), file, shutdown_rx.clone())));
    let driver = tokio::spawn(async move {
        delivery::drive(shared, jobs_rx, shutdown_rx).await;
        if let Some(saver) = saver {
            let _ = saver.await;
        }
    });
    let server = tokio::spawn(server);
    tracing::info!(listen = %config.listen, base_url = %base_url, service_url = %config.service_url,
        product_code = %config.product_code, time_scale = config.clock.scale(), "marketplace simulator serving");
    Ok(RunningSimulator { port: addr.port(), base_url, handle, server, driver })
}

/// The state an earlier run kept in `file`, or a new one.
fn load_state(seed: Option<u64>, file: Option<&std::path::Path>) -> Result<state::State, Error> {
    let mut st = state::State::new(seed);
    if let Some(file) = file {
        match std::fs::read(file) {
            Ok(bytes) => {
                let saved: state::Saved = serde_json::from_slice(&bytes).map_err(|e| {
                    Error::State(format!("{}: {e} (move it away to start with an empty marketplace)", file.display()))
                })?;
                tracing::info!(file = %file.display(), instances = saved.instances.len(), "the marketplace's instances are back");
                st.restore(saved);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::State(format!("{}: {e}", file.display()))),
        }
    }
    Ok(st)
}

/// Writes the state to `file` whenever it changed (looked at twice a second, and once more when stopping): a
/// temporary file renamed over the old one, so a crash leaves the last whole copy.
async fn keep_state(shared: Arc<Shared>, file: std::path::PathBuf, mut shutdown: watch::Receiver<bool>) {
    let mut last: Vec<u8> = Vec::new();
    loop {
        let stopping = *shutdown.borrow();
        let saved = shared.lock().saved();
        match serde_json::to_vec(&saved) {
            Ok(bytes) if bytes != last => {
                let tmp = file.with_extension("tmp");
                let written = std::fs::write(&tmp, &bytes).and_then(|_| std::fs::rename(&tmp, &file));
                match written {
                    Ok(()) => last = bytes,
                    Err(e) => {
                        tracing::warn!(file = %file.display(), error = %e, "could not keep the marketplace's state")
                    }
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "the marketplace's state does not encode"),
        }
        if stopping {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = shutdown.changed() => {}
        }
    }
}

async fn healthz(shared: web::Data<Shared>) -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "status": "ok",
        "now": shared.now().to_rfc3339(),
        "time_scale": shared.clock.scale(),
    }))
}

async fn not_found() -> HttpResponse {
    HttpResponse::NotFound().json(json!({ "code": "not_found", "message": "no such route" }))
}

fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/").route(web::post().to(openapi::market_api)).route(web::get().to(openapi::market_api)),
    )
    .route("/healthz", web::get().to(healthz))
    .configure(buyer::configure)
    .default_service(web::to(not_found));
}

/// The flags of `marketflow simulate`; each also reads its `MARKETFLOW_*` variable.
#[derive(Debug, Clone, clap::Args)]
pub struct SimulateArgs {
    /// Address the simulated marketplace binds.
    #[arg(long, env = "MARKETFLOW_SIMULATOR_LISTEN", default_value = "127.0.0.1:9090")]
    pub listen: String,
    /// Base URL of the marketflow service whose SPI (`/aliyun/spi`) it calls.
    #[arg(long, env = "MARKETFLOW_SIMULATOR_SERVICE_URL", default_value = "http://127.0.0.1:8080")]
    pub service_url: String,
    /// The SPI token secret (the same as the service's).
    #[arg(long, env = "MARKETFLOW_ALIYUN_ISV_KEY", hide_env_values = true)]
    pub isv_key: Option<String>,
    /// The AccessKey ID the Market OpenAPI accepts.
    #[arg(long, env = "MARKETFLOW_ALIYUN_ACCESS_KEY_ID")]
    pub access_key_id: Option<String>,
    /// The AccessKey secret the Market OpenAPI accepts.
    #[arg(long, env = "MARKETFLOW_ALIYUN_ACCESS_KEY_SECRET", hide_env_values = true)]
    pub access_key_secret: Option<String>,
    /// The product the simulated instances belong to.
    #[arg(long, env = "MARKETFLOW_ALIYUN_PRODUCT_CODE", default_value = DEFAULT_PRODUCT_CODE)]
    pub product_code: String,
    /// Service seconds per real second; use the service's value. The simulator then starts from
    /// the service's current time (read from its /healthz) so both clocks agree.
    #[arg(long, env = "MARKETFLOW_TIME_SCALE", default_value_t = 1.0)]
    pub time_scale: f64,
    /// Activation delay in service time: `MIN..MAX` (random within) or one duration, e.g. `1m..5m`, `30s`.
    #[arg(long, default_value = "1m..5m")]
    pub activation_delay: String,
    /// Seed for IDs, delays and faults (reproducible runs).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Do not send orderPay when an instance opens.
    #[arg(long)]
    pub no_order_pay: bool,
    /// Development mode: use the development secrets of `serve --dev` where none are set.
    #[arg(long)]
    pub dev: bool,
}

fn parse_delay(s: &str) -> Result<(Duration, Duration), Error> {
    let invalid = |message: String| Error::Invalid { name: "--activation-delay", message };
    let one = |part: &str| {
        humantime::parse_duration(part.trim()).map_err(|e| invalid(format!("{part:?} is not a duration: {e}")))
    };
    let (min, max) = match s.split_once("..") {
        Some((a, b)) => (one(a)?, one(b)?),
        None => {
            let d = one(s)?;
            (d, d)
        }
    };
    if min > max {
        return Err(invalid(format!("the minimum {min:?} is above the maximum {max:?}")));
    }
    Ok((min, max))
}

impl SimulateArgs {
    /// Resolves the arguments into a configuration; with a time scale other than 1 the clock
    /// starts from the service's current time when the service answers, so that both agree.
    pub async fn into_config(self) -> Result<SimulatorConfig, Error> {
        if !(self.time_scale.is_finite() && self.time_scale > 0.0 && self.time_scale <= 1_000_000.0) {
            return Err(Error::Invalid {
                name: "MARKETFLOW_TIME_SCALE",
                message: format!("must be a number in (0, 1000000], got {}", self.time_scale),
            });
        }
        let activation_delay = parse_delay(&self.activation_delay)?;
        let pick = |v: Option<String>, dev_value: &str| match v {
            Some(v) if !v.is_empty() => Some(v),
            _ if self.dev => Some(dev_value.to_string()),
            _ => None,
        };
        let isv_key = pick(self.isv_key.clone(), DEV_ISV_KEY);
        let access_key_id = pick(self.access_key_id.clone(), DEV_ACCESS_KEY_ID);
        let access_key_secret = pick(self.access_key_secret.clone(), DEV_ACCESS_KEY_SECRET);
        let mut missing = Vec::new();
        if isv_key.is_none() {
            missing.push("MARKETFLOW_ALIYUN_ISV_KEY");
        }
        if access_key_id.is_none() {
            missing.push("MARKETFLOW_ALIYUN_ACCESS_KEY_ID");
        }
        if access_key_secret.is_none() {
            missing.push("MARKETFLOW_ALIYUN_ACCESS_KEY_SECRET");
        }
        let (Some(isv_key), Some(access_key_id), Some(access_key_secret)) = (isv_key, access_key_id, access_key_secret)
        else {
            return Err(Error::Missing(missing.join(", ")));
        };
        let clock = simulation_clock(&self.service_url, self.time_scale).await;
        Ok(SimulatorConfig {
            listen: self.listen,
            service_url: self.service_url,
            isv_key: Secret::new(isv_key),
            access_key_id,
            access_key_secret: Secret::new(access_key_secret),
            product_code: self.product_code,
            clock,
            activation_delay: Some(activation_delay),
            seed: self.seed,
            order_pay: !self.no_order_pay,
            state_file: None,
            opened: Vec::new(),
        })
    }
}

/// Real time at scale 1; otherwise a scaled clock starting from the service's `now` (its scaled
/// clock continues from an anchor stored with its data, so it can be far from real time), or
/// from real time when the service does not answer or runs at another scale.
async fn simulation_clock(service_url: &str, scale: f64) -> Arc<dyn Clock> {
    if scale == 1.0 {
        return Arc::new(SystemClock);
    }
    let url = format!("{}/healthz", service_url.trim().trim_end_matches('/'));
    let probe = async {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().ok()?;
        let body: serde_json::Value = client.get(&url).send().await.ok()?.json().await.ok()?;
        let now = DateTime::parse_from_rfc3339(body.get("now")?.as_str()?).ok()?.with_timezone(&Utc);
        let their_scale = body.get("time_scale")?.as_f64()?;
        Some((now, their_scale))
    };
    match probe.await {
        Some((now, their_scale)) if (their_scale - scale).abs() < 1e-9 => {
            tracing::info!(service_now = %now, scale, "simulator clock starts from the service's time");
            Arc::new(ScaledClock::new(now, scale))
        }
        Some((_, their_scale)) => {
            tracing::warn!(scale, their_scale, "the service runs at another time scale; the clocks will disagree");
            Arc::new(ScaledClock::new(Utc::now(), scale))
        }
        None => {
            tracing::info!(scale, "the service did not answer /healthz; the simulator clock starts from real time");
            Arc::new(ScaledClock::new(Utc::now(), scale))
        }
    }
}

/// `marketflow simulate`: serves until SIGTERM or SIGINT, then stops gracefully.
pub async fn run(args: SimulateArgs) -> Result<(), Error> {
    let config = args.into_config().await?;
    let simulator = start(config).await?;
    let handle = simulator.handle();
    tokio::spawn(async move {
        crate::startup::wait_for_signal().await;
        tracing::info!("signal received; stopping the marketplace simulator");
        handle.stop().await;
    });
    simulator.wait().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_parse() {
        assert_eq!(parse_delay("1m..5m").unwrap(), (Duration::from_secs(60), Duration::from_secs(300)));
        assert_eq!(parse_delay("30s").unwrap(), (Duration::from_secs(30), Duration::from_secs(30)));
        assert!(parse_delay("5m..1m").is_err());
        assert!(parse_delay("soon").is_err());
    }

    #[test]
    fn config_debug_hides_secrets() {
        let c = SimulatorConfig::new(
            "http://127.0.0.1:8080",
            Secret::new("isv-secret"),
            "ak",
            Secret::new("ak-secret"),
            Arc::new(SystemClock),
        );
        let dump = format!("{c:?}");
        assert!(!dump.contains("isv-secret") && !dump.contains("ak-secret"), "{dump}");
        assert!(validate_config(&c).is_ok());
        let bad = SimulatorConfig { service_url: "not a url".into(), ..c.clone() };
        assert!(matches!(validate_config(&bad), Err(Error::Invalid { .. })));
        let long =
            SimulatorConfig { activation_delay: Some((Duration::ZERO, Duration::from_secs(31 * 86_400))), ..c.clone() };
        assert!(matches!(validate_config(&long), Err(Error::Invalid { .. })));
        let missing = SimulatorConfig { isv_key: Secret::new(""), ..c };
        assert!(matches!(validate_config(&missing), Err(Error::Missing(_))));
    }

    #[actix_rt::test]
    async fn args_need_secrets_outside_dev_mode() {
        let args = SimulateArgs {
            listen: "127.0.0.1:0".into(),
            service_url: "http://127.0.0.1:9".into(),
            isv_key: None,
            access_key_id: Some("ak".into()),
            access_key_secret: None,
            product_code: DEFAULT_PRODUCT_CODE.into(),
            time_scale: 1.0,
            activation_delay: "1m..5m".into(),
            seed: None,
            no_order_pay: false,
            dev: false,
        };
        let e = args.clone().into_config().await.unwrap_err().to_string();
        assert!(e.contains("MARKETFLOW_ALIYUN_ISV_KEY") && e.contains("MARKETFLOW_ALIYUN_ACCESS_KEY_SECRET"), "{e}");
        assert!(!e.contains("MARKETFLOW_ALIYUN_ACCESS_KEY_ID"), "{e}");
        let dev = SimulateArgs { dev: true, ..args.clone() }.into_config().await.unwrap();
        assert_eq!(dev.isv_key.expose(), DEV_ISV_KEY);
        assert_eq!(dev.access_key_id, "ak");
        let bad = SimulateArgs { time_scale: 0.0, dev: true, ..args };
        assert!(bad.into_config().await.is_err());
    }
}
