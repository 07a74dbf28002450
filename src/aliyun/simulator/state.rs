//! The simulated marketplace's memory: instances and their timelines, accepted metering, failed
//! notifications, seen nonces, fault settings. Everything here is synchronous and takes `now` as
//! an argument, so the rules (metering limits, state changes) are unit-tested without a server.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use chrono::{DateTime, TimeDelta, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::aliyun::auth::MAX_CLOCK_SKEW;
use crate::aliyun::market::{InstanceStatus, MeteringError, MeteringRules, PushMeteringDataRequest, METERING_KEYS};

/// Most instances kept; a simulator for development and tests never needs more.
pub(crate) const MAX_INSTANCES: usize = 100_000;
/// Most accepted metering records kept. Past it, pushes are refused (503) rather than records
/// silently forgotten: the log is what tests check billing against.
pub(crate) const MAX_METERING_RECORDS: usize = 1_000_000;
/// Most nonces remembered; the oldest are forgotten first (they are older than the 15-minute
/// timestamp window long before this fills up at any realistic rate).
pub(crate) const MAX_NONCES: usize = 200_000;
/// Most timeline entries per instance (createInstance retries alone can add 120).
pub(crate) const MAX_TIMELINE: usize = 1_000;
/// Most SPI calls queued for one instance.
pub(crate) const MAX_PENDING_SPI: u32 = 32;
/// At most one accepted PushMeteringData per instance per this much service time.
pub(crate) const PUSH_INTERVAL: TimeDelta = TimeDelta::seconds(60);

/// An Aliyun-style error answer: HTTP status, `Code`, `Message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    pub status: u16,
    pub code: String,
    pub message: String,
    /// Service time until the call may succeed (throttling); sent as `x-acs-retry-after`.
    pub retry_after: Option<TimeDelta>,
}

impl Failure {
    pub fn new(status: u16, code: &str, message: impl Into<String>) -> Self {
        Self { status, code: code.to_string(), message: message.into(), retry_after: None }
    }
}

/// An instance's business status, as DescribeInstance reports it for APP/SaaS products.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    Opening,
    Opened,
    Expired,
    Closed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Opening => "OPENING",
            Self::Opened => "OPENED",
            Self::Expired => "EXPIRED",
            Self::Closed => "CLOSED",
        }
    }

    pub fn to_market(self) -> InstanceStatus {
        match self {
            Self::Opening => InstanceStatus::Opening,
            Self::Opened => InstanceStatus::Opened,
            Self::Expired => InstanceStatus::Expired,
            Self::Closed => InstanceStatus::Closed,
        }
    }
}

/// One line of an instance's history.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TimelineEntry {
    /// Service time (the simulator's clock).
    pub at: DateTime<Utc>,
    /// Machine-readable: `opened`, `activated`, `closed`, `expired`, `resumed`,
    /// `spi.<action>.ok`, `spi.<action>.failed`, `spi.<action>.gave_up`, `spi.<action>.duplicate`, …
    pub event: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// A purchased instance. `order_biz_id` is its marketplace identity (and, by the SPI doc's
/// recommendation, the instanceId the service answers).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Instance {
    /// 云市场业务ID; also the instance's ID in the simulator's API.
    pub instance_id: String,
    pub order_biz_id: String,
    pub order_id: String,
    pub ali_uid: String,
    pub sku_id: String,
    pub product_code: String,
    pub status: Status,
    pub created_at: DateTime<Utc>,
    /// When it becomes OPENED (once createInstance has succeeded).
    pub activation_due: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub opened_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expired_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub closed_at: Option<DateTime<Utc>>,
    /// The instanceId the service answered to createInstance; later SPI calls carry it.
    pub service_instance_id: Option<String>,
    /// `appInfo.authUrl` from createInstance: the base of the 免登 link.
    pub auth_url: Option<String>,
    /// createInstance's `appInfo` as JSON text (DescribeInstance `AppJson`).
    #[serde(skip)]
    pub app_json: Option<String>,
    /// createInstance's `info` as JSON text (DescribeInstance `ExtendJson`).
    #[serde(skip)]
    pub extend_json: Option<String>,
    /// createInstance never got a usable answer; the order was given up.
    pub create_failed: bool,
    /// Send orderPay when the instance opens.
    pub order_pay: bool,
    /// SPI calls queued or in flight.
    pub pending_spi: u32,
    pub timeline: Vec<TimelineEntry>,
}

