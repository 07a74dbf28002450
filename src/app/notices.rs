//! The marketplace's notices (SPI calls), once their token and parameters were checked at the edge: each is one
//! input to its subscription's workflow, with an input id that makes a repeat harmless (createInstance and orderPay
//! by their own keys; the other actions are absorbed by the state they find). createInstance answers with the
//! instance id and the 免登 address, the same for every repetition.

use super::App;
use crate::aliyun::client::MarketClient;
use crate::aliyun::market::FailedNotification;
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
        self.take(request, public_url, None).await
    }

    /// Takes one notice the marketplace gave up delivering (DescribeFailedNotifications), as if it had arrived:
    /// under an input id of its notification's, so the same notice listed twice changes nothing the second time.
    /// A notice that overtook a later one (an old expire after a resume) is absorbed the way a late SPI call is:
    /// the subscription asks DescribeInstance after every expire and resume (`reconcile`).
    pub async fn take_failed_notice(&self, notice: &FailedNotification, public_url: &str) -> Result<(), NoticeError> {
        let params: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&notice.message)
            .map_err(|e| invalid("invalid_notice", format!("the notice's message is not a JSON object: {e}")))?;
        let mut pairs: Vec<(String, String)> = params
            .into_iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => (k, s),
                other => (k, other.to_string()),
            })
            .collect();
        if !pairs.iter().any(|(k, _)| k == "action") && !notice.action.is_empty() {
            pairs.push(("action".into(), notice.action.clone()));
        }
        let request = SpiRequest::parse(&pairs).map_err(|e| invalid(e.code(), e.to_string()))?;
        self.take(request, public_url, Some(&notice.notification_request_id)).await.map(|_| ())
    }

    async fn take(
        &self,
        request: SpiRequest,
        public_url: &str,
        notification: Option<&str>,
    ) -> Result<Option<CreateInstanceReply>, NoticeError> {
        let action = request.action();
        // SPI calls of these actions carry no id of their own; a failed notification does.
        let fresh = |action: &str| match notification {
            Some(id) => format!("spi:{action}:notice:{id}"),
            None => fresh(action),
        };
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

/// What one pass over the marketplace's failed notices did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NoticePass {
    /// Listed by DescribeFailedNotifications.
    pub listed: usize,
    /// Taken (or found taken already) and confirmed.
    pub confirmed: usize,
    /// Left for the next pass: refused as malformed, or not taken or confirmed now.
    pub left: usize,
}

/// Largest page asked of DescribeFailedNotifications, and the most pages read in one pass (the rest wait for the
/// next pass, so a backlog never turns into a burst).
const PAGE_SIZE: u32 = 50;
const MAX_PAGES: u32 = 20;

