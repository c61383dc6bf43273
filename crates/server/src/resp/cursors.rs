//! The `SCAN` cursors a node gave: each a 64-bit number naming the last key of a page.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a node keeps a cursor it gave.
const CURSOR_TTL: Duration = Duration::from_secs(15 * 60);

/// Most cursors a node keeps (the oldest go first).
const MAX_CURSORS: usize = 65_536;

/// The cursors this node gave: number -> the last key of that page. Clients keep cursors as
/// 64-bit numbers (redis-cli sends back what `strtoull` made of them), so a cursor names a
/// position kept here rather than carrying the key.
#[derive(Debug, Default)]
pub struct Cursors {
    inner: Mutex<CursorTable>,
}

#[derive(Debug, Default)]
struct CursorTable {
    by_id: HashMap<u64, (Vec<u8>, Instant)>,
    order: VecDeque<u64>,
    next: u64,
}

impl Cursors {
    /// The key after which `cursor` goes on (`None`: from the start).
    /// The error text is the reply's, after `ERR`.
    pub fn resolve(&self, cursor: &[u8]) -> Result<Option<Vec<u8>>, &'static str> {
        let id: u64 = std::str::from_utf8(cursor)
            .ok()
            .and_then(|c| c.parse().ok())
            .ok_or("invalid cursor")?;
        if id == 0 {
            return Ok(None);
        }
        let table = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match table.by_id.get(&id) {
            Some((key, at)) if at.elapsed() < CURSOR_TTL => Ok(Some(key.clone())),
            _ => Err(
                "invalid cursor: a cursor is kept by the node that gave it, for 15 minutes; start the scan again with 0",
            ),
        }
    }

    /// A new cursor that goes on after `key`.
    pub fn after(&self, key: Vec<u8>) -> u64 {
        let mut table = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if table.next == 0 {
            // Numbers differ from one run of the node to the next: a cursor of an earlier run
            // is refused rather than taken for another position.
            table.next = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64 >> 8)
                .max(1);
        }
        let id = table.next;
        table.next = table.next.wrapping_add(1).max(1);
        while table.order.len() >= MAX_CURSORS {
            if let Some(old) = table.order.pop_front() {
                table.by_id.remove(&old);
            }
        }
        table.by_id.insert(id, (key, Instant::now()));
        table.order.push_back(id);
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_name_keys_and_refuse_garbage() {
        let cursors = Cursors::default();
        let a = cursors.after(b"user:1".to_vec());
        let b = cursors.after(vec![0, 255]);
        assert!(a != 0 && b != 0 && a != b);
        let resolve = |c: &str| cursors.resolve(c.as_bytes());
        assert_eq!(
            resolve(&a.to_string()).unwrap().as_deref(),
            Some(&b"user:1"[..])
        );
        assert_eq!(
            resolve(&b.to_string()).unwrap().as_deref(),
            Some(&[0u8, 255][..])
        );
        assert_eq!(resolve("0").unwrap(), None);
        for bad in ["", "-1", "12x", "18446744073709551616"] {
            assert!(resolve(bad).is_err(), "{bad}");
        }
        assert!(
            resolve(&(b + 1).to_string()).is_err(),
            "a cursor never given"
        );
    }
}
