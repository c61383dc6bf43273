//! The commands of the RESP endpoint and what each does against the cluster.
//!
//! Redis commands keep their Redis meaning where the cluster can honour it: `SET` overwrites
//! what the coordinator holds (concurrent `SET`s through different coordinators still become
//! siblings), `GET` answers the newest live sibling by timestamp, `DEL` reads at R and deletes
//! what it read. The `DKV.*` commands give the full Dynamo interface: every sibling, the
//! context, and per-request quorums.

use super::codec::{array, bulk, error, simple};
use crate::runtime::NodeHandle;
use dynamokv_core::counter::PnCounter;
use dynamokv_core::limits::KeyError;
use dynamokv_core::message::{ClientRequest, OpError, Reply};
use dynamokv_core::version::ValueKind;
use dynamokv_core::{ContextCodec, Object, Sibling, VersionVector};
use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize};

/// What every connection of the endpoint shares.
pub struct RespState {
    /// The node thread.
    pub node: NodeHandle,
    /// Context tokens for `DKV.*`.
    pub codec: ContextCodec,
    /// This node's id (in `INFO`).
    pub node_id: String,
    /// Largest value accepted.
    pub max_value_bytes: usize,
    /// The address the endpoint listens on (in `INFO`).
    pub addr: String,
    /// Connections open now.
    pub connected: AtomicUsize,
    /// Connections accepted so far (their ids).
    pub accepted: AtomicU64,
    /// Commands served so far.
    pub commands: AtomicU64,
    /// Client tokens (none: open).
    pub tokens: Arc<crate::auth::Tokens>,
    /// A connection with nothing pending is closed after this long without a command (`None`:
    /// never).
    pub idle_timeout: Option<std::time::Duration>,
    /// A command begun must be complete within this long (a client trickling a command in is
    /// told so and disconnected).
    pub command_timeout: std::time::Duration,
    /// The `SCAN` cursors this node gave.
    pub cursors: super::cursors::Cursors,
}

/// One connection's own settings.
#[derive(Debug, Default)]
pub struct Conn {
    /// The connection's id (`CLIENT ID`).
    pub id: u64,
    /// Set by `CLIENT SETNAME` or `HELLO ... SETNAME`.
    pub name: Option<Vec<u8>>,
    /// The token given with `AUTH` (or `HELLO ... AUTH`), if it was a configured one.
    pub token: Option<Vec<u8>>,
    /// Whether the client chose RESP3 (`HELLO 3`): its replies are rewritten by
    /// [`super::codec::resp3`].
    pub resp3: bool,
}

/// Whether the connection may run `args` (always, when no token is configured): `AUTH`,
/// `HELLO` and `QUIT` need no token, reads need the read scope, writes the write scope, every
/// other command any valid token. The error reply otherwise.
pub fn permitted(state: &RespState, conn: &Conn, args: &[Vec<u8>]) -> Result<(), RespError> {
    use crate::auth::{Refusal, Scope};
    if !state.tokens.enabled() {
        return Ok(());
    }
    let needed = match access(args) {
        Access::Reads(_) | Access::Scan => Scope::Read,
        Access::Writes(_) => Scope::Write,
        Access::Quit => return Ok(()),
        Access::None => match name(args).as_slice() {
            b"AUTH" | b"HELLO" => return Ok(()),
            _ => {
                return match conn.token.as_deref() {
                    Some(t) if state.tokens.find(t).is_some() => Ok(()),
                    _ => Err(RespError::NoAuth),
                };
            }
        },
    };
    match state.tokens.check(conn.token.as_deref(), needed) {
        Ok(()) => Ok(()),
        Err(Refusal::Unauthenticated) => Err(RespError::NoAuth),
        Err(Refusal::Forbidden { name, needed }) => Err(RespError::NoPerm {
            name,
            scope: needed.as_str(),
        }),
    }
}

