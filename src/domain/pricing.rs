//! Prices and the arithmetic of metering: integer marketplace units plus a carried fraction, never floats.
//!
//! A usage record of `cu` (in thousandths, "milli-CU") over `n` nanoseconds at `p` units per CU-hour is worth
//! `n × milli_cu × p / 3_600_000_000_000_000` units: intervals count at the precision they come in, so contiguous
//! records with sub-second boundaries add up to exactly the hour (whole seconds lost the fraction of every
//! record). Each window's exact numerator is summed, the carry of earlier windows is added, whole units are billed
//! and the remainder is carried, so the units of all windows add up to the exact total, rounded down once at the
//! very end.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Nanoseconds per hour.
pub const NANOS_PER_HOUR: u128 = 3_600_000_000_000;
/// The denominator of a numerator: nanoseconds per hour × milli-CU per CU.
pub const DENOMINATOR: u128 = NANOS_PER_HOUR * 1000;
/// Builds before nanosecond precision counted whole seconds: their numerators and carries (over seconds per hour ×
/// milli-CU) times this are the same fraction over [`DENOMINATOR`].
pub const SECONDS_SCALE: u128 = 1_000_000_000;

/// One price of the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub description: String,
    /// Units per CU-hour until the first change (from the beginning of time).
    pub units_per_cu_hour: u64,
    pub metering_key: String,
    pub metering_assit: String,
    /// Later prices, each from the instant it takes effect, in time order: a price change is announced ahead and
    /// usage on either side of it is billed at the price in force when it ran, however late it is reported.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<PriceChange>,
}

/// A price from an instant on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceChange {
    /// When it takes effect (RFC 3339, e.g. `2027-01-01T00:00:00+08:00` for midnight in Beijing).
    pub from: DateTime<Utc>,
    pub units_per_cu_hour: u64,
}

impl Price {
    /// Units per CU-hour in force at `t`.
    pub fn units_at(&self, t: DateTime<Utc>) -> u64 {
        self.changes.iter().rev().find(|c| c.from <= t).map_or(self.units_per_cu_hour, |c| c.units_per_cu_hour)
    }
}

/// The price catalog (`config/catalog.toml`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    pub unit_yuan: String,
    pub prices: BTreeMap<String, Price>,
}

/// The built-in catalog (the repository's `config/catalog.toml`).
pub const BUILTIN_CATALOG: &str = include_str!("../../config/catalog.toml");

/// A catalog that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("price catalog: {0}")]
pub struct CatalogError(pub String);

impl Catalog {
    pub fn parse(text: &str) -> Result<Self, CatalogError> {
        let c: Catalog = toml::from_str(text).map_err(|e| CatalogError(e.to_string()))?;
        if c.prices.is_empty() {
            return Err(CatalogError("no prices".into()));
        }
        if yuan(1, &c.unit_yuan).is_none() {
            return Err(CatalogError(format!("unit_yuan `{}` is not a plain decimal such as 0.001", c.unit_yuan)));
        }
        for (k, p) in &c.prices {
            if p.units_per_cu_hour == 0 || p.metering_key.is_empty() || p.metering_assit.is_empty() {
                return Err(CatalogError(format!(
                    "price `{k}` needs units_per_cu_hour > 0, a metering_key and a metering_assit"
                )));
            }
            if p.changes.iter().any(|c| c.units_per_cu_hour == 0) {
                return Err(CatalogError(format!("price `{k}`: every change needs units_per_cu_hour > 0")));
            }
            if p.changes.windows(2).any(|w| w[0].from >= w[1].from) {
                return Err(CatalogError(format!("price `{k}`: changes must be in time order, one per instant")));
            }
        }
        Ok(c)
    }

    pub fn builtin() -> Result<Self, CatalogError> {
        Self::parse(BUILTIN_CATALOG)
    }

    pub fn price(&self, cu_type: &str) -> Option<&Price> {
        self.prices.get(cu_type)
    }
}

/// CU count in thousandths, parsed from the API's decimal number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MilliCu(pub u64);

