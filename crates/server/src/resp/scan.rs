//! `SCAN cursor [MATCH pattern] [COUNT count] [TYPE type]` and `KEYS pattern`, over the
//! cluster's listing (`core::node::listing`).
//!
//! - `0` starts (and, returned, ends) a scan; any other cursor is a 64-bit number naming the
//!   last key returned, kept by the node that gave it for 15 minutes
//!   ([`super::cursors::Cursors`]): clients
//!   keep cursors as numbers (redis-cli parses them with `strtoull`, redis-py with `int`), so a
//!   key cannot travel in one. A scan goes on through the same node.
//! - `MATCH` takes every glob pattern Redis does (`*`, `?`, `[...]`, `[^...]`, `\`): the listing
//!   is asked for the pattern's literal prefix (everything before its first special
//!   character), and each key is matched. As in Redis, a page may then hold fewer keys than
//!   `COUNT`, even none, with a cursor to go on. A pattern with no literal prefix (`*foo`)
//!   works but reads every key.
//! - `COUNT` is the keys listed per call (1 to 10 000; default 10), `TYPE` anything but
//!   `string` gives an empty scan: every value here is a string.
//! - `KEYS pattern` lists up to [`KEYS_CAP`] keys and refuses, naming `SCAN`, beyond it.

use super::codec::{array, bulk};
use super::commands::{RespError, RespState, call};
use dynamokv_core::message::{ClientRequest, Reply};
use dynamokv_core::node::listing::MAX_LIMIT;
use std::sync::Arc;

/// Most keys `KEYS` returns; past it, it refuses and names `SCAN`.
pub const KEYS_CAP: usize = 10_000;

/// Most keys `KEYS` looks at (matching or not) before it refuses.
const KEYS_SCAN_CAP: usize = 1_000_000;

/// The literal prefix of a glob pattern: everything before its first special character.
pub fn literal_prefix(pattern: &[u8]) -> &[u8] {
    let end = pattern
        .iter()
        .position(|c| matches!(c, b'*' | b'?' | b'[' | b'\\'))
        .unwrap_or(pattern.len());
    &pattern[..end]
}