/// How a command touches keys, for running a pipeline's commands side by side.
pub enum Access<'a> {
    /// No key: runs at once, in order.
    None,
    /// Reads these keys.
    Reads(Vec<&'a [u8]>),
    /// Writes these keys.
    Writes(Vec<&'a [u8]>),
    /// Lists keys (`SCAN`, `KEYS`): runs after the writes before it in a pipeline.
    Scan,
    /// Ends the connection after its reply.
    Quit,
}

/// The command's upper-case name.
pub fn name(args: &[Vec<u8>]) -> Vec<u8> {
    args.first()
        .map(|n| n.to_ascii_uppercase())
        .unwrap_or_default()
}

/// How `args` touches keys.
pub fn access(args: &[Vec<u8>]) -> Access<'_> {
    let keys = |step: usize| -> Vec<&[u8]> {
        args.iter()
            .skip(1)
            .step_by(step)
            .map(Vec::as_slice)
            .collect()
    };
    match name(args).as_slice() {
        b"GET" | b"EXISTS" | b"MGET" | b"TTL" | b"PTTL" => Access::Reads(keys(1)),
        b"DKV.GET" => Access::Reads(keys(usize::MAX)),
        b"DEL" => Access::Writes(keys(1)),
        b"MSET" => Access::Writes(keys(2)),
        b"SET" | b"DKV.PUT" | b"DKV.DEL" | b"EXPIRE" | b"PEXPIRE" | b"PERSIST" | b"INCR"
        | b"INCRBY" | b"DECR" | b"DECRBY" => Access::Writes(keys(usize::MAX)),
        b"SCAN" | b"KEYS" => Access::Scan,
        b"QUIT" => Access::Quit,
        _ => Access::None,
    }
}

pub(super) fn wrong_arity(out: &mut Vec<u8>, args: &[Vec<u8>]) {
    let name = String::from_utf8_lossy(&args[0]).to_lowercase();
    error(
        out,
        &format!("ERR wrong number of arguments for '{name}' command"),
    );
}

pub(super) fn unknown(args: &[Vec<u8>], out: &mut Vec<u8>) {
    let rest: Vec<String> = args
        .iter()
        .skip(1)
        .take(4)
        .map(|a| format!("'{}'", String::from_utf8_lossy(&a[..a.len().min(64)])))
        .collect();
    let name = String::from_utf8_lossy(&args[0][..args[0].len().min(64)]);
    error(
        out,
        &format!(
            "ERR unknown command '{name}', with args beginning with: {}",
            rest.join(" ")
        ),
    );
}

/// Why a command failed: its `Display` is the Redis error line (without the leading `-`),
/// whose first word is the code clients match on.
#[derive(Debug, thiserror::Error)]
pub enum RespError {
    /// Tokens are configured and the connection gave none, or an unknown one.
    #[error("NOAUTH Authentication required.")]
    NoAuth,
    /// The connection's token lacks the scope the command needs.
    #[error("NOPERM token '{name}' lacks the {scope} scope this command needs")]
    NoPerm {
        /// The token's name.
        name: String,
        /// The scope needed.
        scope: &'static str,
    },
    /// The command was given the wrong number of arguments.
    #[error("ERR wrong number of arguments for '{0}' command")]
    WrongArity(String),
    /// A malformed option, context or argument.
    #[error("ERR {0}")]
    Syntax(String),
    /// The key is empty or too long.
    #[error("ERR {0}")]
    Key(#[from] KeyError),
    /// The value is larger than this node accepts.
    #[error(
        "ERR the value is {len} bytes, more than the {max} bytes this node accepts; store smaller values"
    )]
    ValueTooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The cluster could not do the operation.
    #[error("{} {what}: {error}", op_code(error))]
    Op {
        /// "read" or "write".
        what: &'static str,
        /// Why.
        error: OpError,
    },
    /// The coordinator answered with the other kind of reply.
    #[error("ERR the coordinator answered a {0} with a {1}; retry")]
    WrongReply(&'static str, &'static str),
    /// The node is shutting down.
    #[error("UNAVAILABLE the node is shutting down; retry on another node")]
    Stopping,
    /// Some writes of an `MSET` failed (the others may be stored).
    #[error(
        "UNAVAILABLE MSET is not atomic: {failed} of {total} keys were not written (some may be stored): {details}"
    )]
    PartialMset {
        /// Keys not written.
        failed: usize,
        /// Keys in the command.
        total: usize,
        /// Each failed key with its error.
        details: String,
    },
}

