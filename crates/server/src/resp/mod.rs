//! The RESP2 endpoint (`--resp ADDR`): enough of the Redis protocol for `redis-cli` and
//! `redis-benchmark` to work unchanged, pipelining included, with the cluster's semantics
//! behind it (see [`commands`]).
//!
//! Each connection reads what the client sent, parses every complete command in it
//! ([`codec`]), and runs them: commands on different keys run side by side (a pipeline of
//! 16 GETs is 16 requests in flight), while a command touching a key that an earlier command of
//! the batch writes (or a write to a key read earlier) waits for the commands before it, so a
//! pipeline's `SET k` is always seen by its next `GET k`. Replies go out in order, in one write
//! per batch. A protocol violation gets `-ERR Protocol error` and closes the connection; the
//! buffer never holds more than one command's limit plus one read.

pub mod codec;
pub mod commands;
pub mod counters;
pub mod cursors;
pub mod expiry;
pub mod keyed;
pub mod local;
pub mod multi;
pub mod scan;

use crate::tls::BoxedIo;
use codec::Limits;
use commands::{Access, Conn, RespState};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// Most commands run as one batch before their replies are written.
/// Most commands run as one batch before their replies are written (this bounds what one
/// connection holds: at most this many replies, each at most one object).
const MAX_BATCH: usize = 128;

/// Most connections served at once; more are answered with an error and closed.
pub const MAX_CONNECTIONS: usize = 10_000;

/// Accepts RESP connections until the task is dropped.
pub async fn serve(
    listener: TcpListener,
    state: Arc<RespState>,
    limits: Limits,
    tls: Option<crate::tls::Tls>,
) {
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "RESP accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            if state.connected.fetch_add(1, Ordering::Relaxed) >= MAX_CONNECTIONS {
                // Told so in plaintext; a TLS client could not read it and is just closed.
                if tls.is_none() {
                    let mut stream = stream;
                    let _ = stream
                        .write_all(b"-ERR max number of clients reached\r\n")
                        .await;
                }
            } else if let Some(io) = secure(stream, tls.as_ref()).await
                && let Err(e) = connection(io, state.clone(), limits).await
            {
                tracing::debug!(%remote, error = %e, "RESP connection ended");
            }
            state.connected.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// The connection as the client will speak on it: over TLS when the port has it (a client
/// speaking plaintext there is told so and disconnected: `None`).
async fn secure(stream: TcpStream, tls: Option<&crate::tls::Tls>) -> Option<BoxedIo> {
    let Some(tls) = tls else {
        return Some(Box::new(stream));
    };
    match tls.accept_client(stream, HANDSHAKE_TIMEOUT).await {
        Ok(io) => io,
        Err(mut plain) => {
            metrics::counter!("dynamokv_tls_plaintext_refused_total", "port" => "resp")
                .increment(1);
            let _ = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
                let _ = plain
                    .write_all(b"-ERR this port speaks TLS: connect with TLS (redis-cli --tls --cacert ca.pem)\r\n")
                    .await;
                let _ = plain.shutdown().await;
            })
            .await;
            None
        }
    }
}

/// How long a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

async fn connection(
    mut stream: BoxedIo,
    state: Arc<RespState>,
    limits: Limits,
) -> std::io::Result<()> {
    let mut conn = Conn {
        id: state.accepted.fetch_add(1, Ordering::Relaxed) + 1,
        name: None,
        token: None,
        resp3: false,
    };
    // The transaction being queued (`MULTI`), if one is.
    let mut multi: Option<multi::Multi> = None;
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut out: Vec<u8> = Vec::with_capacity(16 * 1024);
    loop {
        let (batch, used, broken) = parse_batch(&buf, &limits);
        let full = batch.len() == MAX_BATCH;
        let quit = run_batch(&state, &mut conn, &mut multi, batch, &mut out).await;
        if let Some(e) = &broken {
            codec::error(&mut out, &format!("ERR {e}"));
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
            out.shrink_to(64 * 1024);
        }
        if quit || broken.is_some() {
            return Ok(());
        }
        // Keep only the unparsed tail (usually empty, or part of one command).
        buf.drain(..used);
        if buf.is_empty() && buf.capacity() > 256 * 1024 {
            // A large command came and went: give its memory back.
            buf.shrink_to(16 * 1024);
        }
        if full {
            continue;
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(16 * 1024);
        }
        if !read_more(&mut stream, &mut buf, &state, &mut out).await? {
            return Ok(());
        }
    }
}

