//! Property tests of everything that parses raw input at the edge (issue #8, bad input): the SPI's form decoding,
//! token and typed parameters, over the pure functions and over HTTP against the running service; the workflow
//! definition loader on mutated copies of the real `workflows/*.toml` and on random bytes; the identifiers, e-mail,
//! name and password of the API; usage records; and bodies over the size limits, refused with 413 and a stable
//! code before anything is stored.
//!
//! The default proptest settings apply (256 cases a property; `PROPTEST_CASES` raises it for a longer run).

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::sync::Arc;

use chrono::{DateTime, NaiveDateTime, TimeDelta, TimeZone, Utc};
use marketflow::aliyun::encoding::{encode_query, first_duplicate, parse_form, percent_encode, DecodeError};
use marketflow::aliyun::spi::{
    beijing_to_utc, format_time, parse_expired_on, parse_time, utc_to_beijing, within_window, Error as SpiError,
    InstanceId, SpiRequest, MAX_ID_LEN, TIME_FORMAT,
};
use marketflow::aliyun::token::{spi_token, verify_spi_token, TokenError};
use marketflow::clock::{Clock, ManualClock};
use marketflow::config::{Config, Secret};
use marketflow::domain::ids::{Email, InvitationId, Name, OrgId, Password, Role, UserId};
use marketflow::domain::pricing::{Catalog as Prices, MilliCu};
use marketflow::engine::definition::{Catalog, Definition};
use marketflow::engine::EntityKey;
use marketflow::startup::{Application, Overrides, BUILTIN_WORKFLOWS};
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::{TestCaseError, TestRunner};
use serde_json::{json, Value};

/// The default settings (256 cases), without failure files in the tree: a failure prints its minimal input, which
/// belongs in a unit test of the module at fault.
fn config() -> ProptestConfig {
    ProptestConfig { failure_persistence: None, ..ProptestConfig::default() }
}

// ---------------------------------------------------------------------------------------------------------------
// SPI: form decoding, token, typed parameters (pure).

const KEY: &str = "property-isv-key";

const ACTIONS: &[&str] = &[
    "createInstance",
    "renewInstance",
    "upgradeInstance",
    "expiredInstance",
    "releaseInstance",
    "resumeInstance",
    "verify",
    "orderPay",
];

const NAMES: &[&str] = &[
    "action",
    "token",
    "instanceId",
    "aliUid",
    "orderBizId",
    "orderId",
    "productCode",
    "skuId",
    "trial",
    "expiredOn",
    "isRefund",
    "timeStamp",
    "requestId",
    "template",
    "Count",
];

/// Every code a refused SPI request may carry (src/aliyun/spi.rs `Error::code`).
const SPI_CODES: &[&str] = &["missing_parameter", "invalid_parameter", "unknown_action", "duplicate_parameter"];

/// Values that exercise each branch of the parser: empty, flags, times, epoch millis, spaces, non-ASCII, long.
fn raw_value() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => select(vec![
            "", " ", "1", "true", "FALSE", "yes", "2013-01-01 01:01:01", "1356973261000", "9999-12-31 23:59:59",
            "0000-01-01 00:00:00", "99999999999999999999", "-1", "a b", "中文", "%zz", "+", "tab\t", "line\n",
        ])
        .prop_map(String::from),
        3 => "[!-~]{1,64}",
        1 => "[!-~]{65,90}",
        2 => any::<String>(),
    ]
}

fn raw_name() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => select(NAMES).prop_map(String::from),
        1 => "[A-Za-z][A-Za-z0-9_]{0,12}",
        1 => any::<String>(),
    ]
}

/// A parameter set as the marketplace (or anybody) might send it: an action most of the time, random pairs,
/// duplicates and unknown names included, in any order.
fn raw_params() -> impl Strategy<Value = Vec<(String, String)>> {
    let action = prop_oneof![4 => select(ACTIONS).prop_map(String::from), 1 => any::<String>()];
    (prop::option::weighted(0.8, action), prop::collection::vec((raw_name(), raw_value()), 0..12))
        .prop_map(|(action, mut pairs)| {
            if let Some(a) = action {
                pairs.push(("action".to_string(), a));
            }
            pairs
        })
        .prop_shuffle()
}

fn value_of<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// The parameters each action cannot do without (src/aliyun/spi.rs `SpiRequest::parse`).
fn required(action: &str) -> &'static [&'static str] {
    match action {
        "createInstance" => &["action", "aliUid", "orderBizId", "orderId", "productCode", "skuId"],
        "renewInstance" => &["action", "instanceId", "orderId", "expiredOn"],
        "upgradeInstance" => &["action", "instanceId", "skuId"],
        "expiredInstance" | "releaseInstance" => &["action", "instanceId"],
        "resumeInstance" => &["action", "instanceId", "productCode", "skuId"],
        "verify" => &["action", "instanceId", "timeStamp"],
        "orderPay" => &["action", "requestId", "aliUid", "orderBizId", "orderId", "productCode", "skuId"],
        other => panic!("no required parameters listed for {other}"),
    }
}

/// A Beijing wall-clock time the marketplace could send (years 1970 to 9999).
fn wall_clock() -> impl Strategy<Value = NaiveDateTime> {
    let lo = NaiveDateTime::parse_from_str("1970-01-01 00:00:00", TIME_FORMAT).unwrap().and_utc().timestamp();
    let hi = NaiveDateTime::parse_from_str("9999-12-31 23:59:59", TIME_FORMAT).unwrap().and_utc().timestamp();
    (lo..=hi).prop_map(|s| DateTime::from_timestamp(s, 0).unwrap().naive_utc())
}

/// A well-formed request of a random action: every known parameter with a valid value (the ones an action does
/// not use are ignored or kept as extra billing items).
fn valid_request() -> impl Strategy<Value = (String, Vec<(String, String)>)> {
    // Mostly ids as the marketplace makes them; any printable ASCII is allowed (an entity id refuses `/` and `#`).
    let ids = prop::collection::vec(prop_oneof![3 => "[A-Za-z0-9_.-]{1,64}", 1 => "[!-~]{1,64}"], 8);
    let flags = (select(vec!["true", "false", "TRUE", "False"]), select(vec!["true", "false"]));
    (select(ACTIONS), ids, flags, wall_clock(), wall_clock(), any::<bool>(), prop::bool::ANY).prop_map(
        |(action, ids, (trial, refund), expiry, stamp, millis, with_extra)| {
            let expired_on = if millis && beijing_to_utc(expiry).timestamp_millis() >= 0 {
                beijing_to_utc(expiry).timestamp_millis().to_string()
            } else {
                expiry.format(TIME_FORMAT).to_string()
            };
            let mut params: Vec<(String, String)> = vec![
                ("action".into(), action.to_string()),
                ("instanceId".into(), ids[0].clone()),
                ("aliUid".into(), ids[1].clone()),
                ("orderBizId".into(), ids[2].clone()),
                ("orderId".into(), ids[3].clone()),
                ("productCode".into(), ids[4].clone()),
                ("skuId".into(), ids[5].clone()),
                ("requestId".into(), ids[6].clone()),
                ("trial".into(), trial.to_string()),
                ("isRefund".into(), refund.to_string()),
                ("expiredOn".into(), expired_on),
                ("timeStamp".into(), stamp.format(TIME_FORMAT).to_string()),
            ];
            if with_extra {
                params.push(("Count".into(), ids[7].clone()));
            }
            (action.to_string(), params)
        },
    )
}