impl RespError {
    /// The first word of the error line.
    pub fn code(&self) -> &'static str {
        match self {
            RespError::NoAuth => "NOAUTH",
            RespError::NoPerm { .. } => "NOPERM",
            RespError::Op { error, .. } => op_code(error),
            RespError::Stopping | RespError::PartialMset { .. } => "UNAVAILABLE",
            _ => "ERR",
        }
    }
}

/// The code of a failed cluster operation's error line.
fn op_code(e: &OpError) -> &'static str {
    match e {
        OpError::Unavailable { .. }
        | OpError::CoordinatorUnreachable { .. }
        | OpError::NoRing
        | OpError::ListingIncomplete { .. } => "UNAVAILABLE",
        OpError::ObjectTooLarge { .. } => "TOOLARGE",
        OpError::TooManySiblings { .. } => "SIBLINGS",
        OpError::Storage { .. } => "STORAGE",
        OpError::InsufficientStorage { .. } => "FULL",
        OpError::NotAMember(_) => "NOTMEMBER",
        OpError::WrongType(_) => "WRONGTYPE",
        OpError::PreconditionFailed { .. } => "PRECONDITION",
        OpError::InvalidQuorum { .. } | OpError::BadRequest(_) | OpError::Overflow => "ERR",
    }
}

pub(super) async fn call(
    state: &RespState,
    what: &'static str,
    request: ClientRequest,
) -> Result<Reply, RespError> {
    match state.node.call(request).await {
        Err(_) => Err(RespError::Stopping),
        Ok((Ok(reply), _)) => Ok(reply),
        Ok((Err(error), _)) => {
            crate::metrics::op_failed(&error);
            Err(RespError::Op { what, error })
        }
    }
}

pub(super) fn check_key(key: &[u8]) -> Result<(), RespError> {
    Ok(dynamokv_core::limits::check_key(key)?)
}

pub(super) fn check_value(state: &RespState, value: &[u8]) -> Result<(), RespError> {
    if value.len() > state.max_value_bytes {
        return Err(RespError::ValueTooLarge {
            len: value.len(),
            max: state.max_value_bytes,
        });
    }
    Ok(())
}

pub(super) async fn read(
    state: &RespState,
    key: Vec<u8>,
    r: Option<u8>,
    pr: Option<u8>,
) -> Result<Object, RespError> {
    check_key(&key)?;
    match call(state, "read", ClientRequest::Get { key, r, pr }).await? {
        Reply::Read(o) => Ok(o),
        Reply::Written { .. } => Err(RespError::WrongReply("read", "write")),
        Reply::Keys { .. } => Err(RespError::WrongReply("read", "listing")),
    }
}

/// A put of `value` (`None`: a delete) with `context`, over what the coordinator holds when
/// `overwrite`, expiring in `expires_in_ms` when given; the object the coordinator stamped.
#[allow(clippy::too_many_arguments)]
pub(super) async fn write(
    state: &RespState,
    key: Vec<u8>,
    value: Option<Vec<u8>>,
    context: Option<VersionVector>,
    overwrite: bool,
    expires_in_ms: Option<u64>,
    w: Option<u8>,
    pw: Option<u8>,
) -> Result<Object, RespError> {
    check_key(&key)?;
    if let Some(v) = &value {
        check_value(state, v)?;
    }
    let request = ClientRequest::Put {
        key,
        value,
        context,
        w,
        pw,
        overwrite,
        expires_in_ms,
        condition: None,
    };
    put(state, request).await
}

