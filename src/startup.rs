//! Builds and wires the application. `main` and the black-box tests build it the same way (tests on port 0).

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::{web, App, HttpServer};

use crate::aliyun::client::MarketClient;
use crate::aliyun::simulator::{self, RunningSimulator, SimulatorConfig};
use crate::app::calls::MarketCalls;
use crate::clock::Clock;
use crate::config::Config;
use crate::domain::pricing::Catalog;
use crate::engine::{Engine, EngineConfig, Registry};
use crate::http::{self, AppState};
use crate::store::postgres::PostgresStore;
use crate::store::{SledStore, Store};

/// Waits for SIGTERM or SIGINT.
pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the process");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Why the application could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open the store in {dir}: {source}")]
    Store { dir: String, source: crate::store::Error },
    #[error("cannot use the PostgreSQL database: {0}")]
    Database(crate::store::Error),
    #[error(transparent)]
    Workflows(#[from] crate::engine::registry::Error),
    #[error(transparent)]
    Engine(#[from] crate::engine::StartError),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: String, source: std::io::Error },
    #[error("cannot persist the clock anchor: {0}")]
    Clock(String),
    #[error("the Market OpenAPI client cannot be set up: {0}")]
    Market(String),
    #[error("the development marketplace cannot start: {0}")]
    Simulator(String),
    #[error("{0}")]
    Catalog(String),
    #[error(transparent)]
    Config(#[from] crate::config::Error),
}

/// The built-in workflow definitions (the `workflows/` directory at build time).
pub const BUILTIN_WORKFLOWS: &[(&str, &str)] = &[
    ("workflows/subscription.toml", include_str!("../workflows/subscription.toml")),
    ("workflows/organization.toml", include_str!("../workflows/organization.toml")),
    ("workflows/metering.toml", include_str!("../workflows/metering.toml")),
    ("workflows/subscription-v1.toml", include_str!("../workflows/subscription-v1.toml")),
];

/// Parts of the application a test supplies instead of the configuration.
#[derive(Default)]
pub struct Overrides {
    /// The service clock (a manual clock shared with an in-process simulator).
    pub clock: Option<Arc<dyn Clock>>,
    /// A listener bound already, so a test knows the port before the service starts, without a race.
    pub listener: Option<TcpListener>,
}

/// A running application: HTTP server, engine, store.
pub struct Application {
    port: u16,
    server: Server,
    engine: Engine,
    /// This node's part in a cluster (PostgreSQL); `None` on sled.
    cluster: Option<Arc<crate::cluster::Cluster>>,
    /// The local marketplace of `serve --dev`, stopped with the service.
    simulator: Option<RunningSimulator>,
}

/// The registry of the service's workflows, from the built-in definitions or a directory.
pub fn registry(
    config: &Config,
    store: Arc<dyn Store>,
    catalog: Arc<Catalog>,
    clock: Arc<dyn Clock>,
) -> Result<Registry, Error> {
    let mut r = Registry::new();
    for wf in crate::domain::workflows() {
        r.add_workflow(wf);
    }
    match &config.workflows_dir {
        Some(dir) => r.add_definition_dir(dir)?,
        None => {
            for (file, source) in BUILTIN_WORKFLOWS {
                r.add_definition(file, source)?;
            }
        }
    }
    for (kind, timer, d) in &config.timer_overrides {
        r.override_timer(kind, timer, *d);
    }
    let records = crate::engine::records::Records::new(store);
    MarketCalls::new(
        market_client(config)?,
        records,
        catalog,
        clock,
        crate::app::pushes::PushConfig::with_linger(config.push_linger),
    )
    .register(&mut r);
    Ok(r)
}

/// The Market OpenAPI client: the marketplace's endpoint (or the simulator's) with the AccessKey.
fn market_client(config: &Config) -> Result<MarketClient, Error> {
    let secret = config.access_key_secret.clone().ok_or_else(|| Error::Market("no AccessKey secret".into()))?;
    let id = config.access_key_id.as_deref().ok_or_else(|| Error::Market("no AccessKey ID".into()))?;
    MarketClient::new(&config.aliyun_endpoint, id, secret, std::time::Duration::from_secs(10))
        .map_err(|e| Error::Market(e.to_string()))
}

impl Application {
    /// Opens the store, starts the engine and binds the HTTP server. Must run inside an actix system.
    pub async fn build(config: Config) -> Result<Self, Error> {
        Self::build_with_clock(config, None).await
    }

    /// As [`Application::build`], on a given clock (tests: a manual clock shared with the simulator).
    pub async fn build_with_clock(config: Config, clock: Option<Arc<dyn Clock>>) -> Result<Self, Error> {
        Self::build_with(config, Overrides { clock, listener: None }).await
    }

    /// As [`Application::build`], with parts supplied by the caller (tests).
    pub async fn build_with(mut config: Config, overrides: Overrides) -> Result<Self, Error> {
        let Overrides { clock, listener } = overrides;
        let (store, database): (Arc<dyn Store>, Option<Arc<PostgresStore>>) = match &config.database_url {
            Some(url) => {
                let mut options =
                    crate::store::postgres::Options::new(url.expose(), config.node_id.clone(), config.lease);
                options.fencing = !config.unsafe_no_fencing;
                if config.unsafe_no_fencing {
                    tracing::error!("MARKETFLOW_UNSAFE_NO_FENCING: commits are not fenced; a test-only setting");
                }
                // Connecting and migrating block: off the actix thread.
                let pg = tokio::task::spawn_blocking(move || PostgresStore::connect(options))
                    .await
                    .map_err(|e| Error::Database(crate::store::Error::Backend(e.to_string())))?
                    .map_err(Error::Database)?;
                (pg.clone(), Some(pg))
            }
            None => (
                Arc::new(
                    SledStore::open_with_cache(&config.data_dir, config.sled_cache_mb)
                        .map_err(|source| Error::Store { dir: config.data_dir.display().to_string(), source })?,
                ),
                None,
            ),
        };
        let clock = match clock {
            Some(c) => c,
            None => crate::engine::anchor::service_clock(&store, config.time_scale, database.is_some())
                .await
                .map_err(Error::Clock)?,
        };
        let simulator =
            if config.dev_simulator { Some(start_dev_simulator(&mut config, clock.clone()).await?) } else { None };
        let catalog = Arc::new(match &config.catalog_file {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|e| Error::Catalog(format!("{}: {e}", path.display())))
                .and_then(|t| Catalog::parse(&t).map_err(|e| Error::Catalog(e.to_string())))?,
            None => Catalog::builtin().map_err(|e| Error::Catalog(e.to_string()))?,
        });
        let registry = registry(&config, store.clone(), catalog.clone(), clock.clone())?;
        let engine_config = EngineConfig {
            cluster_lease: database.as_ref().map(|_| config.lease),
            counter_writer: if database.is_some() { config.node_id.clone() } else { String::new() },
            ..Default::default()
        };
        let engine = Engine::start(store, clock, registry, engine_config).await?;
        let cluster = match database {
            Some(pg) => {
                let cc = crate::cluster::ClusterConfig {
                    node: config.node_id.clone(),
                    url: config.node_url.clone(),
                    lease: config.lease,
                    secret: config.cluster_secret.clone().ok_or_else(|| {
                        Error::Config(crate::config::Error::Missing("MARKETFLOW_CLUSTER_SECRET".into()))
                    })?,
                    forward_timeout: std::time::Duration::from_secs(10),
                };
                Some(crate::cluster::Cluster::start(engine.clone(), pg, cc).await.map_err(Error::Database)?)
            }
            None => None,
        };
        let listener = match listener {
            Some(l) => l,
            None => TcpListener::bind(&config.listen)
                .map_err(|source| Error::Listen { addr: config.listen.clone(), source })?,
        };
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        tracing::info!(listen = %config.listen, port, data_dir = %config.data_dir.display(),
            time_scale = config.time_scale, dev = config.dev, "marketflow serving");
        let mailer = Arc::new(crate::mail::Mailer::new(config.smtp_url.as_ref(), &config.mail_from, config.dev)?);
        if !mailer.can_send() {
            tracing::warn!(
                "no SMTP server (MARKETFLOW_SMTP_URL): e-mail addresses cannot be verified, so invitations cannot \
                 be accepted and operators' organizations wait for their owners"
            );
        }
        let accounts =
            crate::app::accounts::Accounts::new(engine.clone(), config.rate_limits.account, mailer, &config.public_url);
        let limiter = http::limits::Limiter::new(config.rate_limits, config.trusted_proxies.clone());
        let keep = |d: std::time::Duration| chrono::TimeDelta::from_std(d).unwrap_or(chrono::TimeDelta::MAX);
        let rules = [
            crate::app::accounts::sweep_rules(),
            http::console::sweep_rules(),
            crate::engine::audit::sweep_rules(keep(config.retention_records)),
            crate::app::usage::sweep_rules(keep(config.retention_records)),
        ]
        .concat();
        let swept = crate::engine::sweep::start(&engine, rules, config.sweep_interval);
        let retention = crate::engine::retention::Retention {
            idempotency: keep(config.retention_idempotency),
            records: keep(config.retention_records),
        };
        let retained = crate::engine::retention::start(&engine, retention, config.sweep_interval);
        let app = crate::app::App { engine: engine.clone(), accounts, catalog };
        if let Some(url) = config.alert_webhook.clone() {
            crate::app::alerts::start(app.clone(), url, config.node_id.clone(), config.alert_interval);
        }
        actix_rt::spawn(crate::app::notices::run_notice_poller(
            app.clone(),
            market_client(&config)?,
            config.public_url.clone(),
            config.notice_poll_interval,
        ));
        let state = web::Data::new(AppState { app, config, limiter, swept, retained, cluster: cluster.clone() });
        let connections = crate::ratelimit::Connections::new(
            state.config.rate_limits.connections,
            state.config.trusted_proxies.clone(),
        );
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .wrap(actix_web::middleware::from_fn(http::limits::body_deadline))
                .wrap(actix_web::middleware::from_fn(http::limits::limit))
                .wrap(actix_web::middleware::from_fn(http::metrics::count))
                .wrap(actix_web::middleware::from_fn(http::web::headers::security_headers))
                // Inside the access log, so that the log line carries the id it answered.
                .wrap(actix_web::middleware::from_fn(http::trace::request_id))
                .wrap(tracing_actix())
                .configure(http::configure)
        })
        .on_connect(move |io, data| {
            // Counted per client address as accepted; the slot goes with the connection's data when it closes.
            if let Some(peer) = io.downcast_ref::<actix_web::rt::net::TcpStream>().and_then(|s| s.peer_addr().ok()) {
                data.insert(connections.accept(peer.ip()));
            }
        })
        .workers(2)
        .shutdown_timeout(10)
        // Signals are ours: a node of a cluster hands its shards over before the server stops.
        .disable_signals()
        .listen(listener)
        .map_err(|source| Error::Listen { addr: "listener".into(), source })?
        .run();
        let (handle, c) = (server.handle(), cluster.clone());
        actix_rt::spawn(async move {
            wait_for_signal().await;
            tracing::info!("stopping: SIGTERM or SIGINT");
            if let Some(c) = c {
                c.shutdown().await;
            }
            handle.stop(true).await;
        });
        Ok(Self { port, server, engine, cluster, simulator })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// A handle to stop the server from elsewhere (tests).
    pub fn handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }

    /// Serves until SIGTERM/SIGINT (or a stop through the handle), then drains: in-flight requests finish,
    /// queued commits are made durable, the store is flushed.
    ///
    /// Ends with an error after a storage failure (a write or an fsync that failed, a database that refused a
    /// commit), so that the process exits non-zero and a supervisor restarts it from what is durable.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let r = self.server.await;
        if let Some(c) = &self.cluster {
            c.shutdown().await;
        }
        tracing::info!("HTTP server stopped; draining the engine");
        self.engine.shutdown();
        if let Some(sim) = self.simulator {
            let _ = sim.stop().await;
        }
        tracing::info!("marketflow stopped");
        r?;
        if self.engine.storage_failed() {
            return Err(std::io::Error::other(
                "stopped after a storage failure (see the log): restart to carry on from what is durable",
            ));
        }
        Ok(())
    }

    /// This node's part in a cluster, if it runs on PostgreSQL.
    pub fn cluster(&self) -> Option<&Arc<crate::cluster::Cluster>> {
        self.cluster.as_ref()
    }
}

