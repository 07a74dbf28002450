//! Key encodings shared by every backend: big-endian numbers and NUL-separated strings, so that byte order is
//! the order the engine scans in (timers by due time, journals by sequence number).

use chrono::{DateTime, Utc};

/// Separator between key components; ids never contain it (checked when they are parsed).
pub const SEP: u8 = 0;

/// Appends a string component and a separator.
pub fn push_str(key: &mut Vec<u8>, s: &str) {
    key.extend_from_slice(s.as_bytes());
    key.push(SEP);
}

/// Appends a u64 in big-endian order.
pub fn push_u64(key: &mut Vec<u8>, n: u64) {
    key.extend_from_slice(&n.to_be_bytes());
}

/// Encodes a time as milliseconds since the epoch, shifted so that byte order is time order for all of i64.
pub fn time_key(t: DateTime<Utc>) -> u64 {
    (t.timestamp_millis() as u64) ^ (1u64 << 63)
}

/// The inverse of [`time_key`].
pub fn time_from_key(k: u64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_millis((k ^ (1u64 << 63)) as i64)
}

/// Reads a big-endian u64 at `at`.
pub fn read_u64(key: &[u8], at: usize) -> Option<u64> {
    key.get(at..at + 8).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes)
}

/// Splits NUL-separated string components.
pub fn split_strs(key: &[u8]) -> Vec<&str> {
    key.split(|b| *b == SEP).filter_map(|p| std::str::from_utf8(p).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_keys_sort_by_time() {
        let a = DateTime::from_timestamp_millis(-5).unwrap();
        let b = DateTime::from_timestamp_millis(3).unwrap();
        assert!(time_key(a).to_be_bytes() < time_key(b).to_be_bytes());
        assert_eq!(time_from_key(time_key(b)), Some(b));
    }
}