/// Whether `s` matches the glob `pattern` (Redis's `stringmatchlen`, case-sensitive).
pub fn glob_match(pattern: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i) = (0usize, 0usize);
    // Where to resume after the last '*': (pattern index after it, string index it matched to).
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    star = Some((p + 1, i));
                    p += 1;
                    continue;
                }
                b'?' => {
                    p += 1;
                    i += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, next)) = class(pattern, p, s[i])
                        && matched
                    {
                        p = next;
                        i += 1;
                        continue;
                    }
                }
                b'\\' if p + 1 < pattern.len() && pattern[p + 1] == s[i] => {
                    p += 2;
                    i += 1;
                    continue;
                }
                b'\\' if p + 1 < pattern.len() => {}
                c if c == s[i] => {
                    p += 1;
                    i += 1;
                    continue;
                }
                _ => {}
            }
        }
        // Mismatch: let the last '*' take one more byte, if there was one.
        match star {
            Some((sp, si)) => {
                p = sp;
                i = si + 1;
                star = Some((sp, si + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|c| *c == b'*')
}

/// The class `[...]` starting at `pattern[p]` against `c`: whether it matches, and the index
/// after the class; `None` if the class is not closed.
fn class(pattern: &[u8], p: usize, c: u8) -> Option<(bool, usize)> {
    let mut j = p + 1;
    let negate = pattern.get(j) == Some(&b'^');
    if negate {
        j += 1;
    }
    let mut matched = false;
    let mut first = true;
    while j < pattern.len() && (first || pattern[j] != b']') {
        first = false;
        let lo = if pattern[j] == b'\\' && j + 1 < pattern.len() {
            j += 1;
            pattern[j]
        } else {
            pattern[j]
        };
        if pattern.get(j + 1) == Some(&b'-') && j + 2 < pattern.len() && pattern[j + 2] != b']' {
            let hi = pattern[j + 2];
            let (a, b) = if lo <= hi { (lo, hi) } else { (hi, lo) };
            matched |= (a..=b).contains(&c);
            j += 3;
        } else {
            matched |= lo == c;
            j += 1;
        }
    }
    if j >= pattern.len() {
        return None;
    }
    Some((matched != negate, j + 1))
}

/// One page of the cluster's keys starting with `prefix`, after `after`.
async fn page(
    state: &RespState,
    prefix: &[u8],
    after: Option<Vec<u8>>,
    limit: u32,
) -> Result<(Vec<Vec<u8>>, Option<Vec<u8>>), RespError> {
    let request = ClientRequest::List {
        prefix: prefix.to_vec(),
        after,
        limit,
        objects: false,
    };
    match call(state, "listing", request).await? {
        Reply::Keys { keys, next, .. } => Ok((keys, next)),
        _ => Err(RespError::WrongReply("listing", "other reply")),
    }
}

/// Runs `SCAN` or `KEYS`; its reply.
pub async fn run(state: Arc<RespState>, args: Vec<Vec<u8>>) -> Vec<u8> {
    let started = std::time::Instant::now();
    let mut out = Vec::new();
    let result = if args[0].eq_ignore_ascii_case(b"KEYS") {
        keys(&state, &args, &mut out).await
    } else {
        scan(&state, &args, &mut out).await
    };
    let outcome = match result {
        Ok(()) => "ok",
        Err(e) => {
            out.clear();
            super::codec::error(&mut out, &e.to_string());
            "error"
        }
    };
    crate::metrics::record("resp", "list", outcome, started.elapsed());
    out
}

/// `SCAN cursor [MATCH pattern] [COUNT count] [TYPE type]`.
pub async fn scan(state: &RespState, args: &[Vec<u8>], out: &mut Vec<u8>) -> Result<(), RespError> {
    let Some(cursor) = args.get(1) else {
        return Err(RespError::WrongArity("scan".into()));
    };
    let after = state
        .cursors
        .resolve(cursor)
        .map_err(|e| RespError::Syntax(e.into()))?;
    let (mut pattern, mut count, mut strings) = (None::<&[u8]>, 10u32, true);
    let mut rest = args[2..].iter();
    while let Some(option) = rest.next() {
        let value = rest.next();
        match (option.to_ascii_uppercase().as_slice(), value) {
            (b"MATCH", Some(p)) => pattern = Some(p),
            (b"COUNT", Some(c)) => {
                count = std::str::from_utf8(c)
                    .ok()
                    .and_then(|c| c.parse::<u64>().ok())
                    .filter(|c| *c >= 1)
                    .ok_or_else(|| {
                        RespError::Syntax("value is not an integer or out of range".into())
                    })?
                    .min(u64::from(MAX_LIMIT)) as u32;
            }
            (b"TYPE", Some(t)) => strings = t.eq_ignore_ascii_case(b"string"),
            _ => return Err(RespError::Syntax("syntax error".into())),
        }
    }
    let prefix = pattern.map_or(&b""[..], literal_prefix);
    let (keys, next) = if strings {
        page(state, prefix, after, count).await?
    } else {
        (Vec::new(), None)
    };
    let keys: Vec<Vec<u8>> = keys
        .into_iter()
        .filter(|k| pattern.is_none_or(|p| glob_match(p, k)))
        .collect();
    let cursor = next.map_or(0, |k| state.cursors.after(k)).to_string();
    array(out, 2);
    bulk(out, Some(cursor.as_bytes()));
    array(out, keys.len());
    for k in &keys {
        bulk(out, Some(k));
    }
    Ok(())
}

/// `KEYS pattern`: every matching key, up to [`KEYS_CAP`].
pub async fn keys(state: &RespState, args: &[Vec<u8>], out: &mut Vec<u8>) -> Result<(), RespError> {
    let [_, pattern] = args else {
        return Err(RespError::WrongArity("keys".into()));
    };
    let prefix = literal_prefix(pattern);
    let (mut found, mut looked, mut after) = (Vec::new(), 0usize, None);
    loop {
        let (keys, next) = page(state, prefix, after, MAX_LIMIT).await?;
        looked += keys.len();
        found.extend(keys.into_iter().filter(|k| glob_match(pattern, k)));
        if found.len() > KEYS_CAP || looked > KEYS_SCAN_CAP {
            return Err(RespError::Syntax(format!(
                "KEYS stops at {KEYS_CAP} keys and {KEYS_SCAN_CAP} keys looked at, and this pattern goes past that: use SCAN with MATCH (redis-cli --scan --pattern)"
            )));
        }
        match next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    array(out, found.len());
    for k in &found {
        bulk(out, Some(k));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_as_redis_does() {
        let yes = [
            ("*", "anything"),
            ("user:*", "user:1"),
            ("h?llo", "hello"),
            ("h[ae]llo", "hallo"),
            ("h[^e]llo", "hallo"),
            ("h[a-b]llo", "hbllo"),
            ("*:1", "user:1"),
            ("a*b*c", "aXXbYYc"),
            ("\\*x", "*x"),
            ("", ""),
        ];
        for (p, s) in yes {
            assert!(
                glob_match(p.as_bytes(), s.as_bytes()),
                "{p} should match {s}"
            );
        }
        let no = [
            ("user:*", "users"),
            ("h?llo", "hllo"),
            ("h[ae]llo", "hillo"),
            ("h[^e]llo", "hello"),
            ("a*b", "abc"),
            ("\\*x", "ax"),
        ];
        for (p, s) in no {
            assert!(
                !glob_match(p.as_bytes(), s.as_bytes()),
                "{p} should not match {s}"
            );
        }
        assert_eq!(literal_prefix(b"user:*"), b"user:");
        assert_eq!(literal_prefix(b"*x"), b"");
        assert_eq!(literal_prefix(b"plain"), b"plain");
    }
}