/// The complete commands at the start of `buf` (at most [`MAX_BATCH`]), the bytes they used,
/// and the protocol error that ended parsing, if one did.
fn parse_batch(
    buf: &[u8],
    limits: &Limits,
) -> (Vec<Vec<Vec<u8>>>, usize, Option<codec::ProtocolError>) {
    let mut batch = Vec::new();
    let mut start = 0;
    while batch.len() < MAX_BATCH {
        match codec::parse(&buf[start..], limits) {
            Ok(Some((args, used))) => {
                start += used;
                if !args.is_empty() {
                    batch.push(args);
                }
            }
            Ok(None) => break,
            Err(e) => return (batch, start, Some(e)),
        }
    }
    (batch, start, None)
}

/// Reads more of the client's bytes into `buf`, within the idle deadline between commands and
/// the command deadline inside one; false when the connection is to close (the client closed,
/// or a deadline passed; a command cut short is told so first).
async fn read_more(
    stream: &mut BoxedIo,
    buf: &mut Vec<u8>,
    state: &RespState,
    out: &mut Vec<u8>,
) -> std::io::Result<bool> {
    let (deadline, idle) = if buf.is_empty() {
        (state.idle_timeout, true)
    } else {
        (Some(state.command_timeout), false)
    };
    let read = match deadline {
        None => stream.read_buf(buf).await?,
        Some(d) => match tokio::time::timeout(d, stream.read_buf(buf)).await {
            Ok(read) => read?,
            Err(_) => {
                let during = if idle { "idle" } else { "command" };
                metrics::counter!("dynamokv_resp_connections_timed_out_total", "while" => during)
                    .increment(1);
                if !idle {
                    codec::error(
                        out,
                        &format!(
                            "ERR Protocol error: the rest of the command did not arrive within {} ms",
                            d.as_millis()
                        ),
                    );
                    let _ = tokio::time::timeout(d, stream.write_all(out)).await;
                }
                return Ok(false);
            }
        },
    };
    Ok(read > 0)
}

/// Runs the commands of one batch, appending their replies to `out` in order; true when the
/// client asked to quit. Transaction commands, and commands while a transaction is open, go
/// through [`multi::step`]; the others run as a pipeline ([`run_pipeline`]).
async fn run_batch(
    state: &Arc<RespState>,
    conn: &mut Conn,
    open: &mut Option<multi::Multi>,
    batch: Vec<Vec<Vec<u8>>>,
    out: &mut Vec<u8>,
) -> bool {
    state
        .commands
        .fetch_add(batch.len() as u64, Ordering::Relaxed);
    if !batch.iter().any(|args| multi::needs_step(open, args)) {
        return run_pipeline(state, conn, batch, out).await;
    }
    let mut plain = Vec::new();
    for args in batch {
        if !multi::needs_step(open, &args) {
            plain.push(args);
            continue;
        }
        if run_pipeline(state, conn, std::mem::take(&mut plain), out).await {
            return true;
        }
        match multi::step(open, args) {
            multi::Step::Run(args) => plain.push(args),
            multi::Step::Reply(reply) => append(conn, out, &reply),
            multi::Step::Exec(queued) => {
                codec::array(out, queued.len());
                if Box::pin(run_pipeline(state, conn, queued, out)).await {
                    return true;
                }
            }
        }
    }
    run_pipeline(state, conn, plain, out).await
}

/// Appends `reply` for this connection's protocol.
fn append(conn: &Conn, out: &mut Vec<u8>, reply: &[u8]) {
    if conn.resp3 {
        codec::resp3(reply, out);
    } else {
        out.extend_from_slice(reply);
    }
}

