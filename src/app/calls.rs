//! The external calls that workflows name (`[calls.*]` in `workflows/`), performed by the Market client.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde_json::Value;

use super::call_errors::call_error;
use crate::aliyun::client::MarketClient;
use crate::domain::pricing::Catalog;
use crate::domain::protocol::{DescribeInstance, InstanceDescribed, MeterWindow};
use crate::engine::records::Records;
use crate::engine::{CallError, CallHandler, Registry};

/// Performs the marketplace calls of the workflows.
pub struct MarketCalls {
    /// Signs and sends Market OpenAPI requests; its endpoint is the marketplace or the simulator.
    client: Arc<MarketClient>,
    /// Where usage records are read when a window is metered (a read-only query, kept out of the decisions).
    records: Records,
    /// Prices of CU types.
    catalog: Arc<Catalog>,
    /// Gathers the windows' pushes into batches (`app::pushes`).
    pusher: super::pushes::Pusher,
}

impl MarketCalls {
    pub fn new(
        client: MarketClient,
        records: Records,
        catalog: Arc<Catalog>,
        clock: Arc<dyn crate::clock::Clock>,
        push: super::pushes::PushConfig,
    ) -> Self {
        let client = Arc::new(client);
        let pusher = super::pushes::Pusher::new(client.clone(), clock, records.clone(), push);
        Self { client, records, catalog, pusher }
    }

    /// Registers a handler for every call this type performs.
    pub fn register(self, registry: &mut Registry) {
        let me = Arc::new(self);
        registry.add_handler("describe_instance", me.clone());
        registry.add_handler("meter_window", me.clone());
        registry.add_handler("push_metering_data", me);
    }
}

/// A call's request as the workflow built it; one that does not decode is a permanent failure (retrying cannot
/// mend it), and the operator sees why.
fn typed<T: serde::de::DeserializeOwned>(request: Value) -> Result<T, CallError> {
    serde_json::from_value(request).map_err(|e| CallError::permanent(format!("the request does not decode: {e}")))
}

impl CallHandler for MarketCalls {
    fn call(&self, call: &str, request: Value) -> BoxFuture<'static, Result<Value, CallError>> {
        let client = self.client.clone();
        let call = call.to_string();
        let records = self.records.clone();
        let catalog = self.catalog.clone();
        let pusher = self.pusher.clone();
        Box::pin(async move {
            let answer = |v: Result<Value, serde_json::Error>| v.map_err(|e| CallError::permanent(e.to_string()));
            match call.as_str() {
                "describe_instance" => {
                    let req: DescribeInstance = typed(request)?;
                    let r = client.describe_instance(&req.instance_id).await.map_err(call_error)?;
                    answer(serde_json::to_value(InstanceDescribed {
                        status: r.status.map(String::from),
                        request_id: r.request_id,
                    }))
                }
                "meter_window" => {
                    let window: MeterWindow = typed(request)?;
                    let (org, from, end) = (window.org_id.clone(), crate::app::usage::read_from(&window), window.end);
                    let records = crate::engine::offload(async move {
                        crate::app::usage::overlapping(&records, &org, from, end).await
                    })
                    .await
                    .map_err(|e| CallError::retryable(e.to_string()))?
                    .map_err(CallError::retryable)?;
                    answer(serde_json::to_value(crate::app::usage::meter(&catalog, &records, &window)))
                }
                "push_metering_data" => pusher.send(None, request, std::time::Duration::from_secs(20)).await,
                other => Err(CallError::permanent(format!("no such call `{other}`"))),
            }
        })
    }

    /// Pushes wait for a seat in a batch (`app::pushes`); other calls go at once.
    fn admit(&self, call: &str, request: &Value) -> BoxFuture<'static, Option<crate::engine::Ticket>> {
        match call {
            "push_metering_data" => self.pusher.admit(request),
            _ => Box::pin(std::future::ready(None)),
        }
    }

    fn call_admitted(
        &self,
        ticket: crate::engine::Ticket,
        call: &str,
        request: Value,
        timeout: std::time::Duration,
    ) -> BoxFuture<'static, Result<Value, CallError>> {
        match call {
            "push_metering_data" => self.pusher.send(Some(ticket), request, timeout),
            _ => {
                let call = self.call(call, request);
                Box::pin(async move {
                    tokio::time::timeout(timeout, call)
                        .await
                        .unwrap_or_else(|_| Err(CallError::unknown(format!("timed out after {timeout:?}"))))
                })
            }
        }
    }
}
