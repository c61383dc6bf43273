//! The commands that touch no key: connection settings (`HELLO`, `CLIENT`, `SELECT`, `QUIT`),
//! server facts (`INFO`, `COMMAND`, `CONFIG GET`) and `PING`/`ECHO`. They answer at once, from
//! the connection's own state, without the node thread.

use super::codec::{array, bulk, error, integer, map, simple};
use super::commands::{Conn, RespState, name, unknown, wrong_arity};
use std::sync::atomic::Ordering;

/// One row of `COMMAND`: name, arity (negative: at least), flags, first key, last key, step,
/// summary.
type Spec = (
    &'static str,
    i64,
    &'static [&'static str],
    i64,
    i64,
    i64,
    &'static str,
);

/// The commands this endpoint serves.
pub const COMMANDS: &[Spec] = &[
    (
        "get",
        2,
        &["readonly"],
        1,
        1,
        1,
        "Newest live value of a key (R replicas read)",
    ),
    (
        "set",
        -3,
        &["write"],
        1,
        1,
        1,
        "Overwrite what the coordinator holds (W replicas); NX, XX, EX, PX, EXAT, PXAT, KEEPTTL",
    ),
    (
        "expire",
        -3,
        &["write"],
        1,
        1,
        1,
        "Give a key's value a deadline in seconds (NX, XX, GT, LT)",
    ),
    (
        "pexpire",
        -3,
        &["write"],
        1,
        1,
        1,
        "Give a key's value a deadline in milliseconds (NX, XX, GT, LT)",
    ),
    (
        "persist",
        2,
        &["write"],
        1,
        1,
        1,
        "Take a key's deadline away",
    ),
    (
        "ttl",
        2,
        &["readonly"],
        1,
        1,
        1,
        "Seconds a key's value has left (-1: no deadline, -2: no value)",
    ),
    (
        "pttl",
        2,
        &["readonly"],
        1,
        1,
        1,
        "Milliseconds a key's value has left (-1: no deadline, -2: no value)",
    ),
    (
        "incr",
        2,
        &["write"],
        1,
        1,
        1,
        "Add 1 to a counter (convergent: concurrent increments all count)",
    ),
    ("incrby", 3, &["write"], 1, 1, 1, "Add n to a counter"),
    ("decr", 2, &["write"], 1, 1, 1, "Subtract 1 from a counter"),
    (
        "decrby",
        3,
        &["write"],
        1,
        1,
        1,
        "Subtract n from a counter",
    ),
    (
        "del",
        -2,
        &["write"],
        1,
        -1,
        1,
        "Delete keys that have a live value",
    ),
    (
        "exists",
        -2,
        &["readonly"],
        1,
        -1,
        1,
        "Count the keys that have a live value",
    ),
    ("mget", -2, &["readonly"], 1, -1, 1, "GET of several keys"),
    (
        "scan",
        -2,
        &["readonly"],
        0,
        0,
        0,
        "Page through the keys (MATCH, COUNT, TYPE)",
    ),
    (
        "keys",
        2,
        &["readonly"],
        0,
        0,
        0,
        "Every key matching a pattern, up to 10 000",
    ),
    (
        "mset",
        -3,
        &["write"],
        1,
        -1,
        2,
        "SET of several keys (not atomic)",
    ),
    ("ping", -1, &["fast"], 0, 0, 0, "PONG, or the argument"),
    ("echo", 2, &["fast"], 0, 0, 0, "The argument"),
    (
        "info",
        -1,
        &["loading"],
        0,
        0,
        0,
        "Server and endpoint facts",
    ),
    (
        "dbsize",
        1,
        &["readonly"],
        0,
        0,
        0,
        "Refused: no exact count exists",
    ),
    ("command", -1, &["loading"], 0, 0, 0, "This table"),
    (
        "hello",
        -1,
        &["fast"],
        0,
        0,
        0,
        "Protocol handshake: HELLO [2|3] [AUTH name token] [SETNAME name]",
    ),
    (
        "client",
        -2,
        &["admin"],
        0,
        0,
        0,
        "SETNAME, GETNAME, ID, SETINFO",
    ),
    ("select", 2, &["fast"], 0, 0, 0, "Only database 0 exists"),
    (
        "config",
        -2,
        &["admin"],
        0,
        0,
        0,
        "GET answers no parameters; SET refused",
    ),
    ("quit", 1, &["fast"], 0, 0, 0, "Close the connection"),
    (
        "multi",
        1,
        &["fast"],
        0,
        0,
        0,
        "Queue the commands that follow until EXEC (not atomic)",
    ),
    (
        "exec",
        1,
        &["slow"],
        0,
        0,
        0,
        "Run the queued commands in order; their replies",
    ),
    ("discard", 1, &["fast"], 0, 0, 0, "Drop the queued commands"),
    (
        "unwatch",
        1,
        &["fast"],
        0,
        0,
        0,
        "Nothing to unwatch (WATCH is refused)",
    ),
    (
        "dkv.get",
        -2,
        &["readonly"],
        1,
        1,
        1,
        "DKV.GET key [R n] [PR n]: context and siblings",
    ),
    (
        "dkv.put",
        -3,
        &["write"],
        1,
        1,
        1,
        "DKV.PUT key value [context] [W n] [PW n]: new context",
    ),
    (
        "dkv.del",
        -2,
        &["write"],
        1,
        1,
        1,
        "DKV.DEL key [context] [W n] [PW n]: new context",
    ),
];

