//! Market OpenAPI (product `Market`, version 2015-11-01) request and response bodies.
//!
//! Field names and types follow the official SDK models (`alibabacloud_market20151101` 4.3.1,
//! `models/_describe_instance_response_body.py` etc.) and the API docs
//! (help.aliyun.com/zh/marketplace/api-rxm650 for DescribeInstance, document_detail/153320 for
//! PushMeteringData). All calls are RPC style: every business parameter is a top-level query
//! parameter, which [`MarketRequest::to_query`] produces and [`MarketRequest::from_query`]
//! (simulator side) reads back.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub const VERSION: &str = "2015-11-01";
/// Mainland endpoint; the SDK's endpoint map sends every `cn-*` region here.
pub const ENDPOINT: &str = "market.aliyuncs.com";
/// International endpoint (SDK endpoint map for `ap-*`, `eu-*`, `us-*`, `me-*`).
pub const ENDPOINT_INTL: &str = "market.ap-southeast-1.aliyuncs.com";

/// A request parameter problem, reported with Aliyun's RPC error code convention.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    #[error("{0} is mandatory for this action.")]
    Missing(&'static str),
    #[error("Specified parameter {name} is not valid: {reason}")]
    Invalid { name: &'static str, reason: String },
}

impl ParamError {
    /// `Missing{Name}` / `Invalid{Name}`, the gateway's pattern
    /// (developer.aliyun.com/ask/278265: "Missing{ParameterName}", "Invalid{ParameterName}").
    pub fn code(&self) -> String {
        match self {
            Self::Missing(name) => format!("Missing{name}"),
            Self::Invalid { name, .. } => format!("Invalid{name}"),
        }
    }
}

/// One Market API action: how its parameters go on the wire and what it answers.
pub trait MarketRequest: Sized {
    const ACTION: &'static str;
    type Response: Serialize + for<'de> Deserialize<'de>;

    fn to_query(&self) -> Result<BTreeMap<String, String>, ParamError>;
    fn from_query(params: &BTreeMap<String, String>) -> Result<Self, ParamError>;
}

fn required<'a>(params: &'a BTreeMap<String, String>, name: &'static str) -> Result<&'a str, ParamError> {
    params.get(name).map(String::as_str).filter(|v| !v.is_empty()).ok_or(ParamError::Missing(name))
}

fn required_number<T: FromStr>(params: &BTreeMap<String, String>, name: &'static str) -> Result<T, ParamError> {
    required(params, name)?.parse().map_err(|_| ParamError::Invalid { name, reason: "not a number".into() })
}

/// Numbers that the docs show as JSON strings (`"StartTime":"1723771200"`) but the SDK models
/// type as Long: written as strings, like the doc example, and read from either form.
mod num_as_string {
    use super::*;

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NumOrStr {
        I(i64),
        U(u64),
        S(String),
    }

    pub fn serialize<T: Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub fn deserialize<'de, T, D>(d: D) -> Result<T, D::Error>
    where
        T: FromStr,
        D: Deserializer<'de>,
    {
        let text = match NumOrStr::deserialize(d)? {
            NumOrStr::I(n) => n.to_string(),
            NumOrStr::U(n) => n.to_string(),
            NumOrStr::S(s) => s,
        };
        text.trim().parse().map_err(|_| serde::de::Error::custom(format!("expected an integer, got {text:?}")))
    }
}

/// An ID the API types as Long (DescribeInstance `InstanceId`, `OrderId`) but that we treat as
/// opaque text. Serialised as a JSON number when it is one, so the simulator's output matches
/// the real API's; read from a number or a string.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LongId(pub String);

impl Serialize for LongId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.parse::<i64>() {
            Ok(n) if n.to_string() == self.0 => s.serialize_i64(n),
            _ => s.serialize_str(&self.0),
        }
    }
}

impl<'de> Deserialize<'de> for LongId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            I(i64),
            U(u64),
            S(String),
        }
        Ok(LongId(match Raw::deserialize(d)? {
            Raw::I(n) => n.to_string(),
            Raw::U(n) => n.to_string(),
            Raw::S(s) => s,
        }))
    }
}

impl Display for LongId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

// ---------------------------------------------------------------------------------------------
// DescribeInstance

