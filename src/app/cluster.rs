//! The cluster as operators see it: nodes, heartbeats, shards, epochs and leases (PostgreSQL), or the one node
//! that holds every shard (sled).

use std::sync::Arc;

use super::{App, AppError};
use crate::cluster::{Cluster, ClusterView};

/// When this process started (for a node alone, whose start is its only "heartbeat" of note).
fn started() -> chrono::DateTime<chrono::Utc> {
    static AT: std::sync::OnceLock<chrono::DateTime<chrono::Utc>> = std::sync::OnceLock::new();
    *AT.get_or_init(chrono::Utc::now)
}

impl App {
    /// Where every shard is held, and by whom.
    pub async fn cluster_view(
        &self,
        cluster: Option<&Arc<Cluster>>,
        node: &str,
        url: &str,
    ) -> Result<ClusterView, AppError> {
        match cluster {
            Some(c) => c.view().await.map_err(AppError::storage),
            None => Ok(ClusterView::alone(node, url, chrono::Utc::now(), started())),
        }
    }
}
