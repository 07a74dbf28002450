//! The external calls that workflows name (`[calls.*]` in `workflows/`), performed by the Market client.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde_json::{json, Value};

use crate::aliyun::client::{Error as ClientError, MarketClient};
use crate::aliyun::market::{LongIdString, MeteringEntity, MeteringRecord};
use crate::domain::ids::OrgId;
use crate::domain::pricing::Catalog;
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
}

fn call_error(e: ClientError) -> CallError {
    let message = match (e.code(), e.request_id()) {
        (Some(code), Some(rid)) => format!("{code}: {e} (RequestId {rid})"),
        (Some(code), None) => format!("{code}: {e}"),
        _ => e.to_string(),
    };
    if e.outcome_unknown() {
        CallError::unknown(message)
    } else if e.is_retryable() {
        CallError::retryable(message)
    } else {
        CallError::permanent(message)
    }
}

impl MarketCalls {
    pub fn new(client: MarketClient, records: Records, catalog: Arc<Catalog>) -> Self {
        Self { client: Arc::new(client), records, catalog }
    }

    /// Registers a handler for every call this type performs.
    pub fn register(self, registry: &mut Registry) {
        let me = Arc::new(self);
        registry.add_handler("describe_instance", me.clone());
        registry.add_handler("meter_window", me.clone());
        registry.add_handler("push_metering_data", me);
    }
}

impl CallHandler for MarketCalls {
    fn call(&self, call: &str, request: Value) -> BoxFuture<'static, Result<Value, CallError>> {
        let client = self.client.clone();
        let call = call.to_string();
        let records = self.records.clone();
        let catalog = self.catalog.clone();
        Box::pin(async move {
            match call.as_str() {
                "describe_instance" => {
                    let id = request
                        .get("instance_id")
                        .and_then(|v| v.as_str())
                        .ok_or_else(|| CallError::permanent("describe_instance needs instance_id"))?;
                    let r = client.describe_instance(id).await.map_err(call_error)?;
                    Ok(json!({
                        "status": r.status.map(String::from),
                        "request_id": r.request_id,
                    }))
                }
                "meter_window" => {
                    let parse = |k: &str| {
                        request.get(k).cloned().ok_or_else(|| CallError::permanent(format!("meter_window needs {k}")))
                    };
                    let org: OrgId =
                        serde_json::from_value(parse("org_id")?).map_err(|e| CallError::permanent(e.to_string()))?;
                    let start: chrono::DateTime<chrono::Utc> =
                        serde_json::from_value(parse("start")?).map_err(|e| CallError::permanent(e.to_string()))?;
                    let end: chrono::DateTime<chrono::Utc> =
                        serde_json::from_value(parse("end")?).map_err(|e| CallError::permanent(e.to_string()))?;
                    let records =
                        tokio::task::spawn_blocking(move || crate::usage::overlapping(&records, &org, start, end))
                            .await
                            .map_err(|e| CallError::retryable(e.to_string()))?
                            .map_err(CallError::retryable)?;
                    let items: Vec<Value> = crate::usage::window_numerators(&catalog, &records, start, end)
                        .into_iter()
                        .map(|((key, assit), n)| json!({ "key": key, "assit": assit, "numerator": n.to_string() }))
                        .collect();
                    Ok(json!({ "start": start, "end": end, "items": items, "records": records.len() }))
                }
                "push_metering_data" => {
                    let get_i64 = |k: &str| {
                        request
                            .get(k)
                            .and_then(|v| v.as_i64())
                            .ok_or_else(|| CallError::permanent(format!("push needs {k}")))
                    };
                    let instance = request
                        .get("instance_id")
                        .and_then(|v| v.as_str())
                        .ok_or_else(|| CallError::permanent("push needs instance_id"))?
                        .to_string();
                    let entities = request
                        .get("entities")
                        .and_then(|v| v.as_array())
                        .map(|list| {
                            list.iter()
                                .map(|e| MeteringEntity {
                                    key: e.get("key").and_then(|v| v.as_str()).unwrap_or_default().to_string(),
                                    value: e.get("value").and_then(|v| v.as_u64()).unwrap_or(0),
                                    metering_assist: e.get("assit").and_then(|v| v.as_str()).map(String::from),
                                })
                                .collect::<Vec<_>>()
                        })
                        .unwrap_or_default();
                    let record = MeteringRecord {
                        instance_id: LongIdString(instance),
                        start_time: get_i64("start")?,
                        end_time: get_i64("end")?,
                        entities,
                        serial_no: None,
                    };
                    let r = client.push_metering_data(&[record]).await.map_err(call_error)?;
                    Ok(json!({
                        "request_id": r.request_id,
                        "window_start": request.get("window_start").cloned().unwrap_or(Value::Null),
                    }))
                }
                other => Err(CallError::permanent(format!("no such call `{other}`"))),
            }
        })
    }
}
