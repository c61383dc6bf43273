//! Counters over RESP: `INCR`, `INCRBY`, `DECR`, `DECRBY` add to a convergent counter
//! (`dynamokv_core::counter`) through any node and answer its new value; `GET` reads it (see
//! `commands::newest`). A key holding another kind of value is refused with `WRONGTYPE`, and
//! so is a `SET` of a counter key - unlike Redis, whose counters are strings that happen to
//! hold numbers: here a counter merges concurrent increments, which a string cannot.

use super::codec::integer;
use super::commands::{RespError, RespState, call, check_key};
use crate::node::now_ms;
use dynamokv_core::counter::PnCounter;
use dynamokv_core::message::{ClientRequest, Reply};

/// `INCR key` (by 1), `DECR key` (by -1), `INCRBY key n`, `DECRBY key n`: the new value.
pub(super) async fn incr(
    state: &RespState,
    mut args: Vec<Vec<u8>>,
    out: &mut Vec<u8>,
) -> Result<(), RespError> {
    let command = args[0].to_ascii_uppercase();
    let by = match args.get(2) {
        None => 1,
        Some(n) => std::str::from_utf8(n)
            .ok()
            .and_then(|s| s.parse::<i64>().ok())
            .ok_or_else(|| RespError::Syntax("value is not an integer or out of range".into()))?,
    };
    let by = if command.starts_with(b"DECR") {
        by.checked_neg()
            .ok_or_else(|| RespError::Syntax("decrement would overflow".into()))?
    } else {
        by
    };
    args.truncate(2);
    let key = args.pop().unwrap_or_default();
    check_key(&key)?;
    let request = ClientRequest::Increment {
        key,
        by,
        w: None,
        pw: None,
    };
    match call(state, "increment", request).await? {
        Reply::Written { object, .. } => {
            let value = PnCounter::of(&object, now_ms())
                .map_err(|e| RespError::Syntax(e.to_string()))?
                .value();
            integer(out, value);
            Ok(())
        }
        Reply::Read(_) => Err(RespError::WrongReply("increment", "read")),
        Reply::Keys { .. } => Err(RespError::WrongReply("increment", "listing")),
    }
}
