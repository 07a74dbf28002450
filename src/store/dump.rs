//! `marketflow export` and `marketflow import`: every table of the store in one portable file, the way to back up
//! sled and to move from sled to PostgreSQL (or back). The cluster's own state (leases, nodes, the commit log) is
//! not a table of the store and is not in the file, so that sled → file → PostgreSQL → file gives the same bytes.
//!
//! The format, version 1, is text, one line each:
//! ```text
//! marketflow-export 1
//! <table> <key, base64> <value, base64>      (every row, tables in byte order of their one-letter name, keys in
//! ...                                          byte order within a table: the order of the store's scans)
//! end <rows>
//! ```
//! The table is the letter the store keys it by (`e` entities, `j` journal, ...). The last line lets an import
//! tell a whole file from one cut short.

use std::io::{BufRead, Write};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use super::{Batch, Error, Store, Table};

/// The first line of a file of this format.
pub const HEADER: &str = "marketflow-export 1";

/// Every table, in the order of the file (their letters' byte order).
pub fn tables() -> Vec<Table> {
    Table::ALL.to_vec()
}

fn table_of(letter: &str) -> Option<Table> {
    tables().into_iter().find(|t| letter.len() == 1 && letter.as_bytes()[0] == *t as u8)
}

fn io(e: std::io::Error) -> Error {
    Error::Io(e)
}

/// Writes every row of `store`, from one consistent snapshot ([`Store::snapshot`]); answers the number of rows.
pub fn export(store: &dyn Store, out: &mut dyn Write) -> Result<u64, Error> {
    writeln!(out, "{HEADER}").map_err(io)?;
    let mut rows = 0u64;
    let mut line = String::new();
    store.snapshot(&mut |table, key, value| {
        line.clear();
        line.push(table as u8 as char);
        line.push(' ');
        STANDARD.encode_string(key, &mut line);
        line.push(' ');
        STANDARD.encode_string(value, &mut line);
        line.push('\n');
        out.write_all(line.as_bytes()).map_err(io)?;
        rows += 1;
        Ok(())
    })?;
    writeln!(out, "end {rows}").map_err(io)?;
    out.flush().map_err(io)?;
    Ok(rows)
}

/// Why a file cannot be imported.
fn bad(line: usize, why: impl std::fmt::Display) -> Error {
    Error::Corrupt { what: format!("the export file, line {line}"), detail: why.to_string() }
}

/// Whether `store` holds no row at all (an import goes only into an empty store).
pub fn is_empty(store: &dyn Store) -> Result<bool, Error> {
    for t in tables() {
        let rows = super::wait(store.scan(t, std::ops::Bound::Unbounded, std::ops::Bound::Unbounded, 1, false))?;
        if !rows.is_empty() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Reads a file of [`export`] into an empty `store`, `batch` rows per commit; answers the number of rows. A file
/// cut short, or not in order, is refused (what was imported until then stays: import again into an empty store).
pub fn import(store: &dyn Store, input: &mut dyn BufRead, batch: usize) -> Result<u64, Error> {
    if !is_empty(store)? {
        return Err(Error::Backend("the store is not empty: import goes into an empty store only".into()));
    }
    let mut lines = input.lines();
    match lines.next() {
        Some(Ok(h)) if h == HEADER => {}
        Some(Ok(h)) => return Err(bad(1, format!("not an export of this format: {h:?}"))),
        Some(Err(e)) => return Err(io(e)),
        None => return Err(bad(1, "empty file")),
    }
    let (mut rows, mut pending) = (0u64, Batch::new());
    let mut last: Option<(u8, Vec<u8>)> = None;
    for (n, line) in lines.enumerate() {
        let number = n + 2;
        let line = line.map_err(io)?;
        if let Some(count) = line.strip_prefix("end ") {
            let count: u64 = count.parse().map_err(|_| bad(number, "an unreadable row count"))?;
            if count != rows {
                return Err(bad(number, format!("{rows} rows read, the file says {count}")));
            }
            if !pending.is_empty() {
                store.apply(&[std::mem::take(&mut pending)])?;
            }
            return Ok(rows);
        }
        let mut parts = line.splitn(3, ' ');
        let (Some(t), Some(k), Some(v)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad(number, "not `<table> <key> <value>`"));
        };
        let table = table_of(t).ok_or_else(|| bad(number, format!("no table `{t}`")))?;
        let key = STANDARD.decode(k).map_err(|e| bad(number, format!("key: {e}")))?;
        let value = STANDARD.decode(v).map_err(|e| bad(number, format!("value: {e}")))?;
        let here = (table as u8, key.clone());
        if last.as_ref().is_some_and(|l| *l >= here) {
            return Err(bad(number, "rows out of order (or twice)"));
        }
        last = Some(here);
        pending.put(table, key, value);
        rows += 1;
        if pending.len() >= batch.max(1) {
            store.apply(&[std::mem::take(&mut pending)])?;
        }
    }
    Err(bad(0, "the file ends without its `end` line: cut short"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    fn filled() -> MemoryStore {
        let s = MemoryStore::new();
        let mut b = Batch::new();
        b.put(Table::Entities, b"subscription\x001\x00".to_vec(), b"{}".to_vec());
        b.put(Table::Journal, vec![0, 1, 2, 255], vec![]);
        b.put(Table::TimerIndex, b"x".to_vec(), b" spaces and\nnewlines ".to_vec());
        b.add(Table::Meta, b"counter".to_vec(), 7);
        s.apply(&[b]).unwrap();
        s
    }

    #[test]
    fn an_export_imports_into_an_empty_store_and_exports_to_the_same_bytes() {
        let mut first = vec![];
        assert_eq!(export(&filled(), &mut first).unwrap(), 4);
        let text = String::from_utf8(first.clone()).unwrap();
        assert!(text.starts_with("marketflow-export 1\nT ") && text.ends_with("end 4\n"), "{text}");
        let copy = MemoryStore::new();
        assert_eq!(import(&copy, &mut first.as_slice(), 2).unwrap(), 4);
        let mut second = vec![];
        export(&copy, &mut second).unwrap();
        assert_eq!(first, second);
        assert!(import(&copy, &mut first.as_slice(), 2).is_err(), "not into a store that holds rows");
    }

    #[test]
    fn a_file_cut_short_or_out_of_order_is_refused() {
        let mut file = vec![];
        export(&filled(), &mut file).unwrap();
        let text = String::from_utf8(file).unwrap();
        let cut = text.rsplit_once("end").unwrap().0.to_string();
        assert!(import(&MemoryStore::new(), &mut cut.as_bytes(), 10).unwrap_err().to_string().contains("cut short"));
        let lines: Vec<&str> = text.lines().collect();
        let swapped = [lines[0], lines[2], lines[1], lines[3], lines[4], lines[5]].join("\n") + "\n";
        assert!(import(&MemoryStore::new(), &mut swapped.as_bytes(), 10).unwrap_err().to_string().contains("order"));
        assert!(import(&MemoryStore::new(), &mut "nope\n".as_bytes(), 10).is_err());
    }
}
