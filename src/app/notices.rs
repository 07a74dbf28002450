//! The marketplace's notices (SPI calls), once their token and parameters were checked at the edge: each is one
//! input to its subscription's workflow, with an input id that makes a repeat harmless (createInstance and orderPay
//! by their own keys; the other actions are absorbed by the state they find). createInstance answers with the
//! instance id and the 免登 address, the same for every repetition.

use super::App;
use crate::aliyun::spi::{beijing_to_utc, SpiRequest};
use crate::domain::protocol::CreateInstanceReply;
use crate::domain::subscription::{Subscription, SubscriptionEvent, KIND};
use crate::engine::{Cause, EntityKey, Input, Status};

/// Why a notice was not taken. Nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum NoticeError {
    /// The notice names no valid instance, or is not one the subscription takes (`verify` is 免登's).
    #[error("{code}: {message}")]
    Invalid { code: &'static str, message: String },
    /// The engine could not take it now (the marketplace calls again) or refused it.
    #[error(transparent)]
    Engine(#[from] crate::engine::Error),
}

fn invalid(code: &'static str, message: impl Into<String>) -> NoticeError {
    NoticeError::Invalid { code, message: message.into() }
}

impl App {
    /// Takes one notice; `public_url` is where the 免登 links of createInstance's answer point. Answers
    /// createInstance's reply for a createInstance, `None` for every other action.
    pub async fn take_notice(
        &self,
        request: SpiRequest,
        public_url: &str,
    ) -> Result<Option<CreateInstanceReply>, NoticeError> {
        let action = request.action();
        let instance = instance_of(&request).ok_or_else(|| invalid("invalid_parameter", "no instance id"))?;
        let key = EntityKey::new(KIND, &instance).map_err(|e| invalid("invalid_parameter", e.to_string()))?;
        let public = public_url.trim_end_matches('/');
        let (input_id, event) = match request {
            SpiRequest::CreateInstance {
                ali_uid,
                order_biz_id,
                order_id,
                product_code,
                sku_id,
                trial,
                expired_on,
                extra,
            } => (
                "spi:createInstance".to_string(),
                SubscriptionEvent::Create {
                    ali_uid,
                    order_biz_id,
                    order_id,
                    product_code,
                    sku_id,
                    trial,
                    expired_on: expired_on.map(beijing_to_utc),
                    extra,
                    auth_url: format!("{public}/aliyun/sso"),
                    front_end_url: public.to_string(),
                },
            ),
            SpiRequest::OrderPay { request_id, order_id, .. } => {
                (format!("spi:orderPay:{request_id}"), SubscriptionEvent::OrderPaid { request_id, order_id })
            }
            SpiRequest::ExpiredInstance { .. } => (fresh("expiredInstance"), SubscriptionEvent::Expire),
            SpiRequest::ResumeInstance { sku_id, .. } => {
                (fresh("resumeInstance"), SubscriptionEvent::Resume { sku_id })
            }
            SpiRequest::ReleaseInstance { is_refund, order_id, .. } => {
                (fresh("releaseInstance"), SubscriptionEvent::Release { is_refund, order_id })
            }
            SpiRequest::RenewInstance { order_id, expired_on, .. } => (
                format!("spi:renewInstance:{order_id}"),
                SubscriptionEvent::Renew { order_id, expired_on: beijing_to_utc(expired_on) },
            ),
            SpiRequest::UpgradeInstance { sku_id, order_id, extra, .. } => {
                (fresh("upgradeInstance"), SubscriptionEvent::Upgrade { sku_id, order_id, extra })
            }
            SpiRequest::Verify { .. } => return Err(invalid("invalid_action", "verify is 免登")),
        };
        let body = serde_json::to_value(&event).map_err(|e| crate::engine::Error::Internal(e.to_string()))?;
        let input = Input::domain(input_id, body, Cause::Spi { action: action.to_string() });
        let outcome = self.engine.send(key.clone(), input).await?;
        if outcome.status == Status::Ignored && outcome.state == crate::domain::subscription::State::New.as_str() {
            tracing::info!(action, instance = %instance, "SPI call for an unknown instance: nothing to do");
        }
        if action != "createInstance" {
            return Ok(None);
        }
        if outcome.repeated {
            tracing::info!(instance = %instance, "createInstance repeated: same answer");
        }
        let reply = if outcome.reply.is_null() {
            // Known already under another input (cannot happen with one input id per instance).
            let record = self.engine.record(&key).await?.ok_or(crate::engine::Error::NotFound)?;
            let sub: Subscription = serde_json::from_value(record.data)
                .map_err(|e| crate::engine::Error::Internal(format!("subscription data: {e}")))?;
            sub.create_reply.ok_or_else(|| crate::engine::Error::Internal("no stored answer".into()))?
        } else {
            // Through the described type, so that the answer cannot drift from the description.
            serde_json::from_value(outcome.reply)
                .map_err(|e| crate::engine::Error::Internal(format!("createInstance's answer: {e}")))?
        };
        Ok(Some(reply))
    }
}

fn fresh(action: &str) -> String {
    format!("spi:{action}:{}", uuid::Uuid::new_v4())
}

fn instance_of(r: &SpiRequest) -> Option<String> {
    match r {
        SpiRequest::CreateInstance { order_biz_id, .. } | SpiRequest::OrderPay { order_biz_id, .. } => {
            Some(order_biz_id.to_string())
        }
        other => other.instance_id().map(|i| i.to_string()),
    }
}