/// What is done to one required parameter of a valid request, and the error it must produce.
#[derive(Debug, Clone, Copy)]
enum Damage {
    Drop,
    Empty,
    Oversize,
    NonAscii,
    Repeat,
}

proptest! {
    #![proptest_config(config())]

    /// Whatever arrives, parsing answers (no panic), answers the same twice, and a refusal carries one of the
    /// stable codes and a message that is safe for a log line (no control characters, bounded).
    #[test]
    fn spi_parse_is_total_with_stable_codes_and_log_safe_messages(params in raw_params()) {
        let first = SpiRequest::parse(&params);
        prop_assert_eq!(&first, &SpiRequest::parse(&params));
        match &first {
            Ok(req) => {
                prop_assert!(first_duplicate(&params).is_none());
                prop_assert_eq!(Some(req.action()), value_of(&params, "action"));
                if let Some(id) = req.instance_id() {
                    prop_assert_eq!(Some(id.as_str()), value_of(&params, "instanceId"));
                    prop_assert!(InstanceId::new(id.as_str()).is_ok());
                }
            }
            Err(e) => {
                prop_assert!(SPI_CODES.contains(&e.code()), "{e:?}");
                prop_assert_eq!(matches!(e, SpiError::DuplicateParameter(_)), first_duplicate(&params).is_some());
                let message = e.to_string();
                prop_assert!(!message.chars().any(char::is_control), "{message:?}");
                prop_assert!(message.len() <= 1024, "{} bytes", message.len());
                prop_assert!(!e.parameter().is_empty());
            }
        }
        // The token check is as total; a repeat is named, a missing token is told apart from a wrong one.
        match verify_spi_token(&params, KEY) {
            Err(TokenError::Duplicate(name)) => prop_assert_eq!(Some(name.as_str()), first_duplicate(&params)),
            Err(TokenError::Missing) => {
                prop_assert!(first_duplicate(&params).is_none());
                prop_assert!(value_of(&params, "token").is_none_or(|t| t.trim().is_empty()));
            }
            Err(TokenError::Mismatch) => prop_assert!(first_duplicate(&params).is_none()),
            Err(TokenError::Malformed) => {
                prop_assert!(value_of(&params, "token").is_some_and(|t| marketflow::aliyun::token::SpiToken::parse(t).is_err()));
            }
            Ok(_) => prop_assert!(false, "a random token was accepted: {params:?}"),
        }
    }

    /// A well-formed request of each action parses; each of its required parameters, dropped, empty, oversized,
    /// non-ASCII or repeated, is refused with the code and the parameter's name.
    #[test]
    fn spi_required_parameters_are_named_when_missing_or_malformed(
        (action, params) in valid_request(),
        pick in any::<prop::sample::Index>(),
        damage in select(vec![Damage::Drop, Damage::Empty, Damage::Oversize, Damage::NonAscii, Damage::Repeat]),
    ) {
        let parsed = SpiRequest::parse(&params);
        prop_assert!(parsed.is_ok(), "{params:?}: {parsed:?}");
        prop_assert_eq!(parsed.as_ref().map(|r| r.action()).ok(), Some(action.as_str()));
        let name = *pick.get(required(&action));
        let mut damaged = params.clone();
        let at = damaged.iter().position(|(k, _)| k == name).expect("the parameter is there");
        match damage {
            Damage::Drop => {
                damaged.remove(at);
            }
            Damage::Empty => damaged[at].1.clear(),
            Damage::Oversize => damaged[at].1 = "x".repeat(MAX_ID_LEN + 1),
            Damage::NonAscii => damaged[at].1.push('中'),
            Damage::Repeat => damaged.push((name.to_string(), "again".into())),
        }
        let err = SpiRequest::parse(&damaged).expect_err("damaged");
        let (code, parameter) = match (damage, name) {
            (Damage::Drop | Damage::Empty, _) => ("missing_parameter", name),
            (Damage::Repeat, _) => ("duplicate_parameter", name),
            (Damage::Oversize | Damage::NonAscii, "action") => ("unknown_action", "action"),
            (Damage::Oversize | Damage::NonAscii, _) => ("invalid_parameter", name),
        };
        prop_assert_eq!((err.code(), err.parameter()), (code, parameter), "{:?} {}: {:?}", damage, name, err);
    }
}

/// Parameter names as the marketplace uses them: ASCII identifiers, never `token` itself.
fn plain_name() -> impl Strategy<Value = String> {
    "[A-Za-z][A-Za-z0-9_]{0,15}".prop_filter("not the token", |n| n != "token")
}

/// What is done to a signed request.
#[derive(Debug, Clone)]
enum Tamper {
    ChangeValue(prop::sample::Index, String),
    Rename(prop::sample::Index, String),
    Drop(prop::sample::Index),
    Add(String, String),
    TokenDigit(prop::sample::Index, prop::sample::Index),
    TokenTruncated,
    TokenExtended,
    WrongKey(String),
}

fn tamper() -> impl Strategy<Value = Tamper> {
    prop_oneof![
        (any::<prop::sample::Index>(), any::<String>()).prop_map(|(i, v)| Tamper::ChangeValue(i, v)),
        (any::<prop::sample::Index>(), plain_name()).prop_map(|(i, n)| Tamper::Rename(i, n)),
        any::<prop::sample::Index>().prop_map(Tamper::Drop),
        (plain_name(), any::<String>()).prop_map(|(n, v)| Tamper::Add(n, v)),
        (any::<prop::sample::Index>(), any::<prop::sample::Index>()).prop_map(|(i, d)| Tamper::TokenDigit(i, d)),
        Just(Tamper::TokenTruncated),
        Just(Tamper::TokenExtended),
        "[ -~]{1,40}".prop_map(Tamper::WrongKey),
    ]
}