/// Reads the failed notices (page by page, a pause between pages), takes each as if it had arrived, and confirms
/// each one taken, so the marketplace stops listing it. A notice is confirmed only after its input was committed:
/// a crash in between lists it again, and taking it again changes nothing.
pub async fn poll_failed_notices(app: &App, client: &MarketClient, public_url: &str) -> NoticePass {
    let mut pass = NoticePass::default();
    let mut notices = Vec::new();
    for page in 1..=MAX_PAGES {
        match client.describe_failed_notifications(page, PAGE_SIZE).await {
            Ok(r) => {
                let last = r.notification_list.len() < PAGE_SIZE as usize
                    || (page as u64) * u64::from(PAGE_SIZE) >= r.total_count;
                notices.extend(r.notification_list);
                if last {
                    break;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, page, "DescribeFailedNotifications failed; the next pass asks again");
                break;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    pass.listed = notices.len();
    for notice in &notices {
        let id = &notice.notification_request_id;
        match app.take_failed_notice(notice, public_url).await {
            Ok(()) => match client.confirm_notification(id).await {
                Ok(_) => {
                    pass.confirmed += 1;
                    tracing::info!(notification = %id, action = %notice.action, "a notice the marketplace gave up on was taken");
                }
                Err(e) => {
                    pass.left += 1;
                    tracing::warn!(notification = %id, error = %e, "taken, but ConfirmNotification failed; listed again next pass");
                }
            },
            Err(NoticeError::Invalid { code, message }) => {
                pass.left += 1;
                tracing::error!(notification = %id, code, %message, "a failed notice cannot be taken; left unconfirmed for a person");
            }
            Err(NoticeError::Engine(e)) => {
                pass.left += 1;
                tracing::warn!(notification = %id, error = %e, "a failed notice could not be taken now; the next pass tries again");
            }
        }
    }
    pass
}

/// Polls every `interval` of service time while this node serves shard 0 (one node of a cluster polls; alone,
/// a node serves every shard). The first pass runs at start: notices given up while the service was down are
/// the ones most worth having. Before it, the live subscriptions of an earlier build get their periodic checks
/// ([`start_older_checks`]).
pub async fn run_notice_poller(app: App, client: MarketClient, public_url: String, interval: std::time::Duration) {
    let clock = app.engine.clock().clone();
    let mut older_checks_started = false;
    let interval = chrono::TimeDelta::from_std(interval).unwrap_or(chrono::TimeDelta::minutes(5));
    loop {
        if app.engine.stopping() {
            return;
        }
        if app.engine.ownership().serves(0) {
            if !older_checks_started {
                match start_older_checks(&app).await {
                    Ok(0) => older_checks_started = true,
                    Ok(n) => {
                        older_checks_started = true;
                        tracing::info!(
                            subscriptions = n,
                            "periodic checks started for subscriptions of an earlier build"
                        );
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "starting the periodic checks of older subscriptions failed; at the next pass")
                    }
                }
            }
            let pass = poll_failed_notices(&app, &client, &public_url).await;
            if pass.listed > 0 {
                tracing::info!(
                    listed = pass.listed,
                    confirmed = pass.confirmed,
                    left = pass.left,
                    "failed notices polled"
                );
            }
        }
        let next = clock.now() + interval;
        // Service time: on a manual clock only an advance gets there, so the clock is looked at often.
        while clock.now() < next {
            if app.engine.stopping() {
                return;
            }
            let wait = clock.real_until(next).unwrap_or(std::time::Duration::from_millis(100));
            tokio::time::sleep(wait.min(std::time::Duration::from_millis(500))).await;
        }
    }
}

/// Starts the periodic checks of the live subscriptions a build before them left without one: each gets the
/// input `start-checks` once (its id makes a second start-up's input a repeat). Run at start-up by the node
/// that serves shard 0; a page at a time, so a large store is walked without a burst of commits.
pub async fn start_older_checks(app: &App) -> Result<usize, crate::engine::Error> {
    use crate::domain::subscription::State;
    use crate::engine::inspect::EntityFilter;
    let mut started = 0;
    for state in [State::Active, State::Expired] {
        let filter =
            EntityFilter { kind: Some(KIND.into()), state: Some(state.as_str().into()), ..EntityFilter::default() };
        let mut cursor: Option<String> = None;
        loop {
            let page = app.engine.list_entities(&filter, cursor.as_deref(), 500).await?;
            for record in &page.items {
                if record.data.get("check_due").is_some_and(|d| !d.is_null()) {
                    continue;
                }
                let key =
                    EntityKey::new(KIND, &record.id).map_err(|e| crate::engine::Error::Internal(e.to_string()))?;
                let body = serde_json::to_value(SubscriptionEvent::StartChecks)
                    .map_err(|e| crate::engine::Error::Internal(e.to_string()))?;
                let input =
                    Input::domain("start-checks", body, Cause::System { detail: "periodic checks start".into() });
                match app.engine.send(key, input).await {
                    Ok(o) if o.status == Status::Accepted && !o.repeated => started += 1,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(instance = %record.id, error = %e, "could not start the periodic checks; at the next start")
                    }
                }
            }
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
    }
    Ok(started)
}