impl Instance {
    pub fn log(&mut self, at: DateTime<Utc>, event: impl Into<String>, detail: Option<String>) {
        if self.timeline.len() >= MAX_TIMELINE {
            self.timeline.remove(0);
        }
        self.timeline.push(TimelineEntry { at, event: event.into(), detail });
    }

    /// The ID later SPI calls carry: the service's answer, or the orderBizId before it answered.
    pub fn spi_instance_id(&self) -> &str {
        self.service_instance_id.as_deref().unwrap_or(&self.order_biz_id)
    }
}

/// One accepted metering record, as tests read it back.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MeteringLogEntry {
    /// The RequestId of the PushMeteringData call that carried it.
    pub request_id: String,
    /// Service time of acceptance.
    pub received_at: DateTime<Utc>,
    /// `InstanceId` as sent.
    pub instance_id: String,
    /// The instance it resolved to.
    pub order_biz_id: String,
    pub start_time: i64,
    pub end_time: i64,
    pub entities: Vec<MeteringValue>,
    /// An earlier accepted record of the same instance overlaps this window: the marketplace would
    /// bill it twice. Accepted anyway (the real API has no documented dedup), flagged for tests.
    pub duplicate: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MeteringValue {
    pub key: String,
    pub value: u64,
    pub metering_assit: Option<String>,
}

/// A notice the service did not acknowledge (or that was given up on), for DescribeFailedNotifications.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Notification {
    pub id: String,
    pub action: String,
    pub created_at: DateTime<Utc>,
    /// The notice's parameters (without the token) as JSON text.
    pub message: String,
    pub confirmed: bool,
}

/// Fault injection, set through `POST /sim/faults`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    /// Share of Market API calls answered `503 ServiceUnavailable` (0–1).
    #[serde(default)]
    pub openapi_error_rate: f64,
    /// Every Market API answer is delayed this long (real milliseconds).
    #[serde(default)]
    pub openapi_slow_ms: u64,
    /// Share of SPI calls delivered twice (0–1).
    #[serde(default)]
    pub spi_duplicate_rate: f64,
    /// SPI calls leave their instance's queue and go out after a random delay, so calls made close
    /// together may arrive in any order.
    #[serde(default)]
    pub spi_reorder: bool,
    /// Share of notices (every action but createInstance) the marketplace gives up on without delivering them:
    /// they wait in DescribeFailedNotifications, as a notice does once its retries are spent (0–1).
    #[serde(default)]
    pub spi_give_up_rate: f64,
    /// Share of notices (every action but createInstance) lost outright: never delivered, never listed; only a
    /// DescribeInstance shows what happened (0–1).
    #[serde(default)]
    pub spi_drop_rate: f64,
    /// Seeds the fault decisions, so a run can be repeated.
    #[serde(default)]
    pub seed: Option<u64>,
}

/// How many faults were injected since start, so that a run (the chaos test) can report what it went through.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Injected {
    /// Market API calls answered `503 ServiceUnavailable`.
    pub openapi_errors: u64,
    /// Market API answers delayed by `openapi_slow_ms`.
    pub openapi_slow: u64,
    /// SPI calls delivered a second time.
    pub spi_duplicates: u64,
    /// SPI calls sent out of their instance's queue after a random delay.
    pub spi_reordered: u64,
    /// Notices given up on at once (listed by DescribeFailedNotifications, never delivered).
    pub spi_given_up: u64,
    /// Notices lost outright.
    pub spi_dropped: u64,
}

/// Longest injected Market API delay (a typo should not hang a test for hours).
pub(crate) const MAX_SLOW_MS: u64 = 120_000;