/// `DescribeInstance(InstanceId)`; the SDK also knows `OrderType` (deprecated) and `OwnerId`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescribeInstanceRequest {
    pub instance_id: String,
}

impl MarketRequest for DescribeInstanceRequest {
    const ACTION: &'static str = "DescribeInstance";
    type Response = DescribeInstanceResponse;

    fn to_query(&self) -> Result<BTreeMap<String, String>, ParamError> {
        if self.instance_id.is_empty() {
            return Err(ParamError::Missing("InstanceId"));
        }
        Ok([("InstanceId".to_string(), self.instance_id.clone())].into())
    }

    fn from_query(params: &BTreeMap<String, String>) -> Result<Self, ParamError> {
        Ok(Self { instance_id: required(params, "InstanceId")?.to_string() })
    }
}

/// Business status. For APP/SaaS products: OPENING, OPENED, EXPIRED, CLOSED; other product
/// types use other words (PRODUCE, USING, READYING, …), kept verbatim in `Other`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum InstanceStatus {
    Opening,
    Opened,
    Expired,
    Closed,
    Other(String),
}

impl From<String> for InstanceStatus {
    fn from(s: String) -> Self {
        match s.as_str() {
            "OPENING" => Self::Opening,
            "OPENED" => Self::Opened,
            "EXPIRED" => Self::Expired,
            "CLOSED" => Self::Closed,
            _ => Self::Other(s),
        }
    }
}

impl From<InstanceStatus> for String {
    fn from(s: InstanceStatus) -> String {
        match s {
            InstanceStatus::Opening => "OPENING".into(),
            InstanceStatus::Opened => "OPENED".into(),
            InstanceStatus::Expired => "EXPIRED".into(),
            InstanceStatus::Closed => "CLOSED".into(),
            InstanceStatus::Other(s) => s,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RelationalData {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_status: Option<String>,
}

/// DescribeInstance's answer. Everything is optional because the API omits what does not apply
/// to a product type, and a missing field must not make reconciliation fail. Times are epoch
/// milliseconds (doc example `BeganOn: 1570634021000`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribeInstanceResponse {
    /// Not in the SDK model, but every Aliyun RPC response carries it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<LongId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_id: Option<LongId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<InstanceStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_sku_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_name: Option<String>,
    /// APP, SERVICE, MIRROR, DOWNLOAD, API_SERVICE, DOCKER.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supplier_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_trial: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_renewal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub began_on: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_on: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_on: Option<i64>,
    /// JSON text: our createInstance `appInfo` (frontEndUrl, adminUrl, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_json: Option<String>,
    /// JSON text: our createInstance `info`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extend_json: Option<String>,
    /// JSON text: our createInstance `hostInfo`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_json: Option<String>,
    /// JSON text, e.g. `{"package_version":"yuncode000111"}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component_json: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub license_code: Option<String>,
    /// Deprecated per the doc.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub constraints: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relational_data: Option<RelationalData>,
    /// `{"Module":[{Id, Code, Name, Properties:{Property:[…]}}]}`; kept untyped because
    /// nothing here reads it and its nesting is deep.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modules: Option<serde_json::Value>,
}

// ---------------------------------------------------------------------------------------------
// PushMeteringData

/// Metering `Key`s the doc lists, with their wire units.
pub const METERING_KEYS: &[&str] = &[
    "Frequency",       // count
    "Period",          // seconds, billed per hour
    "PeriodMin",       // minutes
    "Storage",         // bytes, billed per MB
    "StorageGigaByte", // GB
    "NetworkOut",      // bits, billed per Mb
    "NetworkIn",       // bits, billed per Mb
    "Character",
    "DailyActiveUser",
    "VirtualCpu",
    "Unit",
    "Memory",  // GB
    "KTokens", // raw tokens, billed per 1000
    "Suit",
];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeteringEntity {
    #[serde(rename = "Key")]
    pub key: String,
    #[serde(rename = "Value", with = "num_as_string")]
    pub value: u64,
    /// Billing item ID `<productCode>-<Key>-<n>`; mandatory for newly published products.
    /// The misspelling `Assit` is the API's.
    #[serde(rename = "meteringAssit", default, skip_serializing_if = "Option::is_none")]
    pub metering_assist: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeteringRecord {
    #[serde(rename = "InstanceId")]
    pub instance_id: LongIdString,
    /// Unix seconds.
    #[serde(rename = "StartTime", with = "num_as_string")]
    pub start_time: i64,
    /// Unix seconds.
    #[serde(rename = "EndTime", with = "num_as_string")]
    pub end_time: i64,
    #[serde(rename = "Entities")]
    pub entities: Vec<MeteringEntity>,
    /// Only for per-minute LLM billing (HTTP requestId or WebSocket task uid).
    #[serde(rename = "SerialNo", default, skip_serializing_if = "Option::is_none")]
    pub serial_no: Option<String>,
}

/// `InstanceId` inside Metering: written as a string (doc example `"InstanceId":"1000001"`),
/// read from a string or a number.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LongIdString(pub String);

impl Serialize for LongIdString {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for LongIdString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        LongId::deserialize(d).map(|id| LongIdString(id.0))
    }
}

/// How the product is billed; the limits differ (document_detail/153320).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeteringRules {
    /// Real-time (LLM) billing: ≤ 10 records, any positive window. Otherwise hourly/daily
    /// billing: ≤ 100 records, window > 5 minutes.
    pub realtime: bool,
    /// Newly published products must send `meteringAssit`.
    pub require_metering_assist: bool,
}

impl Default for MeteringRules {
    fn default() -> Self {
        Self { realtime: false, require_metering_assist: true }
    }
}

/// Why a metering push would be rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MeteringError {
    #[error("no metering records")]
    Empty,
    #[error("{count} records exceed the limit of {max} per request")]
    TooManyRecords { count: usize, max: usize },
    #[error("record {index}: InstanceId is empty")]
    MissingInstanceId { index: usize },
    #[error("record {index}: EndTime must be after StartTime (and > 300 s later unless real-time)")]
    BadWindow { index: usize },
    #[error("record {index}: no Entities")]
    NoEntities { index: usize },
    #[error("record {index}: entity with an empty Key")]
    EmptyKey { index: usize },
    #[error("record {index}: entity {key} lacks meteringAssit")]
    MissingMeteringAssist { index: usize, key: String },
}