/// Runs commands as a pipeline, appending their replies to `out` in order: keyed ones side by
/// side while they touch different keys; true when the client asked to quit.
async fn run_pipeline(
    state: &Arc<RespState>,
    conn: &mut Conn,
    batch: Vec<Vec<Vec<u8>>>,
    out: &mut Vec<u8>,
) -> bool {
    if batch.is_empty() {
        return false;
    }
    if batch.len() == 1 {
        // No pipelining (the common case): nothing can conflict.
        let quit = matches!(commands::access(&batch[0]), Access::Quit);
        run_group(state, conn, batch, out).await;
        return quit;
    }
    let mut group: Vec<Vec<Vec<u8>>> = Vec::new();
    let mut read: BTreeSet<Vec<u8>> = BTreeSet::new();
    let mut written: BTreeSet<Vec<u8>> = BTreeSet::new();
    for args in batch {
        let owned = |keys: Vec<&[u8]>| keys.into_iter().map(<[u8]>::to_vec).collect::<Vec<_>>();
        let (keys, writes, quit) = match commands::access(&args) {
            Access::Reads(keys) => (owned(keys), false, false),
            Access::Writes(keys) => (owned(keys), true, false),
            Access::None => (Vec::new(), false, false),
            Access::Quit => (Vec::new(), false, true),
            Access::Scan => {
                // A listing sees the writes sent before it.
                if !written.is_empty() {
                    run_group(state, conn, std::mem::take(&mut group), out).await;
                    read.clear();
                    written.clear();
                }
                (Vec::new(), false, false)
            }
        };
        if keys
            .iter()
            .any(|k| written.contains(k) || (writes && read.contains(k)))
        {
            run_group(state, conn, std::mem::take(&mut group), out).await;
            read.clear();
            written.clear();
        }
        if writes {
            written.extend(keys);
        } else {
            read.extend(keys);
        }
        group.push(args);
        if quit {
            run_group(state, conn, group, out).await;
            return true;
        }
    }
    run_group(state, conn, group, out).await;
    false
}

/// Runs commands that do not conflict: keyed ones side by side, the others at once; appends
/// the replies in order.
async fn run_group(
    state: &Arc<RespState>,
    conn: &mut Conn,
    group: Vec<Vec<Vec<u8>>>,
    out: &mut Vec<u8>,
) {
    let mut group = group;
    if group.len() == 1
        && let Some(args) = group.pop()
    {
        // The common case (no pipelining): no bookkeeping.
        if let Err(e) = commands::permitted(state, conn, &args) {
            return codec::error(out, &e.to_string());
        }
        match commands::access(&args) {
            Access::Scan => {
                let reply = scan::run(state.clone(), args).await;
                append(conn, out, &reply);
            }
            Access::Reads(_) | Access::Writes(_) => {
                let reply = keyed::run_keyed(state.clone(), args).await;
                append(conn, out, &reply);
            }
            // RESP2 replies go straight out; RESP3 ones through the rewrite.
            _ if !conn.resp3 => local::run_local(state, conn, &args, out),
            _ => {
                let mut reply = Vec::new();
                local::run_local(state, conn, &args, &mut reply);
                append(conn, out, &reply);
            }
        }
        return;
    }
    let mut replies: Vec<Vec<u8>> = vec![Vec::new(); group.len()];
    let mut pending = Vec::new();
    for (i, args) in group.into_iter().enumerate() {
        if let Err(e) = commands::permitted(state, conn, &args) {
            codec::error(&mut replies[i], &e.to_string());
            continue;
        }
        match commands::access(&args) {
            access @ (Access::Reads(_) | Access::Writes(_) | Access::Scan) => {
                let (state, listing) = (state.clone(), matches!(access, Access::Scan));
                pending.push(async move {
                    let reply = if listing {
                        scan::run(state, args).await
                    } else {
                        keyed::run_keyed(state, args).await
                    };
                    (i, reply)
                });
            }
            _ => local::run_local(state, conn, &args, &mut replies[i]),
        }
    }
    for (i, reply) in futures_util::future::join_all(pending).await {
        replies[i] = reply;
    }
    for r in replies {
        append(conn, out, &r);
    }
}
