//! The external calls that workflows name (`[calls.*]` in `workflows/`), performed by the Market client.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde_json::{json, Value};

use crate::aliyun::client::{Error as ClientError, MarketClient};
use crate::engine::{CallError, CallHandler, Registry};

/// Performs the marketplace calls of the workflows.
pub struct MarketCalls {
    /// Signs and sends Market OpenAPI requests; its endpoint is the marketplace or the simulator.
    client: Arc<MarketClient>,
}

fn call_error(e: ClientError) -> CallError {
    let message = match (e.code(), e.request_id()) {
        (Some(code), Some(rid)) => format!("{code}: {e} (RequestId {rid})"),
        (Some(code), None) => format!("{code}: {e}"),
        _ => e.to_string(),
    };
    if e.is_retryable() {
        CallError::retryable(message)
    } else {
        CallError::permanent(message)
    }
}

impl MarketCalls {
    pub fn new(client: MarketClient) -> Self {
        Self { client: Arc::new(client) }
    }

    /// Registers a handler for every call this type performs.
    pub fn register(self, registry: &mut Registry) {
        let me = Arc::new(self);
        registry.add_handler("describe_instance", me);
    }
}

impl CallHandler for MarketCalls {
    fn call(&self, call: &str, request: Value) -> BoxFuture<'static, Result<Value, CallError>> {
        let client = self.client.clone();
        let call = call.to_string();
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
                other => Err(CallError::permanent(format!("no such call `{other}`"))),
            }
        })
    }
}