/// Runs a put (any `ClientRequest::Put`, conditional ones included); the object the
/// coordinator stamped.
pub(super) async fn put(state: &RespState, request: ClientRequest) -> Result<Object, RespError> {
    match call(state, "write", request).await? {
        Reply::Written { object, .. } => Ok(object),
        Reply::Read(_) => Err(RespError::WrongReply("write", "read")),
        Reply::Keys { .. } => Err(RespError::WrongReply("write", "listing")),
    }
}

/// The newest live sibling by timestamp (ties: the higher dot).
pub(super) fn newest_sibling(object: &Object) -> Option<&Sibling> {
    object.live().max_by_key(|s| (s.timestamp, s.dot))
}

/// What `GET` answers: the newest live value, or a counter's value in decimal. A key where a
/// counter and a value were written concurrently (through two coordinators at once) holds both
/// kinds: refused, naming the way out.
pub(super) fn newest(object: &Object) -> Result<Option<Cow<'_, [u8]>>, RespError> {
    if object.live().any(|s| s.kind == ValueKind::Counter) {
        let now = crate::node::now_ms();
        let value = PnCounter::of(object, now).map_err(|_| {
            RespError::Syntax(
                "the key holds a counter and a value written at the same time; DEL it to start again"
                    .into(),
            )
        })?;
        return Ok(Some(Cow::Owned(value.value().to_string().into_bytes())));
    }
    Ok(newest_sibling(object)
        .and_then(|s| s.value.as_deref())
        .map(Cow::Borrowed))
}

/// Deletes `key` if it has a live value; whether it had one.
async fn delete_if_live(state: &RespState, key: Vec<u8>) -> Result<bool, RespError> {
    let object = read(state, key.clone(), None, None).await?;
    if object.live().next().is_none() {
        return Ok(false);
    }
    write(
        state,
        key,
        None,
        Some(object.context()),
        false,
        None,
        None,
        None,
    )
    .await?;
    Ok(true)
}

/// `MGET key...`: the newest live value of each key, or nil.
pub(super) async fn mget(
    state: &RespState,
    keys: Vec<Vec<u8>>,
    out: &mut Vec<u8>,
) -> Result<(), RespError> {
    let reads = keys.into_iter().map(|key| read(state, key, None, None));
    let objects = futures_util::future::join_all(reads).await;
    array(out, objects.len());
    for o in objects {
        bulk(out, newest(&o?)?.as_deref());
    }
    Ok(())
}

/// `MSET key value...`: every pair checked first, then written side by side; not atomic, and
/// the error names each key that failed.
pub(super) async fn mset(
    state: &RespState,
    words: Vec<Vec<u8>>,
    out: &mut Vec<u8>,
) -> Result<(), RespError> {
    let mut pairs = Vec::with_capacity(words.len() / 2);
    let mut it = words.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        pairs.push((k, v));
    }
    for (k, v) in &pairs {
        check_key(k)?;
        check_value(state, v)?;
    }
    let total = pairs.len();
    let writes = pairs.into_iter().map(|(k, v)| async move {
        let shown = String::from_utf8_lossy(&k[..k.len().min(64)]).into_owned();
        write(state, k, Some(v), None, true, None, None, None)
            .await
            .map_err(|e| format!("{shown} ({e})"))
    });
    let results = futures_util::future::join_all(writes).await;
    let failed: Vec<String> = results.into_iter().filter_map(Result::err).collect();
    if !failed.is_empty() {
        return Err(RespError::PartialMset {
            failed: failed.len(),
            total,
            details: failed.join("; "),
        });
    }
    simple(out, "OK");
    Ok(())
}

/// `DEL` (`delete` true) or `EXISTS`: how many of `keys` had a live value (and are deleted).
pub(super) async fn count_live(
    state: &RespState,
    keys: Vec<Vec<u8>>,
    delete: bool,
) -> Result<i64, RespError> {
    let results = futures_util::future::join_all(keys.into_iter().map(|k| async move {
        if delete {
            delete_if_live(state, k).await
        } else {
            Ok(read(state, k, None, None).await?.live().next().is_some())
        }
    }))
    .await;
    let mut count = 0;
    for r in results {
        count += i64::from(r?);
    }
    Ok(count)
}