proptest! {
    #![proptest_config(config())]

    /// A token computed over the parameters is accepted (in either hex case); any change to one parameter (its
    /// value, its name, dropping it, adding one) or to the token, or a token made with another key, is refused.
    #[test]
    fn spi_token_accepts_exactly_the_signed_parameters(
        params in prop::collection::btree_map(plain_name(), any::<String>(), 0..10),
        key in "[ -~]{1,40}",
        change in tamper(),
    ) {
        let pairs: Vec<(String, String)> = params.into_iter().collect();
        let token = spi_token(&pairs, &key);
        prop_assert_eq!(token.len(), 32);
        let with = |pairs: &[(String, String)], token: &str| {
            let mut p = pairs.to_vec();
            p.push(("token".to_string(), token.to_string()));
            p
        };
        prop_assert_eq!(verify_spi_token(&with(&pairs, &token), &key).map(drop), Ok(()));
        prop_assert_eq!(verify_spi_token(&with(&pairs, &token.to_uppercase()), &key).map(drop), Ok(()));

        let mut tampered = pairs.clone();
        let mut sent = token.clone();
        let mut verify_key = key.clone();
        // A token of the wrong length is not even an MD5: refused as malformed before any comparison.
        let refusal = match change {
            Tamper::TokenTruncated | Tamper::TokenExtended => TokenError::Malformed,
            _ => TokenError::Mismatch,
        };
        match change {
            Tamper::ChangeValue(i, v) if !pairs.is_empty() => {
                let at = i.index(pairs.len());
                prop_assume!(tampered[at].1 != v);
                tampered[at].1 = v;
            }
            Tamper::Rename(i, n) if !pairs.is_empty() => {
                prop_assume!(!pairs.iter().any(|(k, _)| *k == n));
                let at = i.index(pairs.len());
                tampered[at].0 = n;
            }
            Tamper::Drop(i) if !pairs.is_empty() => {
                tampered.remove(i.index(pairs.len()));
            }
            Tamper::ChangeValue(..) | Tamper::Rename(..) | Tamper::Drop(_) => {
                tampered.push(("extra".into(), String::new()));
            }
            Tamper::Add(n, v) => {
                prop_assume!(!pairs.iter().any(|(k, _)| *k == n));
                tampered.push((n, v));
            }
            Tamper::TokenDigit(i, d) => {
                let at = i.index(sent.len());
                let old = sent.as_bytes()[at];
                let digits: Vec<u8> = b"0123456789abcdef".iter().copied().filter(|b| *b != old).collect();
                let mut bytes = sent.into_bytes();
                bytes[at] = *d.get(&digits);
                sent = String::from_utf8(bytes).expect("hex");
            }
            Tamper::TokenTruncated => {
                sent.pop();
            }
            Tamper::TokenExtended => sent.push('0'),
            Tamper::WrongKey(k) => {
                prop_assume!(k != key);
                verify_key = k;
            }
        }
        prop_assert_eq!(verify_spi_token(&with(&tampered, &sent), &verify_key).map(drop), Err(refusal));
    }

    /// `encode_query` and `parse_form` are inverse on any pairs (any Unicode, `+`, `%`, `&`, `=`, empty names
    /// and values); the encoding uses only unreserved characters and `%XX` with uppercase hex.
    #[test]
    fn form_encoding_round_trips(pairs in prop::collection::vec((any::<String>(), any::<String>()), 0..8)) {
        let encoded = encode_query(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        prop_assert_eq!(parse_form(&encoded), Ok(pairs.clone()));
        for (k, v) in &pairs {
            for part in [percent_encode(k), percent_encode(v)] {
                let mut bytes = part.bytes();
                while let Some(b) = bytes.next() {
                    if b == b'%' {
                        let hex: Vec<u8> = bytes.by_ref().take(2).collect();
                        prop_assert!(hex.len() == 2 && hex.iter().all(|h| h.is_ascii_digit() || (b'A'..=b'F').contains(h)));
                    } else {
                        prop_assert!(b.is_ascii_alphanumeric() || b"-_.~".contains(&b), "{part}");
                    }
                }
            }
        }
    }

    /// Decoding any text answers; only a `%` sequence can make it fail, and the failure names a real segment.
    #[test]
    fn form_decoding_is_total(raw in prop_oneof![any::<String>(), "([a-zA-Z=&+]|%[0-9A-Fa-f]{2}|%.?){0,40}"]) {
        match parse_form(&raw) {
            Ok(pairs) => prop_assert!(pairs.len() <= raw.split('&').count()),
            Err(DecodeError::InvalidUtf8 { index }) => {
                prop_assert!(raw.contains('%'));
                prop_assert!(index < raw.split('&').count());
            }
        }
    }

    /// Marketplace times: formatting a UTC instant as Beijing wall clock and parsing it back gives the instant;
    /// epoch milliseconds parse to the same instant; any text answers; the 免登 window is symmetric.
    #[test]
    fn spi_times_round_trip_and_the_window_is_symmetric(
        t in wall_clock(),
        raw in any::<String>(),
        skew in -100_000i64..100_000,
        window in 0i64..50_000,
    ) {
        let utc = beijing_to_utc(t);
        prop_assert_eq!(utc_to_beijing(utc), t);
        let text = format_time(utc);
        prop_assert_eq!(parse_time(&text), Some(t));
        prop_assert_eq!(parse_expired_on(&text), Some(t));
        if utc.timestamp_millis() >= 0 {
            let millis = utc.timestamp_millis().to_string();
            prop_assert_eq!(parse_expired_on(&millis).map(beijing_to_utc), Some(utc));
        }
        let _ = (parse_time(&raw), parse_expired_on(&raw));
        let now = Utc.with_ymd_and_hms(2026, 11, 27, 8, 0, 0).unwrap();
        let stamp = utc_to_beijing(now + TimeDelta::seconds(skew));
        prop_assert_eq!(within_window(stamp, now, TimeDelta::seconds(window)), skew.abs() <= window);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The workflow definition loader, on mutated copies of the real definitions.

/// The real definitions with the catalog of the workflow that implements each, without its states: these
/// properties are about the graph (a dropped or renamed state is found where the graph names it); that a
/// definition declares exactly the implementation's states is the loader's unit test.
fn real_definitions() -> Vec<(&'static str, &'static str, Catalog)> {
    let workflows = marketflow::domain::workflows();
    BUILTIN_WORKFLOWS
        .iter()
        .map(|(file, source)| {
            let head: toml::Value = toml::from_str(source).expect("a built-in definition is TOML");
            let name = head["name"].as_str().expect("a name");
            let wf = workflows.iter().find(|w| w.kind() == name).expect("a workflow for each definition");
            (*file, *source, Catalog { states: vec![], ..wf.catalog() })
        })
        .collect()
}

/// An error must say where: the file as given and a line of the text (1-based), in `file:line: message`.
fn check_error_location(
    file: &str,
    source: &str,
    e: &marketflow::engine::definition::Error,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(e.file.as_str(), file);
    prop_assert!(
        e.line >= 1 && e.line <= source.matches('\n').count() + 1,
        "line {} of {}",
        e.line,
        source.lines().count()
    );
    prop_assert!(e.to_string().starts_with(&format!("{file}:{}: ", e.line)), "{e}");
    prop_assert!(!e.message.is_empty());
    Ok(())
}

fn line_of(source: &str, line: usize) -> &str {
    source.lines().nth(line.saturating_sub(1)).unwrap_or("")
}

/// Edits of the text that know nothing of TOML.
#[derive(Debug, Clone)]
enum TextEdit {
    DeleteLine(prop::sample::Index),
    DuplicateLine(prop::sample::Index),
    SwapLines(prop::sample::Index, prop::sample::Index),
    ReplaceLine(prop::sample::Index, String),
    Insert(prop::sample::Index, Vec<u8>),
    Truncate(prop::sample::Index),
}

fn text_edit() -> impl Strategy<Value = TextEdit> {
    let idx = any::<prop::sample::Index>;
    prop_oneof![
        idx().prop_map(TextEdit::DeleteLine),
        idx().prop_map(TextEdit::DuplicateLine),
        (idx(), idx()).prop_map(|(a, b)| TextEdit::SwapLines(a, b)),
        (idx(), prop_oneof!["[ -~]{0,40}", any::<String>()]).prop_map(|(i, s)| TextEdit::ReplaceLine(i, s)),
        (idx(), prop::collection::vec(any::<u8>(), 1..16)).prop_map(|(i, b)| TextEdit::Insert(i, b)),
        idx().prop_map(TextEdit::Truncate),
    ]
}

fn apply_text_edit(source: &str, edit: &TextEdit) -> String {
    let mut lines: Vec<String> = source.lines().map(String::from).collect();
    if lines.is_empty() {
        return source.to_string();
    }
    match edit {
        TextEdit::DeleteLine(i) => {
            lines.remove(i.index(lines.len()));
        }
        TextEdit::DuplicateLine(i) => {
            let at = i.index(lines.len());
            lines.insert(at, lines[at].clone());
        }
        TextEdit::SwapLines(a, b) => {
            let (a, b) = (a.index(lines.len()), b.index(lines.len()));
            lines.swap(a, b);
        }
        TextEdit::ReplaceLine(i, s) => {
            let at = i.index(lines.len());
            lines[at] = s.clone();
        }
        TextEdit::Insert(i, bytes) => {
            let mut raw = source.as_bytes().to_vec();
            let at = i.index(raw.len() + 1);
            raw.splice(at..at, bytes.iter().copied());
            return String::from_utf8_lossy(&raw).into_owned();
        }
        TextEdit::Truncate(i) => {
            let at = i.index(source.len() + 1);
            let at = (0..=at).rev().find(|c| source.is_char_boundary(*c)).unwrap_or(0);
            return source[..at].to_string();
        }
    }
    lines.join("\n")
}

/// Edits of the structure, each with a known outcome.
#[derive(Debug, Clone)]
enum GraphEdit {
    /// Remove a `[[state]]`: every state is reachable, so some reference to it dangles.
    DropState(prop::sample::Index),
    /// Rename a state where it is declared only: its references dangle.
    RenameDeclaration(prop::sample::Index, String),
    /// Rename a state everywhere it is named: the definition still loads.
    RenameEverywhere(prop::sample::Index, String),
    /// Point a transition at a state that does not exist.
    DanglingTransition(prop::sample::Index, String),
    /// Declare a state a second time.
    DuplicateState(prop::sample::Index),
    /// Give a timer or a call's backoff another duration text: loads exactly when the text is a duration.
    Duration(prop::sample::Index, String),
    /// Name an action no workflow provides.
    UnknownAction(prop::sample::Index, String),
}

fn state_name() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9_]{0,12}"
}

fn duration_text() -> impl Strategy<Value = String> {
    prop_oneof![
        select(vec![
            "15m",
            "1h 30m",
            "90s",
            "2days",
            "0s",
            "",
            " ",
            "-1s",
            "1",
            "m",
            "1x",
            "1h-",
            "∞",
            "10000000000000000h"
        ])
        .prop_map(String::from),
        "[0-9]{1,4}(ms|s|m|h|d|min|sec)?( [0-9]{1,3}[smh])?",
        "[ -~]{0,12}",
    ]
}

fn graph_edit() -> impl Strategy<Value = GraphEdit> {
    let idx = any::<prop::sample::Index>;
    prop_oneof![
        idx().prop_map(GraphEdit::DropState),
        (idx(), state_name()).prop_map(|(i, n)| GraphEdit::RenameDeclaration(i, n)),
        (idx(), state_name()).prop_map(|(i, n)| GraphEdit::RenameEverywhere(i, n)),
        (idx(), state_name()).prop_map(|(i, n)| GraphEdit::DanglingTransition(i, n)),
        idx().prop_map(GraphEdit::DuplicateState),
        (idx(), duration_text()).prop_map(|(i, d)| GraphEdit::Duration(i, d)),
        (idx(), "[a-z_]{1,16}").prop_map(|(i, a)| GraphEdit::UnknownAction(i, a)),
    ]
}

fn states_of(doc: &toml::Value) -> Vec<String> {
    doc["state"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap().to_string()).collect()
}

/// Renames a state in every place a definition names one: `initial`, `terminal`, `[[state]] name`, and the
/// `from` and `to` of transitions.
fn rename_state(doc: &mut toml::Value, old: &str, new: &str) {
    let swap = |v: &mut toml::Value| {
        if v.as_str() == Some(old) {
            *v = toml::Value::String(new.to_string());
        }
    };
    swap(&mut doc["initial"]);
    if let Some(ts) = doc.get_mut("terminal").and_then(|t| t.as_array_mut()) {
        ts.iter_mut().for_each(swap);
    }
    for s in doc["state"].as_array_mut().unwrap() {
        swap(&mut s["name"]);
    }
    for t in doc["transition"].as_array_mut().unwrap() {
        if let Some(from) = t.get_mut("from").and_then(|f| f.as_array_mut()) {
            from.iter_mut().for_each(swap);
        }
        if let Some(to) = t.get_mut("to") {
            swap(to);
        }
    }
}

/// The duration fields of a definition: each timer and each call's backoffs and timeout, as (table path, key).
fn duration_fields(doc: &toml::Value) -> Vec<(Vec<String>, String)> {
    let mut out = vec![];
    if let Some(timers) = doc.get("timers").and_then(|t| t.as_table()) {
        out.extend(timers.keys().map(|k| (vec!["timers".to_string()], k.clone())));
    }
    if let Some(calls) = doc.get("calls").and_then(|t| t.as_table()) {
        for (name, call) in calls {
            for key in ["initial_backoff", "max_backoff", "timeout"] {
                if call.get(key).is_some() {
                    out.push((vec!["calls".to_string(), name.clone()], key.to_string()));
                }
            }
        }
    }
    out
}

proptest! {
    #![proptest_config(config())]

    /// Random bytes, and the real definitions with lines deleted, repeated, swapped, replaced, with bytes inserted
    /// or cut short: the loader never panics, and whatever it refuses, it says in which file and on which line.
    #[test]
    fn definitions_damaged_as_text_are_refused_with_file_and_line(
        which in any::<prop::sample::Index>(),
        edits in prop::collection::vec(text_edit(), 1..4),
        noise in prop::collection::vec(any::<u8>(), 0..400),
    ) {
        let defs = real_definitions();
        let (file, source, catalog) = which.get(&defs);
        let mut text = source.to_string();
        for edit in &edits {
            text = apply_text_edit(&text, edit);
        }
        if let Err(e) = Definition::parse(file, &text, catalog) {
            check_error_location(file, &text, &e)?;
        }
        let noise = String::from_utf8_lossy(&noise).into_owned();
        match Definition::parse("noise.toml", &noise, catalog) {
            Err(e) => check_error_location("noise.toml", &noise, &e)?,
            Ok(d) => prop_assert!(false, "random bytes loaded as {d:?}"),
        }
    }

    /// Edits of the graph with a known outcome: dangling references, duplicates, unknown actions and bad durations
    /// are refused on the line that names them; a state renamed consistently, or a valid duration, still loads.
    #[test]
    fn definitions_damaged_as_graphs_are_refused_on_the_right_line(
        which in any::<prop::sample::Index>(),
        edit in graph_edit(),
    ) {
        let defs = real_definitions();
        let (file, source, catalog) = which.get(&defs);
        let original = Definition::parse(file, source, catalog).expect("the real definition loads");
        let mut doc: toml::Value = toml::from_str(source).unwrap();
        let states = states_of(&doc);
        // (what the error must mention on its line, or None when the edit keeps the definition valid)
        let expect: Option<String> = match &edit {
            GraphEdit::DropState(i) => {
                let at = i.index(states.len());
                doc["state"].as_array_mut().unwrap().remove(at);
                Some(format!("\"{}\"", states[at]))
            }
            GraphEdit::RenameDeclaration(i, new) => {
                prop_assume!(!states.contains(new));
                let at = i.index(states.len());
                doc["state"][at]["name"] = toml::Value::String(new.clone());
                Some(format!("\"{}\"", states[at]))
            }
            GraphEdit::RenameEverywhere(i, new) => {
                prop_assume!(!states.contains(new));
                rename_state(&mut doc, &states[i.index(states.len())], new);
                None
            }
            GraphEdit::DanglingTransition(i, new) => {
                prop_assume!(!states.contains(new));
                let ts = doc["transition"].as_array_mut().unwrap();
                let at = i.index(ts.len());
                ts[at].as_table_mut().unwrap().insert("to".into(), toml::Value::String(new.clone()));
                Some(format!("\"{new}\""))
            }
            GraphEdit::DuplicateState(i) => {
                let copy = doc["state"][i.index(states.len())].clone();
                doc["state"].as_array_mut().unwrap().push(copy);
                Some(format!("\"{}\"", states[i.index(states.len())]))
            }
            GraphEdit::Duration(i, text) => {
                let fields = duration_fields(&doc);
                let (path, key) = i.get(&fields).clone();
                let mut table = &mut doc;
                for p in &path {
                    table = &mut table[p.as_str()];
                }
                table.as_table_mut().unwrap().insert(key.clone(), toml::Value::String(text.clone()));
                humantime::parse_duration(text.trim()).is_err().then_some(key)
            }
            GraphEdit::UnknownAction(i, action) => {
                prop_assume!(!catalog.actions.contains(&action.as_str()));
                let ts = doc["transition"].as_array_mut().unwrap();
                let at = i.index(ts.len());
                let t = ts[at].as_table_mut().unwrap();
                let mut actions = t.get("actions").and_then(|a| a.as_array()).cloned().unwrap_or_default();
                actions.push(toml::Value::String(action.clone()));
                t.insert("actions".into(), toml::Value::Array(actions));
                Some(format!("\"{action}\""))
            }
        };
        let text = toml::to_string(&doc).expect("TOML again");
        match (Definition::parse(file, &text, catalog), expect) {
            (Ok(d), None) => {
                prop_assert_eq!(d.states.len(), original.states.len());
                prop_assert_eq!(d.transitions.len(), original.transitions.len());
                if let GraphEdit::RenameEverywhere(_, new) = &edit {
                    prop_assert!(d.state(new).is_some());
                    prop_assert_ne!(&d.fingerprint, &original.fingerprint, "the graph changed");
                }
            }
            (Err(e), Some(needle)) => {
                check_error_location(file, &text, &e)?;
                let line = line_of(&text, e.line);
                prop_assert!(line.contains(&needle), "{e} — line {}: {line:?}, expected it to name {needle}", e.line);
                if let GraphEdit::DuplicateState(_) = edit {
                    prop_assert!(e.message.contains("declared twice"), "{e}");
                }
            }
            (Ok(_), Some(needle)) => prop_assert!(false, "{edit:?} loaded, expected an error naming {needle}"),
            (Err(e), None) => prop_assert!(false, "{edit:?} was refused: {e}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Identifiers, e-mail, names, passwords and usage records.

proptest! {
    #![proptest_config(config())]

    /// Ids are `<prefix>_` and 1 to 60 of `[A-Za-z0-9_-]`, nothing else; they survive JSON; refusals say `invalid_id`.
    #[test]
    fn ids_accept_exactly_their_shape(s in prop_oneof![any::<String>(), "(org|usr|inv|bnd)_[A-Za-z0-9_/ .-]{0,64}"]) {
        let shape = |prefix: &str| {
            s.strip_prefix(prefix).is_some_and(|rest| {
                !rest.is_empty() && s.len() <= 64 && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            })
        };
        match OrgId::parse(s.clone()) {
            Ok(id) => {
                prop_assert!(shape("org_"), "{s:?}");
                prop_assert_eq!(id.as_str(), s.as_str());
                let json = serde_json::to_string(&id).unwrap();
                prop_assert_eq!(serde_json::from_str::<OrgId>(&json).ok(), Some(id));
            }
            Err(e) => {
                prop_assert!(!shape("org_"), "{s:?}");
                prop_assert_eq!(e.code, "invalid_id");
            }
        }
        prop_assert_eq!(UserId::parse(s.clone()).is_ok(), shape("usr_"));
        prop_assert_eq!(InvitationId::parse(s.clone()).is_ok(), shape("inv_"));
        prop_assert!(serde_json::from_value::<OrgId>(json!(s)).is_ok() == shape("org_"));
        prop_assert_eq!(Role::parse(&s).is_ok(), ["owner", "billing_admin", "member"].contains(&s.as_str()));
    }

    /// E-mail addresses are trimmed and lower-cased once (parsing the result again changes nothing), hold no
    /// control, white-space or bidi character and parts of bounded length; names are 1 to 100 characters without
    /// control, bidi-override or line-breaking characters; passwords 8 to 128 characters and never printed.
    #[test]
    fn email_name_and_password_are_checked_at_the_edge(
        email in prop_oneof![any::<String>(), " ?[A-Za-z0-9.+_-]{0,10}@[A-Za-z0-9.-]{0,10} ?", "[ -~]{0,300}"],
        name in prop_oneof![any::<String>(), "[ -~]{0,120}", "\\PC{95,105}"],
        password in prop_oneof![any::<String>(), "\\PC{0,140}"],
    ) {
        match Email::parse(email.clone()) {
            Ok(e) => {
                let t = e.as_str();
                prop_assert_eq!(t, email.trim().to_lowercase());
                prop_assert!(t.len() <= 254 && t.matches('@').count() == 1 && !t.contains(char::is_whitespace));
                let bidi_or_control = t.chars().any(|c| c.is_control() || ('\u{202a}'..='\u{202e}').contains(&c));
                prop_assert!(!bidi_or_control, "{:?}", t);
                let (local, domain) = t.split_once('@').unwrap();
                prop_assert!(local.len() <= 64 && domain.contains('.') && domain.split('.').all(|l| !l.is_empty() && l.len() <= 63));
                prop_assert_eq!(Email::parse(t.to_string()).map(|again| again.as_str().to_string()).ok(), Some(t.to_string()));
            }
            Err(e) => prop_assert_eq!(e.code, "invalid_email"),
        }
        let trimmed = name.trim();
        let bidi = |c: char| matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
        let name_ok = !trimmed.is_empty()
            && trimmed.chars().count() <= 100
            && !trimmed.chars().any(|c| c.is_control() || bidi(c) || (c.is_whitespace() && c != ' ' && c != '\u{3000}'))
            // Invisible formatting characters (zero-width space, joiners, BOM...) are refused too.
            && !trimmed.chars().any(|c| {
                matches!(c, '\u{ad}' | '\u{34f}' | '\u{61c}' | '\u{115f}' | '\u{1160}' | '\u{17b4}' | '\u{17b5}'
                    | '\u{180b}'..='\u{180f}' | '\u{200b}'..='\u{200d}' | '\u{2060}'..='\u{206f}' | '\u{3164}'
                    | '\u{fe00}'..='\u{fe0f}' | '\u{feff}' | '\u{ffa0}' | '\u{fff0}'..='\u{fffb}'
                    | '\u{1d173}'..='\u{1d17a}' | '\u{e0000}'..='\u{e0fff}')
            });
        match Name::parse(name.clone()) {
            Ok(n) => {
                prop_assert!(name_ok);
                prop_assert_eq!(n.as_str(), trimmed);
            }
            Err(e) => {
                prop_assert!(!name_ok, "{name:?}");
                prop_assert_eq!(e.code, "invalid_name");
            }
        }
        let n = password.chars().count();
        match Password::parse(password.clone()) {
            Ok(p) => {
                prop_assert!((8..=128).contains(&n));
                prop_assert_eq!(format!("{p:?}"), "Password(***)");
            }
            Err(e) => {
                prop_assert!(!(8..=128).contains(&n));
                prop_assert_eq!(e.code, "weak_password");
                prop_assert!(n < 8 || !e.to_string().contains(&password));
            }
        }
    }

    /// A usage record as it arrives: any values answer; an accepted record keeps every limit (id shape, known CU
    /// type, 0 < CU ≤ 10000 in thousandths, 0 < length ≤ 24 h, not in the future, at most 7 days old); a refused
    /// one carries a stable code.
    #[test]
    fn usage_records_are_validated_whole(
        record_id in prop_oneof!["[A-Za-z0-9:._-]{1,20}", any::<String>(), "[a-z]{129}"],
        resource_id in prop_oneof!["[A-Za-z0-9:._-]{1,20}", any::<String>()],
        cu_type in prop_oneof![select(vec!["performance", "capacity"]).prop_map(String::from), any::<String>()],
        cu in prop_oneof![0.001f64..10_000.0, (1u64..10_000_000).prop_map(|m| m as f64 / 1000.0), any::<f64>(),
                          Just(f64::NAN), Just(f64::INFINITY), Just(0.0), Just(-1.0), Just(0.0005)],
        start in -10i64 * 86_400..86_400,
        length in -3_600i64..100_000,
    ) {
        let prices = Prices::builtin().unwrap();
        let now = Utc.with_ymd_and_hms(2026, 11, 27, 8, 0, 0).unwrap();
        let org = OrgId::parse("org_properties").unwrap();
        let s = now + TimeDelta::seconds(start);
        let e = s + TimeDelta::seconds(length);
        match marketflow::app::usage::parse(&prices, now, record_id.clone(), org, resource_id, cu_type.clone(), cu, s, e) {
            Ok(r) => {
                prop_assert_eq!(&r.record_id, &record_id);
                prop_assert!(prices.price(&r.cu_type).is_some());
                prop_assert!(r.milli_cu.0 >= 1 && r.milli_cu.0 <= 10_000_000);
                prop_assert!((r.milli_cu.0 as f64 / 1000.0 - cu).abs() <= 1e-9);
                prop_assert!(r.end > r.start && r.end - r.start <= TimeDelta::hours(24));
                prop_assert!(r.end <= now + TimeDelta::minutes(5) && r.start >= now - TimeDelta::days(7));
            }
            Err(e) => prop_assert!([
                "invalid_id", "unknown_cu_type", "invalid_cu", "invalid_interval", "interval_in_future", "interval_too_old",
            ].contains(&e.code), "{e}"),
        }
        if let Some(m) = MilliCu::from_f64(cu) {
            prop_assert!(m.0 >= 1 && m.0 <= 10_000_000);
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Over HTTP: the running service (real port, real sled store) on a manual clock.

const OP: &str = "properties-operator";
const SVC: &str = "properties-service";

/// The service in an actix system of its own, driven from the test thread with `block_on`.
struct Running {
    sys: actix_rt::SystemRunner,
    url: String,
    handle: actix_web::dev::ServerHandle,
    clock: ManualClock,
    _dir: tempfile::TempDir,
}

impl Running {
    fn start() -> Running {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 11, 27, 8, 0, 0).unwrap());
        let sys = actix_rt::System::new();
        let config = Config {
            listen: "127.0.0.1:0".into(),
            data_dir: dir.path().join("data"),
            operator_token: Some(Secret::new(OP)),
            service_token: Some(Secret::new(SVC)),
            isv_key: Some(Secret::new(KEY)),
            access_key_id: Some("ak".into()),
            access_key_secret: Some(Secret::new("ak-secret")),
            // Nothing listens there: the Market calls of created subscriptions fail and wait for the manual clock.
            aliyun_endpoint: "http://127.0.0.1:9".into(),
            ..Config::default()
        };
        let shared: Arc<dyn Clock> = Arc::new(clock.clone());
        let app = sys
            .block_on(Application::build_with(config, Overrides { clock: Some(shared), listener: None }))
            .expect("the service starts");
        let url = format!("http://127.0.0.1:{}", app.port());
        let handle = app.handle();
        sys.block_on(async {
            actix_rt::spawn(app.run_until_stopped());
        });
        Running { sys, url, handle, clock, _dir: dir }
    }

    fn stop(self) {
        let handle = self.handle.clone();
        self.sys.block_on(handle.stop(true));
    }

    fn entity_count(&self, http: &reqwest::Client) -> usize {
        self.sys.block_on(async {
            let v: Value = http
                .get(format!("{}/api/v1/ops/entities?limit=1000", self.url))
                .bearer_auth(OP)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["items"].as_array().map(Vec::len).unwrap_or(0)
        })
    }
}

/// One piece of a raw query or form: names and values percent-encoded, raw, or broken.
fn form_segment() -> impl Strategy<Value = String> {
    let encoded_pair =
        (raw_name(), raw_value()).prop_map(|(k, v)| format!("{}={}", percent_encode(&k), percent_encode(&v)));
    let plus_pair = (select(NAMES), "[A-Za-z0-9 +:-]{0,20}").prop_map(|(k, v)| format!("{k}={}", v.replace(' ', "+")));
    prop_oneof![
        4 => encoded_pair,
        1 => plus_pair,
        1 => "([A-Za-z0-9=+._~-]|%[0-9A-Fa-f]{2}|%[G-Zg-z]{0,2}|%[89A-Fa-f][0-9A-Fa-f]){0,24}",
        1 => select(NAMES).prop_map(String::from),
        1 => Just(String::new()),
    ]
}

fn raw_form() -> impl Strategy<Value = String> {
    let well_formed =
        valid_request().prop_map(|(_, params)| encode_query(params.iter().map(|(k, v)| (k.as_str(), v.as_str()))));
    let action = select(ACTIONS).prop_map(|a| format!("action={a}"));
    let random = (prop::option::of(action), prop::collection::vec(form_segment(), 0..10))
        .prop_map(|(a, mut segs)| {
            segs.extend(a);
            segs
        })
        .prop_shuffle()
        .prop_map(|segs| segs.join("&"));
    prop_oneof![well_formed, random]
}

/// What `/aliyun/spi` must answer for a request whose query string is `query` and whose body is `body`, from the
/// pure functions: (status, code). The HTTP handler must agree with them exactly.
fn spi_oracle(query: &str, body: &[u8]) -> (u16, Option<String>) {
    let mut raw = query.to_string();
    if !body.is_empty() {
        let Ok(form) = std::str::from_utf8(body) else { return (400, Some("invalid_body".into())) };
        if !raw.is_empty() {
            raw.push('&');
        }
        raw.push_str(form);
    }
    let Ok(params) = parse_form(&raw) else { return (400, Some("invalid_parameter".into())) };
    match verify_spi_token(&params, KEY) {
        Err(TokenError::Missing) => return (403, Some("missing_token".into())),
        Err(TokenError::Duplicate(_)) => return (403, Some("duplicate_parameter".into())),
        Err(TokenError::Mismatch | TokenError::Malformed) => return (403, Some("invalid_token".into())),
        Ok(_) => {}
    }
    match SpiRequest::parse(&params) {
        Err(e) => (400, Some(e.code().to_string())),
        Ok(SpiRequest::Verify { .. }) => (302, None),
        Ok(req) => {
            let instance = match &req {
                SpiRequest::CreateInstance { order_biz_id, .. } | SpiRequest::OrderPay { order_biz_id, .. } => {
                    order_biz_id.to_string()
                }
                other => other.instance_id().map(|i| i.to_string()).unwrap_or_default(),
            };
            match EntityKey::new("subscription", &instance) {
                Ok(_) => (200, None),
                Err(_) => (400, Some("invalid_parameter".into())),
            }
        }
    }
}

/// Appends a token computed over the decoded parameters, so that the request gets past the token check.
fn sign(raw: &str) -> String {
    let params = parse_form(raw).unwrap_or_default();
    let token = spi_token(&params, KEY);
    if raw.is_empty() {
        format!("token={token}")
    } else {
        format!("{raw}&token={token}")
    }
}

/// Random and malformed SPI calls over HTTP (GET query or POST form, signed or not, non-UTF-8 bodies included):
/// never a 5xx, always the answer the pure parser and token check predict, with its stable code, and a refused
/// call stores nothing.
#[test]
fn spi_over_http_agrees_with_the_parser_and_stores_nothing_it_refuses() {
    let app = Running::start();
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let strategy = (
        prop_oneof![1 => Just(String::new()), 2 => raw_form()],
        prop::bool::weighted(0.75),
        prop_oneof![
            3 => Just(vec![]),
            2 => raw_form().prop_map(String::into_bytes),
            1 => prop::collection::vec(any::<u8>(), 1..64),
        ],
    );
    let mut runner = TestRunner::new(config());
    let result = runner.run(&strategy, |(query, signed, mut body)| {
        let mut url = reqwest::Url::parse(&format!("{}/aliyun/spi", app.url)).unwrap();
        url.set_query((!query.is_empty()).then_some(query.as_str()));
        // The server hashes the query as the URL normalised it, followed by the body's pairs.
        let mut sent_query = url.query().unwrap_or("").to_string();
        if signed {
            let body_form = std::str::from_utf8(&body).ok().filter(|b| !b.is_empty());
            let whole = [Some(sent_query.as_str()), body_form].into_iter().flatten().filter(|p| !p.is_empty());
            let whole = whole.collect::<Vec<_>>().join("&");
            let token = spi_token(&parse_form(&whole).unwrap_or_default(), KEY);
            if body_form.is_some() {
                body.extend_from_slice(format!("&token={token}").as_bytes());
            } else {
                sent_query = if sent_query.is_empty() {
                    format!("token={token}")
                } else {
                    format!("{sent_query}&token={token}")
                };
                url.set_query(Some(&sent_query));
            }
        }
        let (want_status, want_code) = spi_oracle(&sent_query, &body);
        let before = if want_status >= 400 { Some(app.entity_count(&http)) } else { None };
        let (status, location, answer) = app.sys.block_on(async {
            let request = if body.is_empty() {
                http.get(url.clone())
            } else {
                http.post(url.clone()).header("content-type", "application/x-www-form-urlencoded").body(body.clone())
            };
            let r = request.send().await.expect("the service answers");
            let status = r.status().as_u16();
            let location = r.headers().get("location").and_then(|l| l.to_str().ok()).unwrap_or("").to_string();
            (status, location, r.json::<Value>().await.unwrap_or(Value::Null))
        });
        prop_assert!(status < 500, "{status} {answer} for {sent_query:?} + {body:?}");
        prop_assert_eq!(status, want_status, "{} for {:?} + {:?}", answer, sent_query, String::from_utf8_lossy(&body));
        match status {
            200 => prop_assert!(answer["success"] == true || answer["instanceId"].is_string(), "{answer}"),
            302 => prop_assert!(location.starts_with("/aliyun/sso?"), "{location}"),
            _ => {
                prop_assert_eq!(&answer["success"], &json!(false));
                prop_assert_eq!(answer["code"].as_str(), want_code.as_deref(), "{}", answer);
            }
        }
        if let Some(before) = before {
            prop_assert_eq!(app.entity_count(&http), before, "a refused call stored something");
        }
        Ok(())
    });
    app.stop();
    if let Err(e) = result {
        panic!("{e}");
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Oversized bodies.

/// `body` padded with `pad` to `size` bytes.
fn padded(body: &str, pad: &str, size: usize) -> Vec<u8> {
    let mut out = body.as_bytes().to_vec();
    while out.len() < size {
        out.extend_from_slice(pad.as_bytes());
    }
    out
}

/// Sends a request with a chunked body (no `Content-Length`), so the limit must hold while the body streams in;
/// answers the status and the body.
fn chunked_post(url: &str, path: &str, content_type: &str, body: &[u8]) -> (u16, String) {
    let addr = url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {content_type}\r\nTransfer-Encoding: chunked\r\n\
         Connection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).unwrap();
    for chunk in body.chunks(4096) {
        // The server may answer and close before the whole body is sent; that is its right.
        if stream.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).is_err()
            || stream.write_all(chunk).is_err()
            || stream.write_all(b"\r\n").is_err()
        {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text)
}

/// Bodies over the limits (the JSON API 64 KiB, the SPI 256 KiB, page forms 16 KiB), with and without a
/// `Content-Length`, are refused with 413 and the stable code `payload_too_large`, and nothing of them is
/// stored: each padded body is a request that would have succeeded at its normal size, as the same request at
/// its normal size afterwards shows.
#[test]
fn oversized_bodies_are_refused_with_413_and_store_nothing() {
    let app = Running::start();
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let post = |path: &str, token: Option<&str>, content_type: &str, body: Vec<u8>, cookie: Option<&str>| {
        app.sys.block_on(async {
            let mut r = http.post(format!("{}{path}", app.url)).header("content-type", content_type).body(body);
            if let Some(t) = token {
                r = r.bearer_auth(t);
            }
            if let Some(c) = cookie {
                r = r.header("cookie", c);
            }
            let r = r.send().await.expect("the service answers");
            let status = r.status().as_u16();
            let ct = r.headers().get("content-type").and_then(|c| c.to_str().ok()).unwrap_or("").to_string();
            (status, ct, r.text().await.unwrap_or_default())
        })
    };
    let json_code =
        |text: &str| serde_json::from_str::<Value>(text).ok().and_then(|v| v["code"].as_str().map(String::from));

    // The JSON API: a registration padded with whitespace past 64 KiB.
    let register = json!({"email": "big@example.com", "password": "correct horse battery", "name": "Big"}).to_string();
    let (s, _, text) = post("/api/v1/accounts", None, "application/json", padded(&register, " ", 64 * 1024 + 1), None);
    assert_eq!((s, json_code(&text).as_deref()), (413, Some("payload_too_large")), "{text}");
    let (s, text) = chunked_post(&app.url, "/api/v1/accounts", "application/json", &padded(&register, " ", 80 * 1024));
    assert_eq!(s, 413, "chunked: {text}");
    assert!(text.contains("payload_too_large"), "{text}");
    let (s, _, text) = post("/api/v1/accounts", None, "application/json", register.clone().into_bytes(), None);
    assert_eq!(s, 201, "the same registration at its normal size is new: {text}");
    let org = serde_json::from_str::<Value>(&text).unwrap()["org_id"].as_str().unwrap().to_string();

    // Usage records: a valid record padded past 64 KiB, with the service token.
    let now = app.clock.now();
    let record = json!({"record_id": "rec-big", "org_id": org, "resource_id": "cluster-1", "cu_type": "performance",
                        "cu": 1.0, "start": now - TimeDelta::hours(1), "end": now})
    .to_string();
    let (s, _, text) = post("/api/v1/usage", Some(SVC), "application/json", padded(&record, "\n", 64 * 1024 + 1), None);
    assert_eq!((s, json_code(&text).as_deref()), (413, Some("payload_too_large")), "{text}");
    let metering = app.sys.block_on(async {
        let r = http.get(format!("{}/api/v1/ops/orgs/{org}/metering", app.url)).bearer_auth(OP).send().await.unwrap();
        r.json::<Value>().await.unwrap()
    });
    assert_eq!(metering["unbilled"]["records"], 0, "nothing was stored: {metering}");
    let (s, _, text) = post("/api/v1/usage", Some(SVC), "application/json", record.into_bytes(), None);
    assert_eq!(s, 201, "{text}");
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap()["stored"], "new", "{text}");

    // The SPI: a signed createInstance form padded with empty segments past its 256 KiB.
    let create = sign(&encode_query([
        ("action", "createInstance"),
        ("aliUid", "1688000000000777"),
        ("orderBizId", "big-order"),
        ("orderId", "big-order-1"),
        ("productCode", "cmgj00063418"),
        ("skuId", "payg"),
    ]));
    let form = "application/x-www-form-urlencoded";
    let mut big = padded("", "&", 256 * 1024 + 1);
    big.extend_from_slice(create.as_bytes());
    let (s, _, text) = post("/aliyun/spi", None, form, big, None);
    assert_eq!((s, json_code(&text).as_deref()), (413, Some("payload_too_large")), "{text}");
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap()["success"], false);
    let (s, text) = chunked_post(&app.url, "/aliyun/spi", form, &padded(&create, "&", 300 * 1024));
    assert_eq!(s, 413, "chunked: {text}");
    let (status, _) = app.sys.block_on(async {
        let r = http.get(format!("{}/api/v1/ops/entities/subscription/big-order", app.url)).bearer_auth(OP);
        let r = r.send().await.unwrap();
        (r.status().as_u16(), ())
    });
    assert_eq!(status, 404, "no subscription was created");
    let (s, _, text) = post("/aliyun/spi", None, form, create.into_bytes(), None);
    assert_eq!(s, 200, "the same call at its normal size is served: {text}");

    // The page forms (16 KiB): a registration with a valid CSRF pair, padded; then login, logout, binding.
    let csrf = "ab".repeat(32);
    let cookie = format!("mf_csrf={csrf}");
    let page_form = encode_query([
        ("csrf", csrf.as_str()),
        ("email", "pages-big@example.com"),
        ("name", "Pages"),
        ("password", "correct horse battery"),
    ]);
    for path in ["/register", "/login", "/logout", "/bind/big-order"] {
        let (s, ct, text) = post(path, None, form, padded(&page_form, "&", 16 * 1024 + 1), Some(&cookie));
        assert_eq!(s, 413, "{path}: {text}");
        assert!(ct.starts_with("text/html"), "{path}: a page answers with a page: {ct}");
        assert!(text.contains("data-code=\"payload_too_large\""), "{path}: {text}");
    }
    let (s, _, text) = post(
        "/api/v1/sessions",
        None,
        "application/json",
        json!({"email": "pages-big@example.com", "password": "correct horse battery"}).to_string().into_bytes(),
        None,
    );
    assert_eq!(s, 401, "the oversized registration created no account: {text}");
    let (s, _, text) = post("/register", None, form, page_form.into_bytes(), Some(&cookie));
    assert_eq!(s, 303, "the same registration at its normal size goes through: {text}");
    app.stop();
}

/// The real definitions load; the mutation tests above start from them.
#[test]
fn the_real_definitions_load() {
    for (file, source, catalog) in real_definitions() {
        let d = Definition::parse(file, source, &catalog).unwrap_or_else(|e| panic!("{e}"));
        let names: BTreeSet<_> = d.states.iter().map(|s| s.name.clone()).collect();
        assert_eq!(names.len(), d.states.len());
        assert!(!duration_fields(&toml::from_str(source).unwrap()).is_empty(), "{file} has durations to mutate");
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Billing exactly: intervals are priced at the precision they come in.

proptest! {
    #![proptest_config(config())]

    /// Any partition of an hour into contiguous records, with boundaries at any nanosecond, bills exactly
    /// 1250 units for 1 CU 性能型 (whole seconds lost the fraction of a second of every record), and split over
    /// two windows at any instant still adds up to 1250 with the carried fraction.
    #[test]
    fn any_partition_of_an_hour_bills_1250(
        cuts in prop::collection::vec(1u64..3_600_000_000_000, 0..40),
        split in 1u64..3_600_000_000_000,
    ) {
        use marketflow::app::usage::{window_numerators, UsageRecord};
        use marketflow::domain::pricing::settle;
        let prices = Prices::builtin().unwrap();
        let hour = Utc.with_ymd_and_hms(2026, 12, 4, 9, 0, 0).unwrap();
        let at = |ns: u64| hour + TimeDelta::nanoseconds(ns as i64);
        let mut bounds: Vec<u64> = cuts.into_iter().collect::<BTreeSet<_>>().into_iter().collect();
        bounds.insert(0, 0);
        bounds.push(3_600_000_000_000);
        let records: Vec<UsageRecord> = bounds
            .windows(2)
            .enumerate()
            .map(|(i, w)| UsageRecord {
                record_id: format!("r{i}"),
                org_id: OrgId::parse("org_0123456789abcdef0123456789abcdef".to_string()).unwrap(),
                resource_id: "cluster-1".into(),
                cu_type: "performance".into(),
                milli_cu: MilliCu(1000),
                start: at(w[0]),
                end: at(w[1]),
                received_at: at(w[1]),
            })
            .collect();
        let whole: u128 = window_numerators(&prices, &records, at(0), at(3_600_000_000_000)).values().sum();
        prop_assert_eq!(settle(whole, 0), (1250, 0));
        let first: u128 = window_numerators(&prices, &records, at(0), at(split)).values().sum();
        let second: u128 = window_numerators(&prices, &records, at(split), at(3_600_000_000_000)).values().sum();
        let (a, carry) = settle(first, 0);
        let (b, rest) = settle(second, carry);
        prop_assert_eq!((a + b, rest), (1250, 0));
    }
}
