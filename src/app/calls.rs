//! The external calls that workflows name (`[calls.*]` in `workflows/`), performed by the Market client.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde_json::Value;

use crate::aliyun::client::{Error as ClientError, MarketClient};
use crate::aliyun::market::{LongIdString, MeteringEntity, MeteringRecord};
use crate::domain::pricing::Catalog;
use crate::domain::protocol::{
    DescribeInstance, InstanceDescribed, MeterWindow, MeteredItem, MeteringPushed, PushMetering, WindowMetered,
};
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

/// Why Market API calls failed, by class, for `/metrics` (`marketflow_market_api_errors_total{class}`): a revoked
/// or wrong AccessKey fails every call with `auth`, which an alert must see before the windows' deadlines pass.
/// Per process, from its start (a counter).
pub const ERROR_CLASSES: &[&str] = &["auth", "throttled", "unavailable", "unknown_outcome", "refused"];

static ERRORS: [std::sync::atomic::AtomicU64; 5] = [const { std::sync::atomic::AtomicU64::new(0) }; 5];

/// The class of a failed call (one of [`ERROR_CLASSES`]).
fn class(e: &ClientError) -> &'static str {
    let code = e.code().unwrap_or("");
    if code.starts_with("InvalidAccessKeyId")
        || code.starts_with("SignatureDoesNotMatch")
        || code.starts_with("IncompleteSignature")
        || code.starts_with("InvalidTimeStamp")
        || code.starts_with("Forbidden")
    {
        "auth"
    } else if code.starts_with("Throttling") {
        "throttled"
    } else if e.outcome_unknown() {
        "unknown_outcome"
    } else if e.is_retryable() {
        "unavailable"
    } else {
        "refused"
    }
}

/// Failed Market API calls by class since the process started, in [`ERROR_CLASSES`]' order.
pub fn errors_by_class() -> Vec<(&'static str, u64)> {
    ERROR_CLASSES.iter().zip(&ERRORS).map(|(c, n)| (*c, n.load(std::sync::atomic::Ordering::Relaxed))).collect()
}

fn call_error(e: ClientError) -> CallError {
    let class = class(&e);
    if let Some(i) = ERROR_CLASSES.iter().position(|c| *c == class) {
        ERRORS[i].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
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
                    let MeterWindow { org_id: org, start, end } = typed(request)?;
                    let records = crate::engine::offload(async move {
                        crate::app::usage::overlapping(&records, &org, start, end).await
                    })
                    .await
                    .map_err(|e| CallError::retryable(e.to_string()))?
                    .map_err(CallError::retryable)?;
                    let items = crate::app::usage::window_numerators(&catalog, &records, start, end)
                        .into_iter()
                        .map(|((key, assit), n)| MeteredItem { key, assit, numerator: n.to_string(), nanos: true })
                        .collect();
                    answer(serde_json::to_value(WindowMetered { start, end, items, records: records.len() as u64 }))
                }
                "push_metering_data" => {
                    let push: PushMetering = typed(request)?;
                    let record = MeteringRecord {
                        instance_id: LongIdString(push.instance_id),
                        start_time: push.start,
                        end_time: push.end,
                        entities: push
                            .entities
                            .into_iter()
                            .map(|e| MeteringEntity { key: e.key, value: e.value, metering_assist: Some(e.assit) })
                            .collect(),
                        serial_no: None,
                    };
                    let r = client.push_metering_data(&[record]).await.map_err(call_error)?;
                    answer(serde_json::to_value(MeteringPushed {
                        request_id: Some(r.request_id),
                        window_start: Some(push.window_start),
                    }))
                }
                other => Err(CallError::permanent(format!("no such call `{other}`"))),
            }
        })
    }
}
