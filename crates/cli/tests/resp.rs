//! End-to-end: the RESP endpoint (`--resp`) with a raw protocol client, the real `redis-cli`
//! and `redis-benchmark`, pipelining, and hostile input.
//!
//! Over 700 lines: the whole file is tests of one door, sharing one raw client; the command
//! table test walks every documented command, expiry and counters included, in one place.

mod common;

use common::{Node, dirs, rss_kib, start_cluster, wait_for_ring};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

/// A reply as the client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum V {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<V>),
    /// RESP3's null (`_`).
    Null,
    /// A RESP3 map (`%`), as its pairs in order.
    Map(Vec<(V, V)>),
}

impl V {
    fn bulk(s: &str) -> V {
        V::Bulk(Some(s.as_bytes().to_vec()))
    }
    fn ok() -> V {
        V::Simple("OK".into())
    }
    fn is_error_with(&self, text: &str) -> bool {
        matches!(self, V::Error(e) if e.contains(text))
    }
    fn array(&self) -> &[V] {
        match self {
            V::Array(a) => a,
            other => panic!("not an array: {other:?}"),
        }
    }
}

/// A raw RESP connection.
struct Resp {
    r: BufReader<TcpStream>,
}

impl Resp {
    fn connect(addr: &str) -> Resp {
        let s = TcpStream::connect(addr).expect("connect to the RESP port");
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Resp {
            r: BufReader::new(s),
        }
    }

    fn encode(args: &[&[u8]]) -> Vec<u8> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend(format!("${}\r\n", a.len()).bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        self.r.get_mut().write_all(bytes).unwrap();
    }

    fn read(&mut self) -> V {
        let mut line = String::new();
        self.r.read_line(&mut line).expect("read a reply");
        assert!(line.ends_with("\r\n"), "truncated reply line {line:?}");
        let (kind, rest) = line.trim_end().split_at(1);
        match kind {
            "+" => V::Simple(rest.into()),
            "-" => V::Error(rest.into()),
            ":" => V::Int(rest.parse().unwrap()),
            "$" => {
                let n: i64 = rest.parse().unwrap();
                if n < 0 {
                    return V::Bulk(None);
                }
                let mut data = vec![0; n as usize + 2];
                self.r.read_exact(&mut data).unwrap();
                data.truncate(n as usize);
                V::Bulk(Some(data))
            }
            "*" => {
                let n: usize = rest.parse().unwrap();
                V::Array((0..n).map(|_| self.read()).collect())
            }
            "_" => V::Null,
            "%" => {
                let n: usize = rest.parse().unwrap();
                V::Map((0..n).map(|_| (self.read(), self.read())).collect())
            }
            _ => panic!("not a RESP reply: {line:?}"),
        }
    }

    fn cmd(&mut self, args: &[&str]) -> V {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.send_raw(&Self::encode(&args));
        self.read()
    }

    /// Whether the server closed the connection (reads end) within a few seconds.
    fn closed(&mut self) -> bool {
        self.r
            .get_ref()
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut rest = Vec::new();
        self.r.read_to_end(&mut rest).is_ok()
    }
}