/// `PushMeteringData(Metering)`: `Metering` is a JSON *string* holding the record array.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushMeteringDataRequest {
    pub metering: Vec<MeteringRecord>,
}

impl PushMeteringDataRequest {
    /// Checks the documented limits; the simulator enforces them and the client checks before
    /// sending so that a bad batch fails loudly here rather than as an opaque remote error.
    pub fn validate(&self, rules: MeteringRules) -> Result<(), MeteringError> {
        let max = if rules.realtime { 10 } else { 100 };
        if self.metering.is_empty() {
            return Err(MeteringError::Empty);
        }
        if self.metering.len() > max {
            return Err(MeteringError::TooManyRecords { count: self.metering.len(), max });
        }
        for (index, r) in self.metering.iter().enumerate() {
            if r.instance_id.0.is_empty() {
                return Err(MeteringError::MissingInstanceId { index });
            }
            let min_width = if rules.realtime { 1 } else { 301 };
            if r.end_time.checked_sub(r.start_time).is_none_or(|w| w < min_width) {
                return Err(MeteringError::BadWindow { index });
            }
            if r.entities.is_empty() {
                return Err(MeteringError::NoEntities { index });
            }
            for e in &r.entities {
                if e.key.is_empty() {
                    return Err(MeteringError::EmptyKey { index });
                }
                let has_assist = e.metering_assist.as_deref().is_some_and(|a| !a.is_empty());
                if rules.require_metering_assist && !has_assist {
                    return Err(MeteringError::MissingMeteringAssist { index, key: e.key.clone() });
                }
            }
        }
        Ok(())
    }
}

impl MarketRequest for PushMeteringDataRequest {
    const ACTION: &'static str = "PushMeteringData";
    type Response = SuccessResponse;

    fn to_query(&self) -> Result<BTreeMap<String, String>, ParamError> {
        let json = serde_json::to_string(&self.metering)
            .map_err(|e| ParamError::Invalid { name: "Metering", reason: e.to_string() })?;
        Ok([("Metering".to_string(), json)].into())
    }