/// Starts the local marketplace for `serve --dev` on the service's clock and points the client at it.
async fn start_dev_simulator(config: &mut Config, clock: Arc<dyn Clock>) -> Result<RunningSimulator, Error> {
    let missing = || Error::Simulator("development secrets are missing".into());
    // The newcomer's instances survive a restart of `serve --dev`, beside the service's own data.
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| Error::Simulator(format!("{}: {e}", config.data_dir.display())))?;
    let sc = SimulatorConfig {
        listen: config.simulator_listen.clone(),
        state_file: Some(config.data_dir.join("dev-marketplace.json")),
        ..SimulatorConfig::new(
            config.public_url.clone(),
            config.isv_key.clone().ok_or_else(missing)?,
            config.access_key_id.clone().ok_or_else(missing)?,
            config.access_key_secret.clone().ok_or_else(missing)?,
            clock,
        )
    };
    let sim = simulator::start(sc).await.map_err(|e| Error::Simulator(e.to_string()))?;
    config.aliyun_endpoint = sim.base_url().to_string();
    tracing::info!(url = %sim.base_url(), "development marketplace (simulator) running in this process");
    Ok(sim)
}

fn tracing_actix() -> actix_web::middleware::Logger {
    // Method and path only: query strings carry SPI tokens and 免登 signatures, which must not reach the logs.
    actix_web::middleware::Logger::new("%s %{request}xi %Dms %{x-request-id}o")
        .exclude("/healthz")
        .exclude("/readyz")
        .custom_request_replace("request", |req| format!("{} {}", req.method(), req.path()))
}

/// Sets up logging: human-readable or JSON lines, filtered by `RUST_LOG` (default `info`).
pub fn init_tracing(format: crate::config::LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        crate::config::LogFormat::Json => builder.json().try_init(),
        crate::config::LogFormat::Human => builder.try_init(),
    };
}