impl Faults {
    pub fn validate(&self) -> Result<(), String> {
        let rate = |name: &str, v: f64| {
            if v.is_finite() && (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(format!("{name} must be between 0 and 1, got {v}"))
            }
        };
        rate("openapi_error_rate", self.openapi_error_rate)?;
        rate("spi_duplicate_rate", self.spi_duplicate_rate)?;
        rate("spi_give_up_rate", self.spi_give_up_rate)?;
        rate("spi_drop_rate", self.spi_drop_rate)?;
        if self.openapi_slow_ms > MAX_SLOW_MS {
            return Err(format!("openapi_slow_ms must be at most {MAX_SLOW_MS}, got {}", self.openapi_slow_ms));
        }
        Ok(())
    }
}

/// Nonces seen within the signature window, for `SignatureNonceUsed`.
#[derive(Debug, Default)]
pub(crate) struct NonceCache {
    seen: HashSet<String>,
    order: VecDeque<(DateTime<Utc>, String)>,
}

impl NonceCache {
    /// Records `nonce`; false if it was seen before. A nonce older than twice the timestamp
    /// window is forgotten: a request carrying it again is refused for its timestamp anyway.
    pub fn insert(&mut self, nonce: &str, now: DateTime<Utc>) -> bool {
        let horizon = now - MAX_CLOCK_SKEW * 2;
        while let Some((t, _)) = self.order.front() {
            if *t >= horizon && self.order.len() < MAX_NONCES {
                break;
            }
            if let Some((_, old)) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        if !self.seen.insert(nonce.to_string()) {
            return false;
        }
        self.order.push_back((now, nonce.to_string()));
        true
    }
}

/// Everything the simulator remembers, behind one mutex (never held across an await).
pub(crate) struct State {
    /// By orderBizId.
    pub instances: BTreeMap<String, Instance>,
    /// The service's instanceId → orderBizId, for lookups by either.
    pub aliases: HashMap<String, String>,
    pub metering: Vec<MeteringLogEntry>,
    /// The windows of `metering` by instance (orderBizId → (start, end)): a push is checked against its own
    /// instance's windows, not the whole log (100,000 instances push their hour at once in the burst benchmark).
    pub metered: HashMap<String, Vec<(i64, i64)>>,
    /// Service time of the last accepted push per instance (orderBizId).
    pub last_push: HashMap<String, DateTime<Utc>>,
    pub nonces: NonceCache,
    pub notifications: Vec<Notification>,
    /// Instances waiting to become OPENED, by due time (service clock) and orderBizId.
    pub activations: BTreeSet<(DateTime<Utc>, String)>,
    pub faults: Faults,
    pub injected: Injected,
    /// IDs and activation delays.
    pub rng: StdRng,
    /// Fault decisions; reseeded by `Faults::seed`.
    pub fault_rng: StdRng,
}

/// What `serve --dev` keeps of the marketplace in its data directory, so that a newcomer's instances are still
/// there after a restart: instances, their aliases, accepted metering, and failed notices. Not kept: fault
/// settings, seen nonces (a signature's timestamp window outlives no restart that matters) and SPI calls in flight
/// (the service's polls and periodic checks ask DescribeInstance anyway).
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Saved {
    pub instances: BTreeMap<String, Instance>,
    pub aliases: HashMap<String, String>,
    pub metering: Vec<MeteringLogEntry>,
    pub last_push: HashMap<String, DateTime<Utc>>,
    pub notifications: Vec<Notification>,
    pub activations: BTreeSet<(DateTime<Utc>, String)>,
}

impl State {
    /// A copy of what is kept across restarts.
    pub fn saved(&self) -> Saved {
        Saved {
            instances: self.instances.clone(),
            aliases: self.aliases.clone(),
            metering: self.metering.clone(),
            last_push: self.last_push.clone(),
            notifications: self.notifications.clone(),
            activations: self.activations.clone(),
        }
    }