fn resp_cluster(n: usize, extra: &[&str]) -> (Vec<tempfile::TempDir>, Vec<Node>) {
    let d = dirs(n);
    let mut args = vec!["--resp", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let nodes = start_cluster(&d, &args);
    (d, nodes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_answers_as_documented() {
    let (_d, nodes) = resp_cluster(3, &[]);
    wait_for_ring(&nodes.iter().collect::<Vec<_>>(), 3).await;
    let mut a = Resp::connect(&nodes[0].resp);
    let mut b = Resp::connect(&nodes[1].resp);

    assert_eq!(a.cmd(&["PING"]), V::Simple("PONG".into()));
    assert_eq!(a.cmd(&["ping", "hi"]), V::bulk("hi"));
    assert_eq!(a.cmd(&["ECHO", "x y"]), V::bulk("x y"));
    // Inline commands, as typed into telnet.
    a.send_raw(b"PING\r\n");
    assert_eq!(a.read(), V::Simple("PONG".into()));

    assert_eq!(a.cmd(&["SET", "k", "v1"]), V::ok());
    assert_eq!(b.cmd(&["GET", "k"]), V::bulk("v1"));
    assert_eq!(b.cmd(&["GET", "missing"]), V::Bulk(None));
    // Unsupported options are refused, and change nothing.
    assert!(
        a.cmd(&["SET", "k", "v2", "GET"])
            .is_error_with("GET is not supported")
    );
    assert!(
        a.cmd(&["SET", "k", "v2", "EX", "0"])
            .is_error_with("invalid expire time")
    );
    assert!(
        a.cmd(&["SET", "k", "v2", "EX", "10", "PX", "5"])
            .is_error_with("syntax error")
    );
    assert!(
        a.cmd(&["SET", "k", "v2", "NX", "XX"])
            .is_error_with("syntax error")
    );
    assert_eq!(b.cmd(&["GET", "k"]), V::bulk("v1"));
    // Conditional: NX only when the key has no value, XX only when it has one; nil otherwise.
    assert_eq!(a.cmd(&["SET", "cond", "v1"]), V::ok());
    assert_eq!(a.cmd(&["SET", "cond", "v2", "NX"]), V::Bulk(None));
    assert_eq!(b.cmd(&["GET", "cond"]), V::bulk("v1"));
    assert_eq!(a.cmd(&["SET", "cond", "v3", "xx"]), V::ok());
    assert_eq!(b.cmd(&["GET", "cond"]), V::bulk("v3"));
    assert_eq!(a.cmd(&["SET", "fresh", "f", "XX"]), V::Bulk(None));
    assert_eq!(b.cmd(&["GET", "fresh"]), V::Bulk(None));
    assert_eq!(a.cmd(&["SET", "fresh", "f", "NX"]), V::ok());
    assert_eq!(b.cmd(&["GET", "fresh"]), V::bulk("f"));

    // Expiry: a deadline with SET, EXPIRE, PEXPIRE; TTL and PTTL; PERSIST; gone at the deadline.
    assert_eq!(b.cmd(&["TTL", "fresh"]), V::Int(-1));
    assert_eq!(b.cmd(&["TTL", "nothing"]), V::Int(-2));
    assert_eq!(a.cmd(&["SET", "ex", "v", "EX", "100"]), V::ok());
    let ttl = b.cmd(&["TTL", "ex"]);
    assert!(matches!(ttl, V::Int(99 | 100)), "{ttl:?}");
    assert_eq!(a.cmd(&["PERSIST", "ex"]), V::Int(1));
    assert_eq!(a.cmd(&["PERSIST", "ex"]), V::Int(0));
    assert_eq!(b.cmd(&["TTL", "ex"]), V::Int(-1));
    assert_eq!(a.cmd(&["EXPIRE", "ex", "50", "XX"]), V::Int(0));
    assert_eq!(a.cmd(&["EXPIRE", "ex", "50", "NX"]), V::Int(1));
    assert_eq!(a.cmd(&["EXPIRE", "ex", "40", "GT"]), V::Int(0));
    assert_eq!(a.cmd(&["EXPIRE", "ex", "40", "LT"]), V::Int(1));
    assert_eq!(a.cmd(&["EXPIRE", "nothing", "40"]), V::Int(0));
    assert!(
        a.cmd(&["EXPIRE", "ex", "x"])
            .is_error_with("not an integer")
    );
    assert!(
        a.cmd(&["EXPIRE", "ex", "9", "ZZ"])
            .is_error_with("unsupported option ZZ")
    );
    assert_eq!(a.cmd(&["SET", "ex", "w", "XX", "KEEPTTL"]), V::ok());
    let pttl = b.cmd(&["PTTL", "ex"]);
    assert!(matches!(pttl, V::Int(30_000..=40_000)), "{pttl:?}");
    assert_eq!(b.cmd(&["GET", "ex"]), V::bulk("w"));
    assert_eq!(a.cmd(&["PEXPIRE", "ex", "300"]), V::Int(1));
    assert_eq!(a.cmd(&["SET", "px", "v", "PX", "300"]), V::ok());
    assert_eq!(b.cmd(&["EXISTS", "ex", "px"]), V::Int(2));
    std::thread::sleep(std::time::Duration::from_millis(400));
    assert_eq!(b.cmd(&["GET", "ex"]), V::Bulk(None));
    assert_eq!(b.cmd(&["EXISTS", "ex", "px"]), V::Int(0));
    assert_eq!(b.cmd(&["TTL", "px"]), V::Int(-2));
    assert_eq!(
        a.cmd(&["SET", "px", "again", "NX"]),
        V::ok(),
        "expired: absent"
    );
    assert_eq!(a.cmd(&["EXPIRE", "px", "0"]), V::Int(1), "0 deletes");
    assert_eq!(b.cmd(&["GET", "px"]), V::Bulk(None));

    // Counters: INCR and friends through any node; GET answers the number; types kept apart.
    assert_eq!(a.cmd(&["INCR", "hits"]), V::Int(1));
    assert_eq!(b.cmd(&["INCRBY", "hits", "41"]), V::Int(42));
    assert_eq!(a.cmd(&["DECR", "hits"]), V::Int(41));
    assert_eq!(b.cmd(&["DECRBY", "hits", "-9"]), V::Int(50));
    assert_eq!(a.cmd(&["GET", "hits"]), V::bulk("50"));
    assert!(a.cmd(&["SET", "hits", "x"]).is_error_with("WRONGTYPE"));
    assert!(a.cmd(&["INCR", "fresh"]).is_error_with("WRONGTYPE"));
    assert!(
        a.cmd(&["INCRBY", "hits", "x"])
            .is_error_with("not an integer")
    );
    assert!(
        a.cmd(&["INCRBY", "hits", &i64::MAX.to_string()])
            .is_error_with("overflow")
    );
    assert!(
        a.cmd(&["EXPIRE", "hits", "10"])
            .is_error_with("do not expire")
    );
    assert_eq!(b.cmd(&["GET", "hits"]), V::bulk("50"));
    assert_eq!(b.cmd(&["GET", "fresh"]), V::bulk("f"));
    assert_eq!(a.cmd(&["DEL", "hits"]), V::Int(1));
    assert_eq!(
        b.cmd(&["INCR", "hits"]),
        V::Int(1),
        "a new counter after DEL"
    );
    assert!(
        a.cmd(&["GET"])
            .is_error_with("wrong number of arguments for 'get'")
    );
    assert!(
        a.cmd(&["NOSUCH", "x"])
            .is_error_with("unknown command 'NOSUCH'")
    );

    assert_eq!(a.cmd(&["MSET", "m1", "1", "m2", "2"]), V::ok());
    assert!(a.cmd(&["MSET", "m1"]).is_error_with("wrong number"));
    assert_eq!(
        b.cmd(&["MGET", "m1", "m2", "m3"]),
        V::Array(vec![V::bulk("1"), V::bulk("2"), V::Bulk(None)])
    );
    assert_eq!(b.cmd(&["EXISTS", "m1", "m2", "m3", "m1"]), V::Int(3));
    assert_eq!(a.cmd(&["DEL", "m1", "m3"]), V::Int(1));
    assert_eq!(b.cmd(&["EXISTS", "m1"]), V::Int(0));
    assert_eq!(b.cmd(&["GET", "m1"]), V::Bulk(None));
    assert_eq!(a.cmd(&["DEL", "m1"]), V::Int(0), "already deleted");

    match a.cmd(&["INFO"]) {
        V::Bulk(Some(text)) => {
            let text = String::from_utf8(text).unwrap();
            assert!(text.contains("redis_version:"), "{text}");
            assert!(text.contains("node_id:n1"), "{text}");
        }
        other => panic!("INFO: {other:?}"),
    }
    assert!(a.cmd(&["DBSIZE"]).is_error_with("DBSIZE is not supported"));
    let count = match a.cmd(&["COMMAND", "COUNT"]) {
        V::Int(n) => n as usize,
        other => panic!("{other:?}"),
    };
    assert_eq!(a.cmd(&["COMMAND"]).array().len(), count);
    let docs = a.cmd(&["COMMAND", "DOCS", "get"]);
    assert_eq!(docs.array()[0], V::bulk("get"));
    let info = a.cmd(&["COMMAND", "INFO", "mset"]);
    assert_eq!(info.array()[0].array()[1], V::Int(-3));
    assert_eq!(
        a.cmd(&["CONFIG", "GET", "appendonly"]),
        V::Array(vec![V::bulk("appendonly"), V::bulk("yes")])
    );
    assert!(
        a.cmd(&["CONFIG", "SET", "x", "y"])
            .is_error_with("not supported")
    );
    let hello = a.cmd(&["HELLO", "2"]);
    assert!(hello.array().contains(&V::bulk("proto")));
    assert!(a.cmd(&["HELLO", "4"]).is_error_with("NOPROTO"));
    // RESP3: maps and its own null, on that connection only.
    let mut r3 = Resp::connect(&nodes[2].resp);
    match r3.cmd(&["HELLO", "3"]) {
        V::Map(pairs) => assert!(pairs.contains(&(V::bulk("proto"), V::Int(3))), "{pairs:?}"),
        other => panic!("HELLO 3 answered {other:?}"),
    }
    assert_eq!(r3.cmd(&["GET", "missing"]), V::Null);
    assert_eq!(
        r3.cmd(&["MGET", "k", "missing"]),
        V::Array(vec![V::bulk("v1"), V::Null])
    );
    assert_eq!(
        r3.cmd(&["CONFIG", "GET", "appendonly"]),
        V::Map(vec![(V::bulk("appendonly"), V::bulk("yes"))])
    );
    assert_eq!(b.cmd(&["GET", "missing"]), V::Bulk(None), "RESP2 elsewhere");
    assert!(matches!(r3.cmd(&["HELLO", "2"]), V::Array(_)));
    assert_eq!(r3.cmd(&["GET", "missing"]), V::Bulk(None));
    // MULTI/EXEC: queued, run on EXEC; a refused command dooms the whole transaction.
    assert_eq!(a.cmd(&["MULTI"]), V::ok());
    assert_eq!(a.cmd(&["SET", "tx", "1"]), V::Simple("QUEUED".into()));
    assert_eq!(a.cmd(&["GET", "tx"]), V::Simple("QUEUED".into()));
    assert_eq!(a.cmd(&["EXEC"]), V::Array(vec![V::ok(), V::bulk("1")]));
    assert_eq!(a.cmd(&["MULTI"]), V::ok());
    assert_eq!(a.cmd(&["SET", "tx", "2"]), V::Simple("QUEUED".into()));
    assert!(
        a.cmd(&["SET", "tx"])
            .is_error_with("wrong number of arguments")
    );
    assert!(a.cmd(&["EXEC"]).is_error_with("EXECABORT"));
    assert_eq!(a.cmd(&["MULTI"]), V::ok());
    assert_eq!(a.cmd(&["SET", "tx", "3"]), V::Simple("QUEUED".into()));
    assert_eq!(a.cmd(&["DISCARD"]), V::ok());
    assert_eq!(
        b.cmd(&["GET", "tx"]),
        V::bulk("1"),
        "nothing refused or discarded applied"
    );
    assert!(a.cmd(&["EXEC"]).is_error_with("EXEC without MULTI"));
    assert!(a.cmd(&["WATCH", "tx"]).is_error_with("not supported"));
    assert_eq!(a.cmd(&["CLIENT", "GETNAME"]), V::Bulk(None));
    assert_eq!(a.cmd(&["CLIENT", "SETNAME", "tester"]), V::ok());
    assert_eq!(a.cmd(&["CLIENT", "GETNAME"]), V::bulk("tester"));
    assert!(
        a.cmd(&["CLIENT", "SETNAME", "a b"])
            .is_error_with("cannot contain spaces")
    );
    assert_eq!(a.cmd(&["SELECT", "0"]), V::ok());
    assert!(a.cmd(&["SELECT", "1"]).is_error_with("out of range"));

    // Dynamo semantics: blind writes become siblings, DKV.GET shows them all with one
    // context, GET answers the newest, a DKV.PUT with the context reconciles them.
    let c0 = b.cmd(&["DKV.PUT", "s", "one"]);
    assert!(matches!(c0, V::Bulk(Some(_))), "{c0:?}");
    b.cmd(&["DKV.PUT", "s", "two"]);
    let got = a.cmd(&["DKV.GET", "s", "R", "3"]);
    let got = got.array();
    let mut values = got[1].array().to_vec();
    values.sort_by_key(|v| format!("{v:?}"));
    assert_eq!(values, vec![V::bulk("one"), V::bulk("two")]);
    assert_eq!(a.cmd(&["GET", "s"]), V::bulk("two"), "the newest sibling");
    let V::Bulk(Some(ctx)) = got[0].clone() else {
        panic!("a context: {got:?}")
    };
    let ctx = String::from_utf8(ctx).unwrap();
    assert!(a.cmd(&["DKV.GET", "s", "R", "9"]).is_error_with("r=9"));
    assert!(
        a.cmd(&["DKV.GET", "s", "Q", "1"])
            .is_error_with("unknown option Q")
    );
    assert!(
        a.cmd(&["DKV.PUT", "s", "x", "garbage"])
            .is_error_with("bad context")
    );
    assert!(
        a.cmd(&["DKV.PUT", "other", "x", &ctx])
            .is_error_with("bad context")
    );
    assert_eq!(
        a.cmd(&["DKV.GET", "s"]).array()[1].array().len(),
        2,
        "unchanged"
    );
    let merged = a.cmd(&["DKV.PUT", "s", "both", &ctx, "W", "3"]);
    assert!(matches!(merged, V::Bulk(Some(_))));
    assert_eq!(
        b.cmd(&["DKV.GET", "s"]).array()[1],
        V::Array(vec![V::bulk("both")])
    );
    // SET replaces the siblings its coordinator holds.
    b.cmd(&["DKV.PUT", "s", "three"]);
    assert_eq!(
        b.cmd(&["DKV.GET", "s", "R", "3"]).array()[1].array().len(),
        2
    );
    assert_eq!(b.cmd(&["SET", "s", "four"]), V::ok());
    assert_eq!(
        a.cmd(&["DKV.GET", "s", "R", "3"]).array()[1],
        V::Array(vec![V::bulk("four")])
    );
    let ctx = match a.cmd(&["DKV.GET", "s"]).array()[0].clone() {
        V::Bulk(Some(c)) => String::from_utf8(c).unwrap(),
        other => panic!("{other:?}"),
    };
    assert!(matches!(a.cmd(&["DKV.DEL", "s", &ctx]), V::Bulk(Some(_))));
    assert_eq!(b.cmd(&["GET", "s"]), V::Bulk(None));
    let gone = b.cmd(&["DKV.GET", "s"]);
    assert!(
        matches!(gone.array()[0], V::Bulk(Some(_))),
        "the delete's context"
    );
    assert_eq!(gone.array()[1], V::Array(vec![]));

    assert_eq!(a.cmd(&["QUIT"]), V::ok());
    assert!(a.closed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_is_answered_in_order_and_sees_its_own_writes() {
    let (_d, nodes) = resp_cluster(3, &[]);
    wait_for_ring(&nodes.iter().collect::<Vec<_>>(), 3).await;
    let mut a = Resp::connect(&nodes[2].resp);
    // Writes and reads of one key in one pipeline keep their order.
    let mut wire = Vec::new();
    for args in [
        &["SET", "o", "1"][..],
        &["GET", "o"],
        &["SET", "o", "2"],
        &["GET", "o"],
        &["DEL", "o"],
        &["EXISTS", "o"],
        &["PING"],
    ] {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        wire.extend(Resp::encode(&args));
    }
    a.send_raw(&wire);
    let replies: Vec<V> = (0..7).map(|_| a.read()).collect();
    assert_eq!(
        replies,
        vec![
            V::ok(),
            V::bulk("1"),
            V::ok(),
            V::bulk("2"),
            V::Int(1),
            V::Int(0),
            V::Simple("PONG".into())
        ]
    );
    // 10 000 commands in one write: 1 000 SETs, then 9 000 GETs and PINGs.
    let mut wire = Vec::new();
    for i in 0..1000 {
        let (k, v) = (format!("p{i}"), format!("v{i}"));
        wire.extend(Resp::encode(&[b"SET", k.as_bytes(), v.as_bytes()]));
    }
    for i in 0..9000 {
        if i % 10 == 9 {
            wire.extend(Resp::encode(&[b"PING"]));
        } else {
            let k = format!("p{}", i % 1000);
            wire.extend(Resp::encode(&[b"GET", k.as_bytes()]));
        }
    }
    let writer = {
        let mut s = a.r.get_ref().try_clone().unwrap();
        std::thread::spawn(move || s.write_all(&wire).unwrap())
    };
    for i in 0..1000 {
        assert_eq!(a.read(), V::ok(), "SET {i}");
    }
    for i in 0..9000 {
        let want = if i % 10 == 9 {
            V::Simple("PONG".into())
        } else {
            V::bulk(&format!("v{}", i % 1000))
        };
        assert_eq!(a.read(), want, "reply {i}");
    }
    writer.join().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_resp_input_gets_errors_and_the_node_stays_up_and_small() {
    let (_d, nodes) = resp_cluster(1, &["--max-value-bytes", "1000"]);
    let node = &nodes[0];
    let addr = node.resp.clone();
    let pid = node.pid().unwrap();
    let before = rss_kib(pid);

    // Protocol violations: an error, then the connection closes.
    for (wire, error) in [
        (&b"*2147483648\r\n"[..], "invalid multibulk length"),
        (
            b"*-1\r\n*99999999999999999999\r\n",
            "invalid multibulk length",
        ),
        (b"*1\r\n$2147483648\r\n", "invalid bulk length"),
        (
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$70000\r\n",
            "invalid bulk length",
        ),
        (b"*1\r\n$4\r\nPINGxx", "not followed by CRLF"),
        (b"*1\r\n:5\r\n", "expected '$'"),
    ] {
        let mut c = Resp::connect(&addr);
        c.send_raw(wire);
        let reply = c.read();
        assert!(
            reply.is_error_with(error),
            "{:?} -> {reply:?}",
            String::from_utf8_lossy(wire)
        );
        assert!(c.closed(), "{:?}", String::from_utf8_lossy(wire));
    }
    // An inline line that never ends.
    let mut c = Resp::connect(&addr);
    c.send_raw(&vec![b'a'; 70 * 1024]);
    assert!(c.read().is_error_with("inline command is longer"));
    assert!(c.closed());
    // A frame cut short, then the client goes away: no reply, the connection just ends.
    let mut c = Resp::connect(&addr);
    c.send_raw(b"*2\r\n$3\r\nGET\r\n$1\r\nk");
    c.r.get_ref().shutdown(std::net::Shutdown::Write).unwrap();
    assert!(c.closed());
    // Refusals that keep the connection: a value over --max-value-bytes, a long key.
    let mut c = Resp::connect(&addr);
    let big = "x".repeat(2000);
    assert!(
        c.cmd(&["SET", "k", &big])
            .is_error_with("more than the 1000 bytes")
    );
    assert!(
        c.cmd(&["SET", &"k".repeat(2000), "v"])
            .is_error_with("keys are 1 to 1024")
    );
    assert_eq!(c.cmd(&["GET", "k"]), V::Bulk(None), "nothing was written");
    // Many connections, each holding a large partial command the limits allow.
    let mut partial = Vec::new();
    for _ in 0..50 {
        let mut p = Resp::connect(&addr);
        p.send_raw(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$65536\r\n");
        p.send_raw(&vec![b'z'; 60_000]);
        partial.push(p);
    }
    // Binary garbage (without '*', which would start a frame, or CR) is a pile of unknown
    // inline commands, not a crash.
    let mut g = Resp::connect(&addr);
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .filter(|b| *b != b'*' && *b != b'\r')
        .collect();
    g.send_raw(&garbage);
    g.send_raw(b"\r\nPING\r\n");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = g.read();
        if v == V::Simple("PONG".into()) {
            break;
        }
        assert!(matches!(v, V::Error(_)), "{v:?}");
        assert!(Instant::now() < deadline);
    }
    // Still serving, and not much bigger for all of it.
    assert_eq!(c.cmd(&["PING"]), V::Simple("PONG".into()));
    let after = rss_kib(pid);
    drop(partial);
    assert!(
        after < before + 64 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
    let mut fresh = Resp::connect(&addr);
    assert_eq!(fresh.cmd(&["SET", "k", "fine"]), V::ok());
    assert_eq!(fresh.cmd(&["GET", "k"]), V::bulk("fine"));
}

/// `redis-cli` and `redis-benchmark` (Debian's redis-tools; `.ci/run` installs it).
fn redis_tool(name: &str) -> Command {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "{name} is not installed: install Debian's redis-tools (scripts/test does)"
    );
    Command::new(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cli_and_redis_benchmark_work_against_every_node() {
    let (_d, nodes) = resp_cluster(3, &[]);
    wait_for_ring(&nodes.iter().collect::<Vec<_>>(), 3).await;
    for (i, node) in nodes.iter().enumerate() {
        let (host, port) = node.resp.rsplit_once(':').unwrap();
        let cli = |args: &[&str]| {
            let out = redis_tool("redis-cli")
                .args(["-h", host, "-p", port])
                .args(args)
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            String::from_utf8(out.stdout).unwrap()
        };
        let key = format!("cli{i}");
        assert_eq!(cli(&["SET", &key, "hello world"]).trim(), "OK");
        let next = &nodes[(i + 1) % 3].resp;
        let (h2, p2) = next.rsplit_once(':').unwrap();
        let out = redis_tool("redis-cli")
            .args(["-h", h2, "-p", p2, "GET", &key])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "hello world");
        assert_eq!(cli(&["PING"]).trim(), "PONG");
        for pipeline in ["1", "16"] {
            let out = redis_tool("redis-benchmark")
                .args(["-h", host, "-p", port])
                .args(["-t", "set,get", "-n", "2000", "-c", "10", "-d", "100"])
                .args(["-r", "1000", "-P", pipeline, "-q", "--csv"])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "{out:?}");
            for test in ["\"SET\"", "\"GET\""] {
                let line = text
                    .lines()
                    .find(|l| l.starts_with(test))
                    .unwrap_or_else(|| panic!("no {test} line in {text}"));
                let rps: f64 = line
                    .split(',')
                    .nth(1)
                    .unwrap()
                    .trim_matches('"')
                    .parse()
                    .unwrap();
                assert!(rps > 0.0, "{line}");
            }
            assert!(
                !String::from_utf8_lossy(&out.stderr).contains("ERR"),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // What redis-benchmark wrote is there: its keys hold its 100-byte values.
        let v = cli(&["GET", "key:000000000042"]);
        assert!(v.trim().is_empty() || v.trim().len() == 100, "{v:?}");
        let hits: usize = (0..1000)
            .step_by(50)
            .filter(|n| cli(&["EXISTS", &format!("key:{n:012}")]).trim() == "1")
            .count();
        assert!(hits > 0, "redis-benchmark's SETs are readable");
    }
}

/// The Python with redis-py that scripts/test prepares (`DYNAMOKV_PYTHON`).
fn redis_py() -> Command {
    let python = std::env::var("DYNAMOKV_PYTHON").unwrap_or_else(|_| {
        panic!("DYNAMOKV_PYTHON is not set: run scripts/test, which installs redis-py in a venv")
    });
    let mut c = Command::new(python);
    // Any warning (such as "does not support HELLO (RESP3)") fails the script.
    c.args(["-W", "error"]);
    c
}

const REDIS_PY_SCRIPT: &str = r#"
import sys, redis
port = int(sys.argv[1])
r = redis.Redis(port=port)  # redis-py 8: HELLO 3 and RESP3 by default
assert r.connection_pool.get_connection().protocol in (3, "3"), "RESP3 in use"
assert r.set("py", "1") is True
assert r.get("py") == b"1"
assert r.get("py-missing") is None
assert r.mget("py", "py-missing") == [b"1", None]
assert r.exists("py") == 1
assert r.config_get("appendonly") == {"appendonly": "yes"}
# The default pipeline is a MULTI/EXEC transaction.
p = r.pipeline()
p.set("py-tx", "a"); p.get("py-tx"); p.get("py-missing")
assert p.execute() == [True, b"a", None]
# A transaction with a refused command applies nothing.
p = r.pipeline()
p.set("py-tx", "b"); p.execute_command("SET", "py-tx")
try:
    p.execute()
    raise SystemExit("the doomed transaction ran")
except redis.ResponseError as e:
    assert "wrong number of arguments" in str(e), e
assert r.get("py-tx") == b"a", r.get("py-tx")
# Without a transaction, a plain pipeline.
p = r.pipeline(transaction=False)
p.set("py-p", "c"); p.get("py-p")
assert p.execute() == [True, b"c"]
assert r.delete("py", "py-tx", "py-p") == 3
# SCAN with MATCH and COUNT through scan_iter (cursors parsed as integers), and KEYS.
r.mset({f"py-scan:{i:02}": i for i in range(25)})
assert sorted(r.scan_iter(match="py-scan:*", count=7)) == [f"py-scan:{i:02}".encode() for i in range(25)]
assert sorted(r.keys("py-scan:1?")) == [f"py-scan:1{i}".encode() for i in range(10)]
assert r.delete(*[f"py-scan:{i:02}" for i in range(25)]) == 25
assert list(r.scan_iter(match="py-scan:*")) == []
# Expiry, conditional SET and counters as redis-py sends them.
assert r.set("py-ex", "v", ex=100) is True
assert r.ttl("py-ex") in (99, 100) and 0 < r.pttl("py-ex") <= 100000
assert r.expire("py-ex", 50) is True and r.persist("py-ex") is True and r.ttl("py-ex") == -1
assert r.set("py-nx", "a", nx=True) is True
assert r.set("py-nx", "b", nx=True) is None
assert r.set("py-nx", "c", xx=True, px=60000) is True and r.get("py-nx") == b"c"
assert r.incr("py-c") == 1 and r.incrby("py-c", 9) == 10 and r.decr("py-c", 3) == 7
assert r.get("py-c") == b"7"
assert r.delete("py-ex", "py-nx", "py-c") == 3
# RESP2 when asked.
r2 = redis.Redis(port=port, protocol=2)
assert r2.get("py-missing") is None and r2.config_get("save") == {"save": ""}
print("redis-py", redis.__version__, "ok")
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_py_speaks_resp3_and_its_transactions_apply_all_or_nothing_queued() {
    let (_d, nodes) = resp_cluster(3, &[]);
    wait_for_ring(&nodes.iter().collect::<Vec<_>>(), 3).await;
    let port = nodes[1].resp.rsplit(':').next().unwrap().to_owned();
    let out = redis_py()
        .args(["-c", REDIS_PY_SCRIPT, &port])
        .output()
        .expect("run python");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "redis-py failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains(" ok"), "{stdout}");
    assert!(
        stderr.trim().is_empty(),
        "redis-py wrote to stderr (a warning?): {stderr}"
    );
}
