//! Expiry over RESP, and `SET` with its options: `SET key value [NX|XX] [EX s|PX ms|EXAT t|
//! PXAT t|KEEPTTL]`, `EXPIRE`/`PEXPIRE key t [NX|XX|GT|LT]`, `TTL`/`PTTL`, `PERSIST`.
//!
//! A deadline is absolute: the coordinator's wall clock plus the time to live, kept by each
//! sibling and the same on every replica (docs/api.md, "Expiry"). `EXPIRE` and `PERSIST` read
//! the key at R and write its value again with the new deadline and the read's context; a key
//! with concurrent values is refused (write one first), and so is a counter (counters do not
//! expire). `NX`/`XX` are checked by the key's coordinator against a read at R: not
//! linearizable, so two `SET NX` through different nodes at once can both write (their values
//! become siblings).

use super::codec::{bulk, integer, simple};
use super::commands::{RespError, RespState, check_key, check_value, put, read, write};
use crate::node::now_ms;
use dynamokv_core::message::{ClientRequest, Condition, OpError};
use dynamokv_core::version::ValueKind;
use dynamokv_core::{Object, Sibling};

/// The only live value of `object`, if it has exactly one; `Err` when it has several.
fn single(object: &Object) -> Result<Option<&Sibling>, RespError> {
    let mut live = object.live();
    match (live.next(), live.next()) {
        (None, _) => Ok(None),
        (Some(s), None) => Ok(Some(s)),
        (Some(_), Some(_)) => Err(RespError::Syntax(format!(
            "the key holds {} concurrent values; SET one of them first",
            object.live().count()
        ))),
    }
}

/// How a `SET` expires its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lifetime {
    /// No deadline (plain `SET`).
    Forever,
    /// In this many ms.
    In(u64),
    /// At this wall-clock time, ms since the Unix epoch.
    At(u64),
    /// The deadline the key has now.
    Keep,
}

/// A positive whole number of `unit` ms from `word`, or the error Redis gives.
fn duration(word: &[u8], unit: u64, command: &str) -> Result<u64, RespError> {
    std::str::from_utf8(word)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .filter(|n| *n > 0)
        .and_then(|n| (n as u64).checked_mul(unit))
        .ok_or_else(|| RespError::Syntax(format!("invalid expire time in '{command}' command")))
}

/// `SET key value [NX|XX] [EX s|PX ms|EXAT t|PXAT t|KEEPTTL]`.
pub(super) async fn set(
    state: &RespState,
    mut args: Vec<Vec<u8>>,
    out: &mut Vec<u8>,
) -> Result<(), RespError> {
    let options = args.split_off(3);
    let value = args.pop().unwrap_or_default();
    let key = args.pop().unwrap_or_default();
    let syntax = || RespError::Syntax("syntax error".into());
    let (mut condition, mut lifetime) = (None::<bool>, None::<Lifetime>);
    let mut words = options.iter();
    while let Some(word) = words.next() {
        let upper = String::from_utf8_lossy(word).to_uppercase();
        match upper.as_str() {
            "NX" | "XX" if condition.is_none() => condition = Some(upper == "NX"),
            "EX" | "PX" | "EXAT" | "PXAT" if lifetime.is_none() => {
                let t = words.next().ok_or_else(syntax)?;
                let unit = if upper.starts_with('E') { 1000 } else { 1 };
                let ms = duration(t, unit, "set")?;
                lifetime = Some(if upper.ends_with("AT") {
                    Lifetime::At(ms)
                } else {
                    Lifetime::In(ms)
                });
            }
            "KEEPTTL" if lifetime.is_none() => lifetime = Some(Lifetime::Keep),
            "NX" | "XX" | "EX" | "PX" | "EXAT" | "PXAT" | "KEEPTTL" => return Err(syntax()),
            other => {
                return Err(RespError::Syntax(format!(
                    "SET option {other} is not supported; SET takes NX, XX, EX, PX, EXAT, PXAT and KEEPTTL"
                )));
            }
        }
    }
    check_value(state, &value)?;
    check_key(&key)?;
    let lifetime = lifetime.unwrap_or(Lifetime::Forever);
    // KEEPTTL needs the deadline the key has: a read at R first.
    let found = match lifetime {
        Lifetime::Keep => Some(read(state, key.clone(), None, None).await?),
        _ => None,
    };
    let now = now_ms();
    let ttl = match lifetime {
        Lifetime::Forever => None,
        Lifetime::In(ms) => Some(ms),
        // A deadline already past: the value expires at once.
        Lifetime::At(at) => Some(at.saturating_sub(now).max(1)),
        Lifetime::Keep => found
            .as_ref()
            .and_then(|o| super::commands::newest_sibling(o))
            .and_then(|s| s.expires)
            .map(|d| d.saturating_sub(now).max(1)),
    };
    // NX/XX: the key's coordinator checks them against a read at R and writes with its
    // context; a plain SET overwrites what the coordinator holds.
    let request = ClientRequest::Put {
        key,
        value: Some(value),
        context: None,
        w: None,
        pw: None,
        overwrite: condition.is_none(),
        expires_in_ms: ttl,
        condition: condition.map(|absent| {
            if absent {
                Condition::Absent
            } else {
                Condition::Present
            }
        }),
    };
    match put(state, request).await {
        Ok(_) => simple(out, "OK"),
        Err(RespError::Op {
            error: OpError::PreconditionFailed { .. },
            ..
        }) => bulk(out, None),
        Err(e) => return Err(e),
    }
    Ok(())
}