    /// Takes back what an earlier run kept; the calls it had in flight are gone with it.
    pub fn restore(&mut self, saved: Saved) {
        self.instances = saved.instances;
        for i in self.instances.values_mut() {
            i.pending_spi = 0;
        }
        self.aliases = saved.aliases;
        self.metering = saved.metering;
        self.metered = HashMap::new();
        for m in &self.metering {
            self.metered.entry(m.order_biz_id.clone()).or_default().push((m.start_time, m.end_time));
        }
        self.last_push = saved.last_push;
        self.notifications = saved.notifications;
        self.activations = saved.activations;
    }

    pub fn new(seed: Option<u64>) -> Self {
        let rng = match seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_entropy(),
        };
        let fault_rng = match seed {
            Some(s) => StdRng::seed_from_u64(s ^ 0x5EED_FA17),
            None => StdRng::from_entropy(),
        };
        Self {
            instances: BTreeMap::new(),
            aliases: HashMap::new(),
            metering: Vec::new(),
            metered: HashMap::new(),
            last_push: HashMap::new(),
            nonces: NonceCache::default(),
            notifications: Vec::new(),
            activations: BTreeSet::new(),
            faults: Faults::default(),
            injected: Injected::default(),
            rng,
            fault_rng,
        }
    }

    /// The orderBizId of the instance known by `id` (its orderBizId or the service's instanceId).
    /// Instances opened before the marketplace starts (see `SimulatorConfig::opened`): known, OPENED, their
    /// createInstance long answered.
    pub fn open_at_start(&mut self, opened: &[(String, String)], product_code: &str, now: DateTime<Utc>) {
        for (id, ali_uid) in opened {
            self.instances.insert(
                id.clone(),
                Instance {
                    instance_id: id.clone(),
                    order_biz_id: id.clone(),
                    order_id: format!("o-{id}"),
                    ali_uid: ali_uid.clone(),
                    sku_id: "pay-as-you-go".into(),
                    product_code: product_code.to_string(),
                    status: Status::Opened,
                    created_at: now,
                    activation_due: now,
                    opened_at: Some(now),
                    expired_at: None,
                    closed_at: None,
                    service_instance_id: Some(id.clone()),
                    auth_url: None,
                    app_json: None,
                    extend_json: None,
                    create_failed: false,
                    order_pay: false,
                    pending_spi: 0,
                    timeline: Vec::new(),
                },
            );
        }
    }

    pub fn resolve(&self, id: &str) -> Option<String> {
        if self.instances.contains_key(id) {
            return Some(id.to_string());
        }
        self.aliases.get(id).cloned()
    }

    pub fn instance(&self, id: &str) -> Option<&Instance> {
        self.resolve(id).and_then(|k| self.instances.get(&k))
    }

    pub fn instance_mut(&mut self, id: &str) -> Option<&mut Instance> {
        let key = self.resolve(id)?;
        self.instances.get_mut(&key)
    }

    /// A fresh numeric ID of `digits` digits (marketplace IDs are numbers), unused as an instance.
    pub fn new_numeric_id(&mut self, digits: u32) -> String {
        let low = 10u64.pow(digits.saturating_sub(1).min(18));
        let high = low.saturating_mul(10).saturating_sub(1);
        loop {
            let id = self.rng.gen_range(low..=high).to_string();
            if !self.instances.contains_key(&id) && !self.aliases.contains_key(&id) {
                return id;
            }
        }
    }

    /// Draws whether this Market API call fails, and how long it is delayed.
    pub fn draw_openapi_fault(&mut self) -> (bool, u64) {
        let fail = self.faults.openapi_error_rate > 0.0 && self.fault_rng.gen::<f64>() < self.faults.openapi_error_rate;
        self.injected.openapi_errors += u64::from(fail);
        self.injected.openapi_slow += u64::from(self.faults.openapi_slow_ms > 0);
        (fail, self.faults.openapi_slow_ms)
    }

