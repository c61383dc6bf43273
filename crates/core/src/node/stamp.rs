//! Stamping a write over the coordinator's own copy of a key (Dynamo section 4.4): the version
//! a put, an increment or a restore stores there, under the key's lock, within the object
//! limits and the kinds of value the key holds. The coordinator then sends what is stored to
//! the other replicas.

use super::NodeConfig;
use crate::clock::Now;
use crate::counter::PnCounter;
use crate::message::OpError;
use crate::store::{LocalStore, StoreError};
use crate::version::{ActorId, Object, Stamp, ValueKind, VersionVector};

/// Who this node is, for the operations it coordinates.
pub struct Local<'a, S> {
    /// This node's id.
    pub id: &'a str,
    /// The actor it stamps versions with.
    pub actor: ActorId,
    /// Quorums and timeouts.
    pub config: &'a NodeConfig,
    /// Its storage.
    pub store: &'a S,
    /// Whether it is rebuilding lost data (its own copy does not count towards R).
    pub rebuilding: bool,
}

/// What a write stores over the coordinator's copy.
#[derive(Debug)]
pub enum Write {
    /// A put: a value (or a tombstone) with the client's context - over everything the
    /// coordinator holds when `overwrite` - stamped with `stamp`.
    Put {
        /// The value, or `None` for a tombstone.
        value: Option<Vec<u8>>,
        /// The client's context.
        context: Option<VersionVector>,
        /// Over what the coordinator holds (RESP `SET`).
        overwrite: bool,
        /// The deadline and kind of the new value.
        stamp: Stamp,
    },
    /// An increment of the counter (negative: a decrement), over the coordinator's copy
    /// merged with what a read at R found (`seen`): every increment acknowledged before is in
    /// the new state, and in the answer.
    Increment {
        /// How much to add.
        by: i64,
        /// What the read at R found.
        seen: Object,
    },
    /// A restore: the object merged in through the one merge (a newer version here stays, a
    /// concurrent one becomes a sibling).
    Restore(Object),
}

/// Stores `write` over `local`'s copy of `key` at `now` and returns what is stored. A key this
/// node holds no entry of its own for continues its dots from `next_counter` (one more than
/// the highest counter its actor ever issued). Refused, and nothing stored, past the object or
/// sibling limits, for a value over a counter or an increment over a value, and for a counter
/// past the 64-bit range.
pub fn apply<S: LocalStore>(
    local: &Local<'_, S>,
    now: Now,
    key: &[u8],
    write: Write,
    next_counter: u64,
) -> Result<Object, OpError> {
    let (actor, config) = (local.actor, local.config);
    let mut write = Some(write);
    let mut refused = None;
    let stored = local.store.modify(key, &mut |current| {
        let Some(w) = write.take() else {
            return current;
        };
        let candidate = stamped(&current, actor, now, next_counter, w)
            .and_then(|c| over_limits(config, key, &current, &c).map_or(Ok(c), Err));
        match candidate {
            Ok(c) => c,
            Err(e) => {
                refused = Some(e);
                current
            }
        }
    });
    match (stored, refused) {
        (_, Some(e)) => Err(e),
        (Ok(o), None) => Ok(o),
        (Err(e), None) => {
            let node = local.id.to_owned();
            Err(match e {
                StoreError::Full(message) => OpError::InsufficientStorage { node, message },
                StoreError::Failed(message) => OpError::Storage { node, message },
            })
        }
    }
}

/// The new version `write` stores over `current`.
fn stamped(
    current: &Object,
    actor: ActorId,
    now: Now,
    next_counter: u64,
    write: Write,
) -> Result<Object, OpError> {
    // A key this node holds no entry of its own for (never written here, or its tombstone
    // collected while some replica may still hold it) continues from the highest counter this
    // actor ever issued, so no dot is issued twice.
    let floor = |ctx: &VersionVector| match current.clock().get(actor).or(ctx.get(actor)) {
        Some(_) => 0,
        None => next_counter,
    };
    match write {
        Write::Restore(object) => Ok(current.merge(&object)),
        Write::Put {
            value,
            context,
            overwrite,
            stamp,
        } => {
            if value.is_some()
                && current
                    .live_at(now.wall)
                    .any(|s| s.kind == ValueKind::Counter)
            {
                return Err(OpError::WrongType(
                    "the key holds a counter: change it with an increment, or delete it first"
                        .to_owned(),
                ));
            }
            let mut ctx = context.unwrap_or_default();
            if overwrite {
                // Over everything this coordinator holds (RESP `SET`); versions it has not
                // seen yet still become siblings.
                ctx.merge(current.clock());
            }
            // The wall clock: for the timestamp the version carries, and its deadline.
            let floor = floor(&ctx);
            Ok(current.update_stamped(actor, &ctx, value, now.wall, floor, stamp))
        }
        Write::Increment { by, seen } => {
            // Over what the read found too (the one merge), so the new state holds every
            // increment acknowledged before this one; the new version supersedes all of it.
            let mut ctx = current.clock().clone();
            let floor = floor(&ctx);
            let joined = current.merge(&seen);
            ctx.merge(seen.clock());
            let dot = (ctx.counter(actor) + 1).max(floor);
            let value = increment(&joined, now.wall, actor, dot, by)?;
            let stamp = Stamp {
                expires: None,
                kind: ValueKind::Counter,
            };
            Ok(current.update_stamped(actor, &ctx, Some(value), now.wall, floor, stamp))
        }
    }
}

/// The counter state `current` holds at `now` with `by` added by `actor` (a new entry, if it
/// holds none of its own, keyed by `dot`, the counter of the write's dot), encoded.
fn increment(
    current: &Object,
    now: u64,
    actor: ActorId,
    dot: u64,
    by: i64,
) -> Result<Vec<u8>, OpError> {
    let wrong = |_| {
        OpError::WrongType(
            "the key holds a value that is not a counter (delete it first)".to_owned(),
        )
    };
    let mut state = PnCounter::of(current, now).map_err(wrong)?;
    state.add(actor, dot, by).map_err(|_| OpError::Overflow)?;
    Ok(state.encode())
}

/// The key as text for an error message: lossy UTF-8, shortened.
fn key_text(key: &[u8]) -> String {
    let text = String::from_utf8_lossy(key);
    match text.char_indices().nth(64) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text.into_owned(),
    }
}

/// Why `candidate` (what a write would store over `current`) is refused, if it is.
fn over_limits(
    config: &NodeConfig,
    key: &[u8],
    current: &Object,
    candidate: &Object,
) -> Option<OpError> {
    let siblings = candidate.siblings().len();
    if siblings > config.max_siblings && siblings > current.siblings().len() {
        return Some(OpError::TooManySiblings {
            key: key_text(key),
            siblings: current.siblings().len() as u64,
        });
    }
    let bytes = candidate.size_bytes();
    if bytes > config.max_object_bytes && bytes > current.size_bytes() {
        return Some(OpError::ObjectTooLarge {
            key: key_text(key),
            bytes: bytes as u64,
            limit: config.max_object_bytes as u64,
        });
    }
    None
}