/// Runs a command that needs no key (connection and server commands), appending its reply.
pub fn run_local(state: &RespState, conn: &mut Conn, args: &[Vec<u8>], out: &mut Vec<u8>) {
    let n = args.len();
    match name(args).as_slice() {
        b"PING" => match n {
            1 => simple(out, "PONG"),
            2 => bulk(out, Some(&args[1])),
            _ => wrong_arity(out, args),
        },
        b"ECHO" if n == 2 => bulk(out, Some(&args[1])),
        b"QUIT" => simple(out, "OK"),
        b"SELECT" if n == 2 => {
            if args[1] == b"0" {
                simple(out, "OK");
            } else {
                error(
                    out,
                    "ERR DB index is out of range: dynamokv has one database, 0",
                );
            }
        }
        b"DBSIZE" if n == 1 => error(
            out,
            "ERR DBSIZE is not supported: a replicated cluster has no exact key count to give; see /admin/stats on the HTTP port for per-node figures",
        ),
        b"INFO" => info(state, out),
        b"HELLO" => hello(state, conn, args, out),
        b"AUTH" if n == 2 || n == 3 => {
            if auth(state, conn, args[1..].iter().map(Vec::as_slice)) {
                simple(out, "OK");
            } else if !state.tokens.enabled() {
                error(
                    out,
                    "ERR AUTH called, but this node has no tokens configured: no AUTH is needed",
                );
            } else {
                error(
                    out,
                    "WRONGPASS invalid username-password pair or user is disabled.",
                );
            }
        }
        b"AUTH" => wrong_arity(out, args),
        b"CLIENT" if n >= 2 => client(conn, args, out),
        b"CONFIG" if n >= 2 => config(args, out, conn.resp3),
        b"COMMAND" => command(args, out, conn.resp3),
        b"ECHO" | b"SELECT" | b"DBSIZE" | b"CLIENT" | b"CONFIG" => wrong_arity(out, args),
        _ => unknown(args, out),
    }
}

fn info(state: &RespState, out: &mut Vec<u8>) {
    let text = format!(
        "# Server\r\nredis_version:7.0.0\r\ndynamokv_version:{}\r\nredis_mode:cluster-dynamo\r\nnode_id:{}\r\ntcp_addr:{}\r\nprotocols:RESP2,RESP3\r\n\r\n# Clients\r\nconnected_clients:{}\r\n\r\n# Stats\r\ntotal_connections_received:{}\r\ntotal_commands_processed:{}\r\n\r\n# Keyspace\r\n",
        env!("CARGO_PKG_VERSION"),
        state.node_id,
        state.addr,
        state.connected.load(Ordering::Relaxed),
        state.accepted.load(Ordering::Relaxed),
        state.commands.load(Ordering::Relaxed),
    );
    bulk(out, Some(text.as_bytes()));
}

/// `AUTH token` or `AUTH name token`: true when it names a configured token (the connection
/// then uses it); otherwise the connection loses any token it had.
fn auth<'a>(state: &RespState, conn: &mut Conn, mut args: impl Iterator<Item = &'a [u8]>) -> bool {
    let (first, second) = (args.next(), args.next());
    let (name, token) = match (first, second) {
        (Some(t), None) => (None, t),
        (Some(n), Some(t)) => (Some(n), t),
        _ => return false,
    };
    let ok = state.tokens.enabled()
        && state.tokens.find(token).is_some_and(|(found, _)| {
            name.is_none_or(|n| n == found.as_bytes() || n == b"default")
        });
    conn.token = ok.then(|| token.to_vec());
    ok
}

