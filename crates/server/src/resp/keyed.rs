//! The commands that read or write keys, dispatched to where each is done: plain reads and
//! writes and the `DKV.*` commands (`commands`), `SET` with options and expiry (`expiry`),
//! counters (`counters`); each reply timed in the metrics.

use super::codec::{bulk, error, integer, simple};
use super::commands::{
    RespError, RespState, count_live, dkv_get, dkv_write, mget, mset, name, newest, read, unknown,
    write,
};
use super::{counters, expiry};
use std::sync::Arc;

/// Runs a command that reads or writes keys; its reply.
pub async fn run_keyed(state: Arc<RespState>, args: Vec<Vec<u8>>) -> Vec<u8> {
    let started = std::time::Instant::now();
    let op = match name(&args).as_slice() {
        b"SET" | b"MSET" | b"DKV.PUT" | b"EXPIRE" | b"PEXPIRE" | b"PERSIST" => "put",
        b"INCR" | b"INCRBY" | b"DECR" | b"DECRBY" => "increment",
        b"DEL" | b"DKV.DEL" => "delete",
        _ => "get",
    };
    let mut out = Vec::new();
    let outcome = match keyed(&state, args, &mut out).await {
        Err(e) => {
            out.clear();
            error(&mut out, &e.to_string());
            if e.code() == "UNAVAILABLE" {
                "unavailable"
            } else {
                "error"
            }
        }
        Ok(()) if out == b"$-1\r\n" => "not_found",
        Ok(()) => "ok",
    };
    crate::metrics::record("resp", op, outcome, started.elapsed());
    out
}

async fn keyed(
    state: &RespState,
    mut args: Vec<Vec<u8>>,
    out: &mut Vec<u8>,
) -> Result<(), RespError> {
    let n = args.len();
    let command = name(&args);
    let arity = || {
        let shown = String::from_utf8_lossy(&args[0]).to_lowercase();
        Err(RespError::WrongArity(shown))
    };
    match command.as_slice() {
        b"GET" if n == 2 => {
            let object = read(state, args.swap_remove(1), None, None).await?;
            bulk(out, newest(&object)?.as_deref());
        }
        b"SET" if n == 3 => {
            let value = args.pop().unwrap_or_default();
            let key = args.pop().unwrap_or_default();
            super::commands::check_value(state, &value)?;
            write(state, key, Some(value), None, true, None, None, None).await?;
            simple(out, "OK");
        }
        b"SET" if n > 3 => expiry::set(state, args, out).await?,
        b"MGET" if n >= 2 => mget(state, args.split_off(1), out).await?,
        b"MSET" if n >= 3 && !n.is_multiple_of(2) => mset(state, args.split_off(1), out).await?,
        b"DEL" | b"EXISTS" if n >= 2 => {
            let keys = args.split_off(1);
            let count = count_live(state, keys, command == b"DEL").await?;
            integer(out, count);
        }
        b"EXPIRE" if n == 3 || n == 4 => expiry::expire(state, args, 1000, out).await?,
        b"PEXPIRE" if n == 3 || n == 4 => expiry::expire(state, args, 1, out).await?,
        b"TTL" if n == 2 => expiry::ttl(state, args.swap_remove(1), 1000, out).await?,
        b"PTTL" if n == 2 => expiry::ttl(state, args.swap_remove(1), 1, out).await?,
        b"PERSIST" if n == 2 => expiry::persist(state, args.swap_remove(1), out).await?,
        b"INCR" | b"DECR" if n == 2 => counters::incr(state, args, out).await?,
        b"INCRBY" | b"DECRBY" if n == 3 => counters::incr(state, args, out).await?,
        b"GET" | b"SET" | b"MGET" | b"MSET" | b"DEL" | b"EXISTS" | b"EXPIRE" | b"PEXPIRE"
        | b"TTL" | b"PTTL" | b"PERSIST" | b"INCR" | b"DECR" | b"INCRBY" | b"DECRBY" => {
            return arity();
        }
        b"DKV.GET" => dkv_get(state, args, out).await?,
        b"DKV.PUT" | b"DKV.DEL" => dkv_write(state, args, out).await?,
        _ => unknown(&args, out),
    }
    Ok(())
}
