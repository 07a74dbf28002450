//! The schema, as numbered migrations run at start-up (and by `marketflow migrate`) under an advisory lock.
//!
//! Additive only: a migration adds tables, columns with defaults and indexes, never drops or renames what a
//! running build reads, so that two adjacent builds can run side by side during a rolling upgrade (the newer one
//! migrates, the older one keeps working on the tables it knows). A database migrated by a newer build than this
//! one is therefore accepted, with a warning. README.md ("Several nodes on PostgreSQL") describes the procedure.
//!
//! Tables (every one prefixed `mf_`):
//! - one per store table (`mf_entities`, `mf_journal`, `mf_timers`, `mf_timer_index`, `mf_idempotency`,
//!   `mf_outbox`, `mf_effects`, `mf_meta`, `mf_records`, `mf_index`): `key bytea PRIMARY KEY` (sled's key bytes),
//!   `shard int2` (the entity's shard, -1 for rows of no entity), `value bytea`; the work tables a node scans by
//!   shard (timers, outbox, calls) are indexed `(shard, key)`.
//! - `mf_shards(shard, owner, epoch, lease_until)`: one row per shard, the lease (on the database's clock) and the
//!   epoch every commit is fenced with; `mf_nodes(node, url, heartbeat, started_at, state)`: the nodes and their
//!   heartbeats; `mf_commit_log(id, node, at)`: one row per commit, to resolve a COMMIT whose answer was lost
//!   (kept minutes). These three are cluster state: `marketflow export` leaves them out.
//! - `mf_schema(version, description, applied_at)`: what ran.

use super::{pg, PostgresStore, TABLES};
use crate::store::Error;

/// A lock id of our own for `pg_advisory_lock` ("mflw").
const MIGRATION_LOCK: i64 = 0x6d66_6c77;

/// The migrations, in order; never edit one that was released, add the next.
pub const MIGRATIONS: &[(i32, &str)] = &[(1, "the store's tables, shards, nodes and the commit log")];

/// The SQL of migration `version`.
fn sql(version: i32) -> String {
    match version {
        1 => {
            let mut s = String::new();
            for (_, name) in TABLES {
                s.push_str(&format!(
                    "CREATE TABLE IF NOT EXISTS {name} (key bytea PRIMARY KEY, shard int2 NOT NULL, value bytea NOT NULL);\n"
                ));
            }
            for name in ["mf_timers", "mf_outbox", "mf_effects"] {
                s.push_str(&format!("CREATE INDEX IF NOT EXISTS {name}_shard_key ON {name} (shard, key);\n"));
            }
            // Rows updated in place on every transition or renewal: room for HOT updates, and vacuumed early.
            for name in ["mf_entities", "mf_meta"] {
                s.push_str(&format!(
                    "ALTER TABLE {name} SET (fillfactor = 80, autovacuum_vacuum_scale_factor = 0.02, \
                     autovacuum_analyze_scale_factor = 0.02);\n"
                ));
            }
            // Rows inserted and deleted within minutes: vacuumed early, so that scans do not wade through the dead.
            for name in ["mf_timers", "mf_outbox", "mf_effects", "mf_idempotency"] {
                s.push_str(&format!(
                    "ALTER TABLE {name} SET (autovacuum_vacuum_scale_factor = 0.02, \
                     autovacuum_analyze_scale_factor = 0.02);\n"
                ));
            }
            s.push_str(
                "CREATE TABLE IF NOT EXISTS mf_nodes (node text PRIMARY KEY, url text NOT NULL, \
                   heartbeat timestamptz NOT NULL, started_at timestamptz NOT NULL, state text NOT NULL) \
                   WITH (fillfactor = 50, autovacuum_vacuum_scale_factor = 0.0, autovacuum_vacuum_threshold = 100);\n\
                 CREATE TABLE IF NOT EXISTS mf_shards (shard int2 PRIMARY KEY, owner text, \
                   epoch bigint NOT NULL DEFAULT 0, lease_until timestamptz) \
                   WITH (fillfactor = 50, autovacuum_vacuum_scale_factor = 0.0, autovacuum_vacuum_threshold = 1000);\n\
                 INSERT INTO mf_shards (shard) SELECT s FROM generate_series(0, 255) AS s ON CONFLICT DO NOTHING;\n\
                 CREATE TABLE IF NOT EXISTS mf_commit_log (id bigint PRIMARY KEY, node text NOT NULL, \
                   at timestamptz NOT NULL DEFAULT now()) \
                   WITH (autovacuum_vacuum_scale_factor = 0.02);\n\
                 CREATE INDEX IF NOT EXISTS mf_commit_log_node_at ON mf_commit_log (node, at);\n",
            );
            s
        }
        _ => String::new(),
    }
}

/// Runs every migration the database has not seen, under the advisory lock (nodes starting together take turns;
/// the second finds them done). Returns the schema version afterwards.
pub async fn run(store: &PostgresStore) -> Result<i32, Error> {
    let client = PostgresStore::connect_one(store.config()).await?;
    client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK]).await.map_err(pg)?;
    let result = async {
        client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS mf_schema (version int PRIMARY KEY, description text NOT NULL, \
                 applied_at timestamptz NOT NULL DEFAULT now())",
            )
            .await
            .map_err(pg)?;
        let current: i32 =
            client.query_one("SELECT coalesce(max(version), 0) FROM mf_schema", &[]).await.map_err(pg)?.get(0);
        let known = MIGRATIONS.last().map(|(v, _)| *v).unwrap_or(0);
        if current > known {
            tracing::warn!(
                database = current,
                build = known,
                "the database was migrated by a newer build; this one runs on the tables it knows (a rolling upgrade)"
            );
        }
        for (version, description) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
            let sql = format!(
                "BEGIN;\n{}INSERT INTO mf_schema (version, description) VALUES ({version}, '{}');\nCOMMIT;",
                sql(*version),
                description.replace('\'', "''")
            );
            client.batch_execute(&sql).await.map_err(|e| {
                Error::Backend(format!("migration {version} ({description}) failed: {}", super::describe(&e)))
            })?;
            tracing::info!(version, description, "database migrated");
        }
        Ok(current.max(known))
    }
    .await;
    let _ = client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]).await;
    result
}
