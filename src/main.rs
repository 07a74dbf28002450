//! The `marketflow` binary: `serve`, `simulate`, `ctl`, `demo`.

use clap::{Parser, Subcommand};
use marketflow::config::{Config, ServeArgs};
use marketflow::startup::{init_tracing, Application};

#[derive(Parser)]
#[command(name = "marketflow", version, about = "Alibaba Cloud Marketplace subscription orchestrator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (HTTP API, SPI, engine) on the embedded sled store, or on PostgreSQL with other nodes.
    Serve(Box<ServeArgs>),
    /// Run a local Alibaba Cloud Marketplace (Market OpenAPI, SPI calls, buyers) for development and tests.
    Simulate(marketflow::aliyun::simulator::SimulateArgs),
    /// Operator CLI over the HTTP API: entities, journals, timers, actions (tables or JSON).
    Ctl(marketflow::ctl::CtlArgs),
    /// The service and the marketplace in one process on a scaled clock, walking the whole lifecycle.
    Demo(marketflow::demo::DemoArgs),
    /// Runs PostgreSQL's migrations (every node also does at start-up) and exits.
    Migrate(marketflow::admin::MigrateArgs),
    /// Writes every table of the store to a portable file (a snapshot; on sled, with no service running).
    Export(marketflow::admin::ExportArgs),
    /// Reads a file of `export` into an empty store (sled, or PostgreSQL: the way from one to the other).
    Import(marketflow::admin::ImportArgs),
}

/// What a newcomer needs from `serve --dev`, on standard output (the log never carries a token): where the
/// service and its console are, and the development secrets it made up.
fn print_dev_banner(public_url: &str, port: u16, made_up: &[(&str, marketflow::config::Secret)]) {
    use std::io::Write;
    let base = public_url.trim_end_matches('/');
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "marketflow --dev: serving on port {port}");
    let _ = writeln!(out, "  service   {base}/");
    let _ = writeln!(out, "  console   {base}/console  (log in with the operator token)");
    let _ = writeln!(out, "  API docs  {base}/api/docs");
    for (name, value) in made_up {
        let _ = writeln!(out, "  {name}={}", value.expose());
    }
    let _ = out.flush();
}

/// Says what an administration command did (standard error: an export may write its file to standard output).
fn admin_result(what: &str, r: Result<String, marketflow::admin::Error>) -> std::process::ExitCode {
    match r {
        Ok(done) => {
            eprintln!("marketflow {what}: {done}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("marketflow {what}: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let config = match Config::resolve(&args) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("marketflow: {e}");
                    return std::process::ExitCode::from(2);
                }
            };
            init_tracing(config.log_format);
            let dev = config.dev.then(|| (config.public_url.clone(), config.dev_made_up.clone()));
            let result = actix_web::rt::System::new().block_on(async move {
                let app = Application::build(config).await.map_err(|e| e.to_string())?;
                if let Some((url, made_up)) = dev {
                    print_dev_banner(&url, app.port(), &made_up);
                }
                app.run_until_stopped().await.map_err(|e| e.to_string())
            });
            match result {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "marketflow failed");
                    eprintln!("marketflow: {e}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
        Command::Ctl(args) => {
            let mut stdout = std::io::stdout().lock();
            match actix_web::rt::System::new().block_on(marketflow::ctl::run(args, &mut stdout)) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("marketflow ctl: {e}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
        Command::Demo(args) => {
            init_tracing(marketflow::config::LogFormat::Human);
            let mut stdout = std::io::stdout();
            match actix_web::rt::System::new().block_on(marketflow::demo::run(args, &mut stdout)) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("marketflow demo: {e}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
        Command::Migrate(args) => admin_result("migrate", marketflow::admin::migrate(&args)),
        Command::Export(args) => {
            admin_result("export", marketflow::admin::export(&args).map(|n| format!("exported {n} rows")))
        }
        Command::Import(args) => {
            admin_result("import", marketflow::admin::import(&args).map(|n| format!("imported {n} rows")))
        }
        Command::Simulate(args) => {
            init_tracing(marketflow::config::LogFormat::Human);
            match actix_web::rt::System::new().block_on(marketflow::aliyun::simulator::run(args)) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("marketflow: {e}");
                    std::process::ExitCode::from(2)
                }
            }
        }
    }
}