impl MilliCu {
    /// At most 3 decimals, more than 0 and at most 10,000 CU.
    pub fn from_f64(cu: f64) -> Option<Self> {
        if !cu.is_finite() || cu <= 0.0 || cu > 10_000.0 {
            return None;
        }
        let milli = (cu * 1000.0).round();
        // A positive amount below 1e-9 CU passes the tolerance check, yet rounds to zero thousandths.
        if milli < 1.0 || (milli / 1000.0 - cu).abs() > 1e-9 {
            return None;
        }
        Some(Self(milli as u64))
    }
}

/// The numerator (units × [`DENOMINATOR`]) of `milli_cu` at `price` for the overlap of `[start, end)` and the
/// window `[ws, we)`.
pub fn numerator(
    price: &Price,
    milli_cu: MilliCu,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    ws: DateTime<Utc>,
    we: DateTime<Utc>,
) -> u128 {
    let from = start.max(ws);
    let to = end.min(we);
    if to <= from {
        return 0;
    }
    // The overlap cut where the price changes, each piece at the price in force then.
    let mut cuts: Vec<DateTime<Utc>> = vec![from];
    cuts.extend(price.changes.iter().map(|c| c.from).filter(|t| *t > from && *t < to));
    cuts.push(to);
    cuts.windows(2)
        .map(|w| {
            // Intervals are at most a day (checked when records arrive), far inside i64 nanoseconds.
            let nanos = (w[1] - w[0]).num_nanoseconds().unwrap_or(0).max(0) as u128;
            nanos * milli_cu.0 as u128 * price.units_at(w[0]) as u128
        })
        .sum()
}

/// `units` in yuan at `unit_yuan` (the catalog's decimal string, e.g. `0.001`), exactly: integer arithmetic on
/// the decimal's digits, as many decimals as the unit has. `None` for a unit that is not a plain decimal.
pub fn yuan(units: u64, unit_yuan: &str) -> Option<String> {
    let (whole, frac) = unit_yuan.split_once('.').unwrap_or((unit_yuan, ""));
    if whole.is_empty() && frac.is_empty()
        || !whole.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
        || frac.len() > 18
    {
        return None;
    }
    let mantissa: u128 = format!("{whole}{frac}").parse().ok()?;
    let scaled = units as u128 * mantissa;
    if frac.is_empty() {
        return Some(scaled.to_string());
    }
    let div = 10u128.pow(frac.len() as u32);
    Some(format!("{}.{:0width$}", scaled / div, scaled % div, width = frac.len()))
}

