//! The store's administration commands: `marketflow migrate` (PostgreSQL's schema, as every node does at start-up),
//! `marketflow export` and `marketflow import` (a portable dump of every table: `store::dump`). They run against
//! the store the service would use (`MARKETFLOW_DATABASE_URL`, else sled in `MARKETFLOW_DATA_DIR`), with no
//! service in between: sled allows one process on its directory (export from a running service through `GET
//! /api/v1/ops/export` instead, or stop it first), PostgreSQL any number (the export is a snapshot while the nodes
//! serve).

use std::io::{BufReader, BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Secret;
use crate::store::postgres::{Options, PostgresStore};
use crate::store::{dump, SledStore, Store};

/// Where the store is.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// PostgreSQL connection string (the nodes' database); unset: sled in the data directory.
    #[arg(long, env = "MARKETFLOW_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<Secret>,
    /// The sled store's directory (when no database is given).
    #[arg(long, env = "MARKETFLOW_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
}

/// `marketflow export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// The file to write (`-`: standard output).
    #[arg(long, default_value = "-")]
    pub to: String,
}

/// `marketflow import`.
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// The file to read (`-`: standard input), written by `marketflow export`.
    #[arg(long)]
    pub from: String,
}

/// `marketflow migrate`.
#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    /// PostgreSQL connection string.
    #[arg(long, env = "MARKETFLOW_DATABASE_URL", hide_env_values = true)]
    pub database_url: Secret,
}

/// Why a command failed, in words an operator can act on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Store(#[from] crate::store::Error),
    #[error("{path}: {source}")]
    File { path: String, source: std::io::Error },
    #[error(
        "cannot open the sled store in {dir}: {source} (a running service holds it: stop it, or export through GET \
         /api/v1/ops/export)"
    )]
    Busy { dir: String, source: crate::store::Error },
}

fn open(args: &StoreArgs, node: &str) -> Result<Arc<dyn Store>, Error> {
    match &args.database_url {
        Some(url) => Ok(PostgresStore::connect(Options::new(url.expose(), node, Duration::from_secs(10)))?),
        None => Ok(Arc::new(
            SledStore::open(&args.data_dir)
                .map_err(|source| Error::Busy { dir: args.data_dir.display().to_string(), source })?,
        )),
    }
}

/// Runs the migrations and answers the schema version.
pub fn migrate(args: &MigrateArgs) -> Result<String, Error> {
    let store = PostgresStore::connect(Options::new(args.database_url.expose(), "migrate", Duration::from_secs(10)))?;
    store.close()?;
    Ok(format!("migrated to schema version {}", crate::store::postgres::migrations::MIGRATIONS.len()))
}

/// Writes the dump; answers the number of rows.
pub fn export(args: &ExportArgs) -> Result<u64, Error> {
    let store = open(&args.store, "export")?;
    let rows = if args.to == "-" {
        let stdout = std::io::stdout();
        let mut out = BufWriter::new(stdout.lock());
        dump::export(&*store, &mut out)?
    } else {
        let file = std::fs::File::create(&args.to).map_err(|source| Error::File { path: args.to.clone(), source })?;
        let mut out = BufWriter::new(file);
        let rows = dump::export(&*store, &mut out)?;
        out.flush().map_err(|source| Error::File { path: args.to.clone(), source })?;
        out.get_ref().sync_all().map_err(|source| Error::File { path: args.to.clone(), source })?;
        rows
    };
    store.close()?;
    Ok(rows)
}

/// Reads a dump into an empty store; answers the number of rows.
pub fn import(args: &ImportArgs) -> Result<u64, Error> {
    let store = open(&args.store, "import")?;
    let rows = if args.from == "-" {
        let stdin = std::io::stdin();
        dump::import(&*store, &mut stdin.lock(), 1_000)?
    } else {
        let file = std::fs::File::open(&args.from).map_err(|source| Error::File { path: args.from.clone(), source })?;
        dump::import(&*store, &mut BufReader::new(file), 1_000)?
    };
    store.close()?;
    Ok(rows)
}