/// Reads `NAME n` option pairs (quorums) from `args`; any other word is refused.
fn quorum_options(args: &[Vec<u8>], names: [&str; 2]) -> Result<[Option<u8>; 2], RespError> {
    let mut values = [None, None];
    if !args.len().is_multiple_of(2) {
        return Err(RespError::Syntax(format!(
            "syntax error: options come in pairs ({} n, {} n)",
            names[0], names[1]
        )));
    }
    for pair in args.chunks(2) {
        let word = String::from_utf8_lossy(&pair[0]).to_uppercase();
        let Some(i) = names.iter().position(|n| *n == word) else {
            return Err(RespError::Syntax(format!(
                "unknown option {word}; this command takes {} n and {} n",
                names[0], names[1]
            )));
        };
        let n = std::str::from_utf8(&pair[1])
            .ok()
            .and_then(|s| s.parse::<u8>().ok())
            .ok_or_else(|| RespError::Syntax(format!("{word} must be a number from 1 to N")))?;
        values[i] = Some(n);
    }
    Ok(values)
}

fn context_bulk(state: &RespState, key: &[u8], object: &Object, out: &mut Vec<u8>) {
    let token = (!object.clock().is_empty()).then(|| state.codec.encode(key, object.clock()));
    bulk(out, token.as_deref().map(str::as_bytes));
}

/// `DKV.GET key [R n] [PR n]`: `[context, [value, ...]]` (context null when the key never
/// existed; the value list empty when it holds no live value).
pub(super) async fn dkv_get(
    state: &RespState,
    mut args: Vec<Vec<u8>>,
    out: &mut Vec<u8>,
) -> Result<(), RespError> {
    if args.len() < 2 {
        return Err(RespError::WrongArity("dkv.get".into()));
    }
    let [r, pr] = quorum_options(&args[2..], ["R", "PR"])?;
    args.truncate(2);
    let key = args.pop().unwrap_or_default();
    let object = read(state, key.clone(), r, pr).await?;
    array(out, 2);
    context_bulk(state, &key, &object, out);
    let live: Vec<_> = object.live().collect();
    array(out, live.len());
    for s in live {
        bulk(out, s.value.as_deref());
    }
    Ok(())
}

/// `DKV.PUT key value [context] [W n] [PW n]` and `DKV.DEL key [context] [W n] [PW n]`: the
/// new context. An empty context is a blind write (a new sibling of whatever is there).
pub(super) async fn dkv_write(
    state: &RespState,
    mut args: Vec<Vec<u8>>,
    out: &mut Vec<u8>,
) -> Result<(), RespError> {
    let put = name(&args) == b"DKV.PUT";
    let fixed = if put { 3 } else { 2 };
    if args.len() < fixed {
        let cmd = if put { "dkv.put" } else { "dkv.del" };
        return Err(RespError::WrongArity(cmd.into()));
    }
    // An odd number of words after the fixed ones: the first is the context.
    let has_context = (args.len() - fixed) % 2 == 1;
    let options_at = fixed + usize::from(has_context);
    let [w, pw] = quorum_options(&args[options_at..], ["W", "PW"])?;
    args.truncate(options_at);
    let token = if has_context { args.pop() } else { None };
    let value = if put { args.pop() } else { None };
    let key = args.pop().unwrap_or_default();
    check_key(&key)?;
    let context = match token.filter(|t| !t.is_empty()) {
        None => None,
        Some(t) => {
            let t = std::str::from_utf8(&t)
                .map_err(|_| RespError::Syntax("bad context: not text".into()))?;
            Some(
                state
                    .codec
                    .decode(&key, t)
                    .map_err(|e| RespError::Syntax(format!("bad context: {e}")))?,
            )
        }
    };
    // A DKV.DEL without a context deletes what the replicas hold (the coordinator reads at R
    // first).
    let object = write(state, key.clone(), value, context, false, None, w, pw).await?;
    context_bulk(state, &key, &object, out);
    Ok(())
}