/// Whole units of `numerator + carry`, and the new carry.
pub fn settle(numerator: u128, carry: u128) -> (u64, u128) {
    let total = numerator + carry;
    ((total / DENOMINATOR).min(u64::MAX as u128) as u64, total % DENOMINATOR)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeDelta, TimeZone};

    fn t(h: i64, m: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 27, 0, 0, 0).unwrap() + TimeDelta::hours(h) + TimeDelta::minutes(m)
    }

    fn perf() -> Price {
        Catalog::builtin().unwrap().price("performance").unwrap().clone()
    }

    #[test]
    fn a_price_change_bills_each_side_at_its_own_price() {
        let mut p = perf();
        p.changes = vec![PriceChange { from: t(8, 30), units_per_cu_hour: 2500 }];
        // Half an hour at 1250, half an hour at 2500.
        let n = numerator(&p, MilliCu(1000), t(8, 0), t(9, 0), t(8, 0), t(9, 0));
        assert_eq!(settle(n, 0), (625 + 1250, 0));
        assert_eq!(p.units_at(t(8, 29)), 1250);
        assert_eq!(p.units_at(t(8, 30)), 2500);
        // Only the window's part counts, at the price of its time.
        let n = numerator(&p, MilliCu(1000), t(8, 0), t(9, 0), t(8, 45), t(9, 0));
        assert_eq!(settle(n, 0), (625, 0));
    }

    #[test]
    fn changes_out_of_order_or_free_are_refused() {
        let base = BUILTIN_CATALOG.to_string();
        let with = |changes: &str| Catalog::parse(&format!("{base}\n{changes}"));
        let ok =
            with("[[prices.performance.changes]]\nfrom = \"2027-01-01T00:00:00+08:00\"\nunits_per_cu_hour = 1300\n");
        let c = ok.unwrap();
        let jan = "2026-12-31T16:00:00Z".parse::<DateTime<Utc>>().unwrap();
        assert_eq!(c.price("performance").unwrap().units_at(jan), 1300);
        assert_eq!(c.price("performance").unwrap().units_at(jan - chrono::TimeDelta::nanoseconds(1)), 1250);
        let free = with("[[prices.performance.changes]]\nfrom = \"2027-01-01T00:00:00Z\"\nunits_per_cu_hour = 0\n");
        assert!(free.is_err());
        let backwards = with(
            "[[prices.performance.changes]]\nfrom = \"2027-02-01T00:00:00Z\"\nunits_per_cu_hour = 1\n\
             [[prices.performance.changes]]\nfrom = \"2027-01-01T00:00:00Z\"\nunits_per_cu_hour = 2\n",
        );
        assert!(backwards.unwrap_err().0.contains("time order"));
    }

    #[test]
    fn yuan_are_exact_decimals_of_units() {
        assert_eq!(yuan(1250, "0.001").as_deref(), Some("1.250"));
        assert_eq!(yuan(114_990, "0.001").as_deref(), Some("114.990"));
        assert_eq!(yuan(7, "0.001").as_deref(), Some("0.007"));
        assert_eq!(yuan(u64::MAX, "0.001").as_deref(), Some("18446744073709551.615"));
        assert_eq!(yuan(3, "2").as_deref(), Some("6"));
        assert_eq!(yuan(3, "1e-3"), None);
        assert_eq!(yuan(3, "."), None);
    }

    #[test]
    fn one_cu_for_an_hour_is_1250_units() {
        let n = numerator(&perf(), MilliCu(1000), t(8, 0), t(9, 0), t(8, 0), t(9, 0));
        assert_eq!(settle(n, 0), (1250, 0));
    }

    #[test]
    fn three_cu_for_twenty_minutes_is_1250_units() {
        let n = numerator(&perf(), MilliCu::from_f64(3.0).unwrap(), t(8, 10), t(8, 30), t(8, 0), t(9, 0));
        assert_eq!(settle(n, 0), (1250, 0));
    }

    #[test]
    fn only_the_overlap_with_the_window_counts() {
        let n = numerator(&perf(), MilliCu(1000), t(7, 30), t(8, 30), t(8, 0), t(9, 0));
        assert_eq!(settle(n, 0).0, 625);
        assert_eq!(numerator(&perf(), MilliCu(1000), t(6, 0), t(7, 0), t(8, 0), t(9, 0)), 0);
    }

    #[test]
    fn fractions_carry_so_the_sum_over_windows_is_exact() {
        // 0.001 CU for 7 seconds per window: 0.00243 units each; 1,000 windows.
        let p = perf();
        let mut carry = 0;
        let mut billed = 0u64;
        let mut exact = 0u128;
        for i in 0..1000 {
            let ws = t(0, 0) + TimeDelta::hours(i);
            let n = numerator(&p, MilliCu(1), ws, ws + TimeDelta::seconds(7), ws, ws + TimeDelta::hours(1));
            exact += n;
            let (u, c) = settle(n, carry);
            billed += u;
            carry = c;
        }
        assert_eq!(billed as u128, exact / DENOMINATOR, "no unit lost or invented by rounding");
        assert_eq!(carry, exact % DENOMINATOR);
        assert_eq!(billed, 2, "1000 × 7 s × 0.001 CU × 1250/h = 2.43 units");
    }

    #[test]
    fn cu_counts_are_parsed_exactly() {
        assert_eq!(MilliCu::from_f64(1.5), Some(MilliCu(1500)));
        assert_eq!(MilliCu::from_f64(0.001), Some(MilliCu(1)));
        assert_eq!(MilliCu::from_f64(0.0005), None);
        assert_eq!(MilliCu::from_f64(1e-12), None, "positive, but zero thousandths");
        assert_eq!(MilliCu::from_f64(-1.0), None);
        assert_eq!(MilliCu::from_f64(f64::NAN), None);
        assert_eq!(MilliCu::from_f64(1e9), None);
    }
}