    /// Draws whether an SPI call is delivered twice.
    pub fn draw_duplicate(&mut self) -> bool {
        let duplicate =
            self.faults.spi_duplicate_rate > 0.0 && self.fault_rng.gen::<f64>() < self.faults.spi_duplicate_rate;
        self.injected.spi_duplicates += u64::from(duplicate);
        duplicate
    }

    /// Draws whether a notice is given up on without being delivered.
    pub fn draw_give_up(&mut self) -> bool {
        let give_up = self.faults.spi_give_up_rate > 0.0 && self.fault_rng.gen::<f64>() < self.faults.spi_give_up_rate;
        self.injected.spi_given_up += u64::from(give_up);
        give_up
    }

    /// Draws whether a notice is lost outright.
    pub fn draw_drop(&mut self) -> bool {
        let drop = self.faults.spi_drop_rate > 0.0 && self.fault_rng.gen::<f64>() < self.faults.spi_drop_rate;
        self.injected.spi_dropped += u64::from(drop);
        drop
    }

    /// A random delivery delay for reordered SPI calls, in real milliseconds.
    pub fn draw_reorder_delay_ms(&mut self) -> u64 {
        self.injected.spi_reordered += 1;
        self.fault_rng.gen_range(0..=400)
    }

    pub fn set_faults(&mut self, faults: Faults) {
        if let Some(seed) = faults.seed {
            self.fault_rng = StdRng::seed_from_u64(seed);
        }
        self.faults = faults;
    }