/// `EXPIRE key seconds [NX|XX|GT|LT]` (`unit` 1000) or `PEXPIRE key ms [...]` (`unit` 1): 1
/// when the deadline was set, 0 when the key has no value or the condition did not hold. A
/// time of 0 or less deletes the key, as in Redis.
pub(super) async fn expire(
    state: &RespState,
    mut args: Vec<Vec<u8>>,
    unit: u64,
    out: &mut Vec<u8>,
) -> Result<(), RespError> {
    let command = String::from_utf8_lossy(&args[0]).to_lowercase();
    let flag = match args
        .get(3)
        .map(|f| String::from_utf8_lossy(f).to_uppercase())
    {
        None => None,
        Some(f) if ["NX", "XX", "GT", "LT"].contains(&f.as_str()) && args.len() == 4 => Some(f),
        Some(f) => {
            return Err(RespError::Syntax(format!(
                "unsupported option {f}; {command} takes NX, XX, GT or LT"
            )));
        }
    };
    let t = std::str::from_utf8(&args[2])
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(|| RespError::Syntax("value is not an integer or out of range".into()))?;
    args.truncate(2);
    let key = args.pop().unwrap_or_default();
    let object = read(state, key.clone(), None, None).await?;
    let Some(s) = single(&object)? else {
        integer(out, 0);
        return Ok(());
    };
    if s.kind == ValueKind::Counter {
        return Err(RespError::Syntax("counters do not expire".into()));
    }
    let now = now_ms();
    let deadline = (t > 0).then(|| now.saturating_add((t as u64).saturating_mul(unit)));
    // Redis compares with no deadline as an infinite one.
    let current = s.expires.unwrap_or(u64::MAX);
    let new = deadline.unwrap_or(0);
    let holds = match flag.as_deref() {
        Some("NX") => s.expires.is_none(),
        Some("XX") => s.expires.is_some(),
        Some("GT") => new > current,
        Some("LT") => new < current,
        _ => true,
    };
    if !holds {
        integer(out, 0);
        return Ok(());
    }
    let context = Some(object.context());
    match deadline {
        None => write(state, key, None, context, false, None, None, None).await?,
        Some(d) => {
            let ttl = Some(d.saturating_sub(now).max(1));
            let value = s.value.clone();
            write(state, key, value, context, false, ttl, None, None).await?
        }
    };
    integer(out, 1);
    Ok(())
}

/// `PERSIST key`: 1 when the key's value had a deadline and now has none, else 0.
pub(super) async fn persist(
    state: &RespState,
    key: Vec<u8>,
    out: &mut Vec<u8>,
) -> Result<(), RespError> {
    let object = read(state, key.clone(), None, None).await?;
    let Some(s) = single(&object)?.filter(|s| s.expires.is_some()) else {
        integer(out, 0);
        return Ok(());
    };
    let (value, context) = (s.value.clone(), Some(object.context()));
    write(state, key, value, context, false, None, None, None).await?;
    integer(out, 1);
    Ok(())
}

/// `TTL key` (`unit` 1000, rounded) or `PTTL key` (`unit` 1): the time the newest value has
/// left; -1 when it has no deadline, -2 when the key has no value.
pub(super) async fn ttl(
    state: &RespState,
    key: Vec<u8>,
    unit: u64,
    out: &mut Vec<u8>,
) -> Result<(), RespError> {
    let object = read(state, key, None, None).await?;
    let left = match super::commands::newest_sibling(&object) {
        None => -2,
        Some(Sibling { expires: None, .. }) => -1,
        Some(Sibling {
            expires: Some(d), ..
        }) => {
            let ms = d.saturating_sub(now_ms());
            ((ms + unit / 2) / unit) as i64
        }
    };
    integer(out, left);
    Ok(())
}