fn hello(state: &RespState, conn: &mut Conn, args: &[Vec<u8>], out: &mut Vec<u8>) {
    let resp3 = match args.get(1).map(Vec::as_slice) {
        None => conn.resp3,
        Some(b"2") => false,
        Some(b"3") => true,
        Some(_) => {
            return error(
                out,
                "NOPROTO unsupported protocol version; this server speaks RESP2 (HELLO 2) and RESP3 (HELLO 3)",
            );
        }
    };
    let mut i = 2;
    while i < args.len() {
        match args[i].to_ascii_uppercase().as_slice() {
            b"SETNAME" if i + 1 < args.len() => {
                conn.name = Some(args[i + 1].clone());
                i += 2;
            }
            b"AUTH" if i + 2 < args.len() => {
                let pair = [args[i + 1].as_slice(), args[i + 2].as_slice()];
                if !auth(state, conn, pair.into_iter()) {
                    return error(
                        out,
                        "WRONGPASS invalid username-password pair or user is disabled.",
                    );
                }
                i += 3;
            }
            _ => {
                return error(
                    out,
                    "ERR syntax error in HELLO: use HELLO [2|3] [AUTH name token] [SETNAME name]",
                );
            }
        }
    }
    conn.resp3 = resp3;
    map(out, 7, resp3);
    for (k, v) in [
        ("server", "redis"),
        ("version", "7.0.0"),
        ("dynamokv", env!("CARGO_PKG_VERSION")),
    ] {
        bulk(out, Some(k.as_bytes()));
        bulk(out, Some(v.as_bytes()));
    }
    bulk(out, Some(b"proto"));
    integer(out, if resp3 { 3 } else { 2 });
    bulk(out, Some(b"id"));
    integer(out, conn.id as i64);
    bulk(out, Some(b"mode"));
    bulk(out, Some(b"standalone"));
    bulk(out, Some(b"role"));
    bulk(out, Some(b"master"));
}

fn client(conn: &mut Conn, args: &[Vec<u8>], out: &mut Vec<u8>) {
    match (args[1].to_ascii_uppercase().as_slice(), args.len()) {
        (b"SETNAME", 3) => {
            if args[2].iter().any(|b| *b <= b' ' || *b > b'~') {
                return error(
                    out,
                    "ERR Client names cannot contain spaces, newlines or special characters.",
                );
            }
            conn.name = (!args[2].is_empty()).then(|| args[2].clone());
            simple(out, "OK");
        }
        (b"GETNAME", 2) => bulk(out, conn.name.as_deref()),
        (b"ID", 2) => integer(out, conn.id as i64),
        (b"SETINFO", 4) => simple(out, "OK"),
        _ => error(
            out,
            "ERR unknown CLIENT subcommand or wrong number of arguments; this endpoint has CLIENT SETNAME, GETNAME, ID and SETINFO",
        ),
    }
}

fn config(args: &[Vec<u8>], out: &mut Vec<u8>, resp3: bool) {
    match args[1].to_ascii_uppercase().as_slice() {
        // Two parameters have a true answer (clients such as redis-benchmark ask for them):
        // no snapshots (`save` is empty), and every write goes through the storage journal
        // before it is acknowledged (`appendonly yes`). Other patterns match nothing.
        b"GET" if args.len() >= 3 => {
            let known: &[(&str, &str)] = &[("save", ""), ("appendonly", "yes")];
            let asked: Vec<Vec<u8>> = args[2..].iter().map(|a| a.to_ascii_lowercase()).collect();
            let found: Vec<&(&str, &str)> = known
                .iter()
                .filter(|(k, _)| asked.iter().any(|a| a == b"*" || a == k.as_bytes()))
                .collect();
            map(out, found.len(), resp3);
            for (k, v) in found {
                bulk(out, Some(k.as_bytes()));
                bulk(out, Some(v.as_bytes()));
            }
        }
        _ => error(
            out,
            "ERR CONFIG SET and other CONFIG subcommands are not supported; dynamokv is configured with its own flags (dynamokv server --help)",
        ),
    }
}

fn command(args: &[Vec<u8>], out: &mut Vec<u8>, resp3: bool) {
    let sub = args.get(1).map(|s| s.to_ascii_uppercase());
    let wanted: Vec<&Spec> = match sub.as_deref() {
        None => COMMANDS.iter().collect(),
        Some(b"COUNT") => return integer(out, COMMANDS.len() as i64),
        Some(b"INFO") | Some(b"DOCS") => {
            let names: Vec<Vec<u8>> = args[2..].iter().map(|a| a.to_ascii_lowercase()).collect();
            COMMANDS
                .iter()
                .filter(|c| names.is_empty() || names.iter().any(|n| n == c.0.as_bytes()))
                .collect()
        }
        Some(_) => {
            return error(
                out,
                "ERR unknown COMMAND subcommand; this endpoint has COMMAND, COMMAND COUNT, COMMAND INFO and COMMAND DOCS",
            );
        }
    };
    if sub.as_deref() == Some(b"DOCS") {
        // A map of name to a map of summary, since and group.
        map(out, wanted.len(), resp3);
        for c in wanted {
            bulk(out, Some(c.0.as_bytes()));
            map(out, 3, resp3);
            for (k, v) in [("summary", c.6), ("since", "0.1.0"), ("group", "dynamokv")] {
                bulk(out, Some(k.as_bytes()));
                bulk(out, Some(v.as_bytes()));
            }
        }
        return;
    }
    array(out, wanted.len());
    for (name, arity, flags, first, last, step, _) in wanted {
        array(out, 6);
        bulk(out, Some(name.as_bytes()));
        integer(out, *arity);
        array(out, flags.len());
        for f in *flags {
            simple(out, f);
        }
        integer(out, *first);
        integer(out, *last);
        integer(out, *step);
    }
}