    fn from_query(params: &BTreeMap<String, String>) -> Result<Self, ParamError> {
        let metering = serde_json::from_str(required(params, "Metering")?)
            .map_err(|e| ParamError::Invalid { name: "Metering", reason: e.to_string() })?;
        Ok(Self { metering })
    }
}

/// `{RequestId, Success}`: PushMeteringData and ConfirmNotification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SuccessResponse {
    pub request_id: String,
    pub success: bool,
}

// ---------------------------------------------------------------------------------------------
// DescribeFailedNotifications / ConfirmNotification

/// Pulls orderPay notices the marketplace gave up delivering (after its retry schedule).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DescribeFailedNotificationsRequest {
    pub page_number: u32,
    pub page_size: u32,
}

impl MarketRequest for DescribeFailedNotificationsRequest {
    const ACTION: &'static str = "DescribeFailedNotifications";
    type Response = DescribeFailedNotificationsResponse;

    fn to_query(&self) -> Result<BTreeMap<String, String>, ParamError> {
        Ok([
            ("PageNumber".to_string(), self.page_number.to_string()),
            ("PageSize".to_string(), self.page_size.to_string()),
        ]
        .into())
    }

    fn from_query(params: &BTreeMap<String, String>) -> Result<Self, ParamError> {
        Ok(Self {
            page_number: required_number(params, "PageNumber")?,
            page_size: required_number(params, "PageSize")?,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct FailedNotification {
    /// UUID; the idempotency key and the argument of ConfirmNotification.
    pub notification_request_id: String,
    /// The SPI action, e.g. `orderPay`.
    #[serde(default)]
    pub action: String,
    /// Epoch milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_time: Option<i64>,
    /// The notification's parameters as JSON text.
    #[serde(default)]
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribeFailedNotificationsResponse {
    pub request_id: String,
    #[serde(default)]
    pub page_number: u32,
    #[serde(default)]
    pub page_size: u32,
    /// 0 when nothing failed.
    #[serde(default)]
    pub total_count: u64,
    #[serde(default)]
    pub notification_list: Vec<FailedNotification>,
}

/// Acknowledges a failed notification; it is then no longer returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfirmNotificationRequest {
    pub notification_request_id: String,
}

impl MarketRequest for ConfirmNotificationRequest {
    const ACTION: &'static str = "ConfirmNotification";
    type Response = SuccessResponse;

    fn to_query(&self) -> Result<BTreeMap<String, String>, ParamError> {
        if self.notification_request_id.is_empty() {
            return Err(ParamError::Missing("NotificationRequestId"));
        }
        Ok([("NotificationRequestId".to_string(), self.notification_request_id.clone())].into())
    }

    fn from_query(params: &BTreeMap<String, String>) -> Result<Self, ParamError> {
        Ok(Self { notification_request_id: required(params, "NotificationRequestId")?.to_string() })
    }
}

// ---------------------------------------------------------------------------------------------
// Errors

/// The gateway's error body. The Python SDK reads `Code`, `Message`, `RequestId` from it for
/// any 4xx/5xx answer (and parses XML instead only for `text/xml;charset=utf-8`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ErrorResponse {
    pub request_id: String,
    #[serde(default)]
    pub host_id: String,
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recommend: Option<String>,
}

impl ErrorResponse {
    pub fn new(
        request_id: impl Into<String>,
        host_id: impl Into<String>,
        code: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            request_id: request_id.into(),
            host_id: host_id.into(),
            code: code.into(),
            message: message.into(),
            recommend: None,
        }
    }

    /// The body (and HTTP status) the gateway sends for an authentication failure.
    pub fn from_auth_error(
        err: &crate::aliyun::auth::AuthError,
        request_id: impl Into<String>,
        host_id: impl Into<String>,
    ) -> (u16, Self) {
        (err.code.http_status(), Self::new(request_id, host_id, err.code(), err.message.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metering_serialises_like_the_doc_example() {
        let req = PushMeteringDataRequest {
            metering: vec![MeteringRecord {
                instance_id: LongIdString("1000001".into()),
                start_time: 1723771200,
                end_time: 1723774800,
                entities: vec![MeteringEntity {
                    key: "Frequency".into(),
                    value: 96,
                    metering_assist: Some("cmapi00060317-Frequency-1".into()),
                }],
                serial_no: None,
            }],
        };
        let query = req.to_query().unwrap();
        assert_eq!(
            query["Metering"],
            r#"[{"InstanceId":"1000001","StartTime":"1723771200","EndTime":"1723774800","Entities":[{"Key":"Frequency","Value":"96","meteringAssit":"cmapi00060317-Frequency-1"}]}]"#
        );
        assert_eq!(PushMeteringDataRequest::from_query(&query).unwrap(), req);
        assert_eq!(req.validate(MeteringRules::default()), Ok(()));
    }

    #[test]
    fn metering_accepts_numbers_from_other_clients() {
        let params: BTreeMap<String, String> = [(
            "Metering".to_string(),
            r#"[{"InstanceId":1000001,"StartTime":1723771200,"EndTime":"1723774800","Entities":[{"Key":"Period","Value":3600}]}]"#.to_string(),
        )]
        .into();
        let req = PushMeteringDataRequest::from_query(&params).unwrap();
        assert_eq!(req.metering[0].instance_id.0, "1000001");
        assert_eq!(req.metering[0].entities[0].value, 3600);
        assert_eq!(
            req.validate(MeteringRules::default()),
            Err(MeteringError::MissingMeteringAssist { index: 0, key: "Period".into() })
        );
        let bad = [("Metering".to_string(), r#"[{"Value":"-1"}]"#.to_string())].into();
        let err = PushMeteringDataRequest::from_query(&bad).unwrap_err();
        assert_eq!(err.code(), "InvalidMetering");
        assert_eq!(PushMeteringDataRequest::from_query(&BTreeMap::new()).unwrap_err().code(), "MissingMetering");
    }

    #[test]
    fn metering_limits() {
        let record = |start: i64, end: i64| MeteringRecord {
            instance_id: LongIdString("1".into()),
            start_time: start,
            end_time: end,
            entities: vec![MeteringEntity {
                key: "Frequency".into(),
                value: 1,
                metering_assist: Some("c-Frequency-1".into()),
            }],
            serial_no: None,
        };
        let rules = MeteringRules::default();
        let push = |records| PushMeteringDataRequest { metering: records };
        assert_eq!(push(vec![]).validate(rules), Err(MeteringError::Empty));
        assert_eq!(push(vec![record(0, 300)]).validate(rules), Err(MeteringError::BadWindow { index: 0 }));
        assert_eq!(push(vec![record(0, 301)]).validate(rules), Ok(()));
        let realtime = MeteringRules { realtime: true, ..rules };
        assert_eq!(push(vec![record(0, 1)]).validate(realtime), Ok(()));
        assert_eq!(push(vec![record(5, 5)]).validate(realtime), Err(MeteringError::BadWindow { index: 0 }));
        assert_eq!(push(vec![record(i64::MIN, i64::MAX)]).validate(rules), Err(MeteringError::BadWindow { index: 0 }));
        assert_eq!(
            push(vec![record(0, 3600); 11]).validate(realtime),
            Err(MeteringError::TooManyRecords { count: 11, max: 10 })
        );
        assert_eq!(push(vec![record(0, 3600); 100]).validate(rules), Ok(()));
    }

    #[test]
    fn describe_instance_reads_sdk_shaped_json() {
        // Shape of the doc example (help.aliyun.com/zh/marketplace/api-rxm650).
        let body = r#"{"RequestId":"R1","Status":"OPENED","AppJson":"{\"frontEndUrl\":\"https://x\"}",
            "ProductName":"p","InstanceId":1551111111,"ExtendJson":"{}","IsTrial":true,
            "BeganOn":1570634021000,"ComponentJson":"{\"package_version\":\"yuncode000111\"}",
            "Constraints":"{}","ProductType":"APP","ProductSkuCode":"cmgj00**11-prepay",
            "CreatedOn":1570634018000,"EndOn":1602259200000,"OrderId":204211111111111,
            "ProductCode":"cmgj00063418","SupplierName":"s",
            "RelationalData":{"ServiceStatus":"STARTED"},
            "Modules":{"Module":[{"Id":"1","Code":"c","Name":"n"}]}}"#;
        let r: DescribeInstanceResponse = serde_json::from_str(body).unwrap();
        assert_eq!(r.status, Some(InstanceStatus::Opened));
        assert_eq!(r.instance_id, Some(LongId("1551111111".into())));
        assert_eq!(r.end_on, Some(1602259200000));
        assert_eq!(r.relational_data.and_then(|d| d.service_status).as_deref(), Some("STARTED"));
        let odd: DescribeInstanceResponse = serde_json::from_str(r#"{"Status":"USING","InstanceId":"biz-1"}"#).unwrap();
        assert_eq!(odd.status, Some(InstanceStatus::Other("USING".into())));
        assert_eq!(odd.instance_id, Some(LongId("biz-1".into())));
    }

    #[test]
    fn describe_instance_writes_numbers_for_numeric_ids() {
        let r = DescribeInstanceResponse {
            request_id: Some("R".into()),
            instance_id: Some(LongId("123".into())),
            order_id: Some(LongId("o-1".into())),
            status: Some(InstanceStatus::Closed),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"RequestId":"R","InstanceId":123,"OrderId":"o-1","Status":"CLOSED"}"#
        );
        assert_eq!(serde_json::to_string(&LongId("007".into())).unwrap(), "\"007\"");
    }

    #[test]
    fn request_query_round_trips() {
        let d = DescribeInstanceRequest { instance_id: "123".into() };
        assert_eq!(DescribeInstanceRequest::from_query(&d.to_query().unwrap()).unwrap(), d);
        let f = DescribeFailedNotificationsRequest { page_number: 1, page_size: 20 };
        assert_eq!(DescribeFailedNotificationsRequest::from_query(&f.to_query().unwrap()).unwrap(), f);
        let bad: BTreeMap<String, String> =
            [("PageNumber".to_string(), "x".to_string()), ("PageSize".to_string(), "1".to_string())].into();
        assert_eq!(DescribeFailedNotificationsRequest::from_query(&bad).unwrap_err().code(), "InvalidPageNumber");
        let c = ConfirmNotificationRequest { notification_request_id: "uuid".into() };
        assert_eq!(ConfirmNotificationRequest::from_query(&c.to_query().unwrap()).unwrap(), c);
        assert_eq!(DescribeInstanceRequest::ACTION, "DescribeInstance");
    }

    #[test]
    fn notifications_and_errors_json() {
        let body = r#"{"RequestId":"R","PageNumber":1,"PageSize":10,"TotalCount":1,
            "NotificationList":[{"NotificationRequestId":"u-1","Action":"orderPay",
            "CreateTime":1723771200000,"Message":"{\"orderId\":\"1\"}"}]}"#;
        let r: DescribeFailedNotificationsResponse = serde_json::from_str(body).unwrap();
        assert_eq!(r.notification_list[0].notification_request_id, "u-1");
        let empty: DescribeFailedNotificationsResponse =
            serde_json::from_str(r#"{"RequestId":"R","TotalCount":0}"#).unwrap();
        assert!(empty.notification_list.is_empty());

        let ok: SuccessResponse = serde_json::from_str(r#"{"RequestId":"R2","Success":true}"#).unwrap();
        assert!(ok.success);

        let err = crate::aliyun::auth::AuthError::new(
            crate::aliyun::auth::AuthErrorCode::InvalidAccessKeyIdNotFound,
            "Specified access key is not found.",
        );
        let (status, body) = ErrorResponse::from_auth_error(&err, "R3", "market.aliyuncs.com");
        assert_eq!(status, 404);
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            r#"{"RequestId":"R3","HostId":"market.aliyuncs.com","Code":"InvalidAccessKeyId.NotFound","Message":"Specified access key is not found."}"#
        );
        let parsed: ErrorResponse = serde_json::from_str(
            r#"{"RequestId":"R","HostId":"h","Code":"SignatureDoesNotMatch","Message":"m","Recommend":"https://api.aliyun.com/troubleshoot?q=SignatureDoesNotMatch"}"#,
        )
        .unwrap();
        assert!(parsed.recommend.is_some());
    }
}