    /// Checks a PushMeteringData call against the documented rules and, if it passes, records
    /// it. Rules, in order: the generic limits (≤ 100 records, window > 5 min, Entities with a Key
    /// and `meteringAssit`); each Key is a documented one; each `meteringAssit` belongs to this
    /// product (`<productCode>-<Key>-<n>`); each InstanceId is an instance of this product; no usage
    /// after the hour its instance closed or expired in (documented as not billed; refused here,
    /// `InvalidMetering.InstanceClosed`); each record arrives before the end of the hour after its
    /// usage; at most one accepted call per instance per 60 s of service time. One record refused
    /// refuses the whole call; the service never reads from the message which one it was.
    pub fn accept_metering(
        &mut self,
        request: &PushMeteringDataRequest,
        product_code: &str,
        request_id: &str,
        now: DateTime<Utc>,
    ) -> Result<usize, Failure> {
        request.validate(MeteringRules::default()).map_err(metering_failure)?;
        let mut resolved = Vec::with_capacity(request.metering.len());
        for (index, record) in request.metering.iter().enumerate() {
            for entity in &record.entities {
                if !METERING_KEYS.contains(&entity.key.as_str()) {
                    return Err(Failure::new(
                        400,
                        "InvalidMetering.Key",
                        format!("record {index}: Key {} is not a metering key", entity.key),
                    ));
                }
                let assist = entity.metering_assist.as_deref().unwrap_or_default();
                let expected_prefix = format!("{product_code}-{}-", entity.key);
                if !assist.starts_with(&expected_prefix) || assist.len() == expected_prefix.len() {
                    return Err(Failure::new(
                        400,
                        "InvalidMetering.MeteringAssit",
                        format!(
                            "record {index}: meteringAssit {assist} is not a billing item of product {product_code} \
                             for Key {} (expected {expected_prefix}<n>)",
                            entity.key
                        ),
                    ));
                }
            }
            let key = self.resolve(&record.instance_id.0).ok_or_else(|| {
                Failure::new(
                    400,
                    "InvalidMetering.InstanceNotFound",
                    format!(
                        "record {index}: instance {} is not an instance of product {product_code}",
                        record.instance_id.0
                    ),
                )
            })?;
            if let Some(instance) = self.instances.get(&key) {
                let ended = match instance.status {
                    Status::Closed => instance.closed_at,
                    Status::Expired => instance.expired_at,
                    _ => None,
                };
                // Usage after the hour in which the instance closed or expired is not billed (expiry at 12:20:
                // 12:00–13:00 still billed, 13:00–14:00 not), and the marketplace refuses it.
                if let Some(ended) = ended {
                    let billed_until = ended.timestamp().div_euclid(3600).saturating_add(1).saturating_mul(3600);
                    if record.start_time >= billed_until {
                        return Err(Failure::new(
                            400,
                            "InvalidMetering.InstanceClosed",
                            format!(
                                "record {index}: instance {} is {} since {ended}; usage from {} is not billed",
                                record.instance_id.0,
                                instance.status.as_str(),
                                fmt_epoch(billed_until)
                            ),
                        ));
                    }
                }
            }
            let deadline = push_deadline(record.end_time);
            if now.timestamp() >= deadline {
                return Err(Failure::new(
                    400,
                    "InvalidMetering.Expired",
                    format!(
                        "record {index}: usage ending at {} had to be pushed before {} (the end of the next hour)",
                        fmt_epoch(record.end_time),
                        fmt_epoch(deadline)
                    ),
                ));
            }
            resolved.push(key);
        }
        let mut distinct: Vec<&String> = resolved.iter().collect();
        distinct.sort();
        distinct.dedup();
        for key in &distinct {
            if let Some(last) = self.last_push.get(*key) {
                let since = now - *last;
                if since < PUSH_INTERVAL {
                    let mut failure = Failure::new(
                        400,
                        "Throttling.User",
                        format!("instance {key} was already pushed at {last}; at most one call per instance per 60 s"),
                    );
                    failure.retry_after = Some(PUSH_INTERVAL - since);
                    return Err(failure);
                }
            }
        }
        if self.metering.len() + request.metering.len() > MAX_METERING_RECORDS {
            return Err(Failure::new(503, "ServiceUnavailable", "the simulator's metering log is full"));
        }
        for key in distinct {
            self.last_push.insert(key.clone(), now);
        }
        for (record, key) in request.metering.iter().zip(resolved) {
            let windows = self.metered.entry(key.clone()).or_default();
            let duplicate = windows.iter().any(|(start, end)| *start < record.end_time && record.start_time < *end);
            windows.push((record.start_time, record.end_time));
            self.metering.push(MeteringLogEntry {
                request_id: request_id.to_string(),
                received_at: now,
                instance_id: record.instance_id.0.clone(),
                order_biz_id: key,
                start_time: record.start_time,
                end_time: record.end_time,
                entities: record
                    .entities
                    .iter()
                    .map(|e| MeteringValue {
                        key: e.key.clone(),
                        value: e.value,
                        metering_assit: e.metering_assist.clone(),
                    })
                    .collect(),
                duplicate,
            });
        }
        Ok(request.metering.len())
    }
}

/// Unix seconds by which usage ending at `end_time` must be pushed: the end of the hour after the
/// hour the usage belongs to (08:10–08:20 → before 10:00; 08:00–09:00 → before 10:00).
pub(crate) fn push_deadline(end_time: i64) -> i64 {
    end_time.saturating_sub(1).div_euclid(3600).saturating_mul(3600).saturating_add(7200)
}

fn fmt_epoch(secs: i64) -> String {
    DateTime::from_timestamp(secs, 0).map(|t| t.to_rfc3339()).unwrap_or_else(|| secs.to_string())
}

fn metering_failure(e: MeteringError) -> Failure {
    let code = match &e {
        MeteringError::Empty => "InvalidMetering.Empty",
        MeteringError::TooManyRecords { .. } => "InvalidMetering.TooManyRecords",
        MeteringError::MissingInstanceId { .. } => "InvalidMetering.InstanceId",
        MeteringError::BadWindow { .. } => "InvalidMetering.TimeWindow",
        MeteringError::NoEntities { .. } | MeteringError::EmptyKey { .. } => "InvalidMetering.Entities",
        MeteringError::MissingMeteringAssist { .. } => "InvalidMetering.MeteringAssit",
    };
    Failure::new(400, code, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aliyun::market::{LongIdString, MeteringEntity, MeteringRecord};
    use chrono::TimeZone;

    const PRODUCT: &str = "cmgj00063418";

    fn t(h: u32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 27, h, m, 0).unwrap()
    }

    fn instance(id: &str) -> Instance {
        Instance {
            instance_id: id.into(),
            order_biz_id: id.into(),
            order_id: "o".into(),
            ali_uid: "u".into(),
            sku_id: "s".into(),
            product_code: PRODUCT.into(),
            status: Status::Opened,
            created_at: t(0, 0),
            activation_due: t(0, 1),
            opened_at: None,
            expired_at: None,
            closed_at: None,
            service_instance_id: None,
            auth_url: None,
            app_json: None,
            extend_json: None,
            create_failed: false,
            order_pay: false,
            pending_spi: 0,
            timeline: vec![],
        }
    }

    fn record(id: &str, start: DateTime<Utc>, end: DateTime<Utc>, assist: &str) -> MeteringRecord {
        MeteringRecord {
            instance_id: LongIdString(id.into()),
            start_time: start.timestamp(),
            end_time: end.timestamp(),
            entities: vec![MeteringEntity {
                key: "Frequency".into(),
                value: 1250,
                metering_assist: Some(assist.into()),
            }],
            serial_no: None,
        }
    }

    fn state() -> State {
        let mut s = State::new(Some(7));
        s.instances.insert("100".into(), instance("100"));
        s.instances.insert("200".into(), instance("200"));
        s.aliases.insert("svc-200".into(), "200".into());
        s
    }

    fn push(records: Vec<MeteringRecord>) -> PushMeteringDataRequest {
        PushMeteringDataRequest { metering: records }
    }

    const ASSIST: &str = "cmgj00063418-Frequency-1";

    fn code(r: Result<usize, Failure>) -> String {
        r.map(|n| format!("ok {n}")).unwrap_or_else(|f| f.code)
    }

    #[test]
    fn accepts_a_valid_push_and_throttles_the_next_within_60s() {
        let mut s = state();
        let ok = push(vec![record("100", t(8, 0), t(9, 0), ASSIST), record("svc-200", t(8, 0), t(9, 0), ASSIST)]);
        assert_eq!(code(s.accept_metering(&ok, PRODUCT, "R1", t(9, 5))), "ok 2");
        assert_eq!(s.metering.len(), 2);
        assert_eq!(s.metering[1].order_biz_id, "200");
        assert!(!s.metering[0].duplicate);

        let next = push(vec![record("100", t(9, 0), t(10, 0), ASSIST)]);
        let at = t(9, 5) + TimeDelta::seconds(59);
        let throttled = s.accept_metering(&next, PRODUCT, "R2", at).unwrap_err();
        assert_eq!((throttled.code.as_str(), throttled.retry_after), ("Throttling.User", Some(TimeDelta::seconds(1))));
        assert_eq!(code(s.accept_metering(&next, PRODUCT, "R2", t(9, 6))), "ok 1");

        // The same window again is accepted but flagged.
        let again = push(vec![record("100", t(8, 30), t(8, 45), ASSIST)]);
        assert_eq!(code(s.accept_metering(&again, PRODUCT, "R3", t(9, 30))), "ok 1");
        assert!(s.metering.last().unwrap().duplicate);
    }

    #[test]
    fn refuses_what_the_rules_forbid() {
        let mut s = state();
        let now = t(9, 5);
        let cases = vec![
            (push(vec![]), "InvalidMetering.Empty"),
            (push(vec![record("100", t(8, 0), t(8, 5), ASSIST)]), "InvalidMetering.TimeWindow"),
            (push(vec![record("100", t(8, 0), t(9, 0), ASSIST); 101]), "InvalidMetering.TooManyRecords"),
            (push(vec![record("100", t(8, 0), t(9, 0), "")]), "InvalidMetering.MeteringAssit"),
            (push(vec![record("100", t(8, 0), t(9, 0), "cmgj00000001-Frequency-1")]), "InvalidMetering.MeteringAssit"),
            (push(vec![record("100", t(8, 0), t(9, 0), "cmgj00063418-Frequency-")]), "InvalidMetering.MeteringAssit"),
            (push(vec![record("999", t(8, 0), t(9, 0), ASSIST)]), "InvalidMetering.InstanceNotFound"),
            (push(vec![record("100", t(6, 0), t(7, 0), ASSIST)]), "InvalidMetering.Expired"),
        ];
        for (request, want) in cases {
            assert_eq!(code(s.accept_metering(&request, PRODUCT, "R", now)), want);
        }
        let mut bad_key = record("100", t(8, 0), t(9, 0), ASSIST);
        bad_key.entities[0].key = "Bananas".into();
        assert_eq!(code(s.accept_metering(&push(vec![bad_key]), PRODUCT, "R", now)), "InvalidMetering.Key");
        assert!(s.metering.is_empty(), "nothing refused is recorded");
        assert!(s.last_push.is_empty(), "a refused call does not count against the rate limit");
    }

    #[test]
    fn deadline_is_the_end_of_the_next_hour() {
        assert_eq!(push_deadline(t(8, 20).timestamp()), t(10, 0).timestamp());
        assert_eq!(push_deadline(t(9, 0).timestamp()), t(10, 0).timestamp());
        assert_eq!(push_deadline(t(9, 1).timestamp()), t(11, 0).timestamp());
        let mut s = state();
        let late_ok = push(vec![record("100", t(8, 10), t(8, 20), ASSIST)]);
        assert_eq!(code(s.accept_metering(&late_ok, PRODUCT, "R", t(9, 59))), "ok 1");
        let too_late = push(vec![record("200", t(8, 10), t(8, 20), ASSIST)]);
        assert_eq!(code(s.accept_metering(&too_late, PRODUCT, "R", t(10, 0))), "InvalidMetering.Expired");
    }

    #[test]
    fn nonces_are_single_use_within_the_window() {
        let mut n = NonceCache::default();
        assert!(n.insert("a", t(0, 0)));
        assert!(!n.insert("a", t(0, 10)));
        assert!(n.insert("b", t(0, 10)));
        // Older than twice the 15-minute window: forgotten.
        assert!(n.insert("a", t(0, 31)));
    }

    #[test]
    fn faults_validate_and_seed_reproducibly() {
        assert!(Faults { openapi_error_rate: 1.5, ..Faults::default() }.validate().is_err());
        assert!(Faults { spi_duplicate_rate: f64::NAN, ..Faults::default() }.validate().is_err());
        assert!(Faults { openapi_slow_ms: MAX_SLOW_MS + 1, ..Faults::default() }.validate().is_err());
        let f = Faults { openapi_error_rate: 0.5, seed: Some(3), ..Faults::default() };
        assert!(f.validate().is_ok());
        let draws = |s: &mut State| (0..20).map(|_| s.draw_openapi_fault().0).collect::<Vec<_>>();
        let (mut a, mut b) = (State::new(None), State::new(None));
        a.set_faults(f.clone());
        b.set_faults(f);
        let (da, db) = (draws(&mut a), draws(&mut b));
        assert_eq!(da, db);
        assert!(da.contains(&true) && da.contains(&false));
        let errors = da.iter().filter(|f| **f).count() as u64;
        assert_eq!(a.injected, Injected { openapi_errors: errors, ..Injected::default() });
        a.set_faults(Faults { spi_duplicate_rate: 1.0, openapi_slow_ms: 5, ..Faults::default() });
        assert!(a.draw_duplicate() && !a.draw_openapi_fault().0);
        assert_eq!((a.injected.spi_duplicates, a.injected.openapi_slow), (1, 1));
    }

    #[test]
    fn numeric_ids_have_the_asked_length() {
        let mut s = State::new(Some(1));
        let id = s.new_numeric_id(12);
        assert_eq!(id.len(), 12);
        assert!(id.bytes().all(|b| b.is_ascii_digit()));
        assert_eq!(s.resolve("svc"), None);
    }
}
