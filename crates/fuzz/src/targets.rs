//! The fuzz targets: every decoder that reads bytes a peer or a client sent.
//!
//! Each target says what it promises beyond "no panic": decoded values survive an encode and
//! decode unchanged, framing does not depend on how the bytes were split into reads, a RESP
//! command parses the same from exactly its own bytes, a decoded key is within the key limits.

use crate::engine::Target;
use crate::inputs;
use arbitrary::Unstructured;
use axum::http::{HeaderMap, HeaderValue, Uri};
use dynamokv_core::ContextCodec;
use dynamokv_core::membership::{Member, Status};
use dynamokv_server::http::{CONTEXT_HEADER, kv, percent_decode_strict};
use dynamokv_server::resp::codec::{self as resp, Limits};
use dynamokv_server::transport::{
    self, Frame, HANDSHAKE_MAX_FRAME, Hello, decode_frame, decode_hello, encode_frame, encode_hello,
};
use tokio_util::bytes::BytesMut;
use tokio_util::codec::Decoder;

/// Every target, in the order the runner takes them.
pub fn all() -> Vec<Target> {
    vec![
        Target {
            name: "peer_stream",
            about: "bytes on the peer port: length-prefixed framing (the handshake's 64 KiB limit), the hello, then frames",
            seeds: peer_stream_seeds,
            generate: peer_stream_generate,
            check: peer_stream,
        },
        Target {
            name: "hello",
            about: "the first frame of a peer connection: magic, version, member record",
            seeds: || vec![encode_hello(&sample_hello()).to_vec()],
            generate: |u| {
                Ok(encode_hello(&Hello {
                    nonce: u.arbitrary()?,
                    member: inputs::member(u)?,
                    cluster: u.arbitrary()?,
                })
                .to_vec())
            },
            check: hello,
        },
        Target {
            name: "frame",
            about: "frames after the hello: handshake steps and every peer message (envelopes of kv, handoff, gossip, sync)",
            seeds: frame_seeds,
            generate: |u| Ok(encode_frame(&inputs::frame(u)?).to_vec()),
            check: frame,
        },
        Target {
            name: "context",
            about: "context tokens from X-Context and DKV.PUT: the token checks, then the payload behind a valid MAC",
            seeds: context_seeds,
            generate: context_generate,
            check: context,
        },
        Target {
            name: "resp",
            about: "the RESP command parser, with tight limits and with the server's",
            seeds: resp_seeds,
            generate: |u| {
                let pieces: Vec<inputs::RespPiece> = u.arbitrary()?;
                Ok(inputs::resp_stream(&pieces))
            },
            check: resp_target,
        },
        Target {
            name: "http",
            about: "HTTP request parts: the key path segment, the quorum query, the X-Context header",
            seeds: http_seeds,
            generate: http_generate,
            check: http,
        },
    ]
}

/// The target named `name`.
pub fn by_name(name: &str) -> Option<Target> {
    all().into_iter().find(|t| t.name == name)
}

fn codec() -> ContextCodec {
    ContextCodec::from_passphrase("fuzzing secret")
}

fn sample_member() -> Member {
    Member {
        id: "n1".into(),
        generation: 3,
        version: 7,
        status: Status::Up,
        peer_addr: "127.0.0.1:7001".into(),
        http_addr: "127.0.0.1:8001".into(),
        tokens: vec![1, 1 << 40, u64::MAX],
        instance: 42,
        epoch: 5,
    }
}

fn sample_hello() -> Hello {
    Hello {
        nonce: [7; 32],
        member: sample_member(),
        cluster: 0x1234,
    }
}

fn sample_frames() -> Vec<Frame> {
    let mut frames = vec![
        Frame::Challenge {
            nonce: [1; 32],
            member: sample_member(),
            cluster: 0x1234,
            proof: [2; 32],
        },
        Frame::Proof([3; 32]),
        Frame::Welcome,
        Frame::Refused("the proof does not match".into()),
        Frame::Ended(dynamokv_core::membership::Ended {
            id: "n1".into(),
            instance: 42,
            how: dynamokv_core::membership::Ending::Removed,
            by: "n2".into(),
        }),
    ];
    frames.extend(inputs::seed_messages().into_iter().map(Frame::Message));
    frames
}

fn frame_seeds() -> Vec<Vec<u8>> {
    sample_frames()
        .iter()
        .map(|f| encode_frame(f).to_vec())
        .collect()
}

fn length_prefixed(out: &mut Vec<u8>, body: &[u8]) {
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
}

fn peer_stream_seeds() -> Vec<Vec<u8>> {
    let frames = sample_frames();
    let mut seeds = Vec::new();
    for chunk in frames.chunks(4) {
        let mut s = Vec::new();
        length_prefixed(&mut s, &encode_hello(&sample_hello()));
        for f in chunk {
            length_prefixed(&mut s, &encode_frame(f));
        }
        seeds.push(s);
    }
    seeds
}

fn peer_stream_generate(u: &mut Unstructured<'_>) -> arbitrary::Result<Vec<u8>> {
    let mut s = Vec::new();
    let hello = encode_hello(&Hello {
        nonce: u.arbitrary()?,
        member: inputs::member(u)?,
        cluster: u.arbitrary()?,
    });
    length_prefixed(&mut s, &hello);
    for _ in 0..u.int_in_range(0..=4)? {
        let body = encode_frame(&inputs::frame(u)?);
        if u.ratio(1, 8)? {
            // A length that does not match the body.
            s.extend_from_slice(&u.arbitrary::<u32>()?.to_be_bytes());
            s.extend_from_slice(&body);
        } else {
            length_prefixed(&mut s, &body);
        }
    }
    Ok(s)
}

/// Frames `input` the way a peer connection does, feeding the decoder `chunks` bytes at a
/// time; the frames, then the error or what was left over.
fn split_frames(input: &[u8], chunk: usize) -> (Vec<Vec<u8>>, String) {
    let mut codec = transport::codec(HANDSHAKE_MAX_FRAME);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for piece in input.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(f)) => frames.push(f.to_vec()),
                Ok(None) => break,
                Err(e) => return (frames, format!("err: {e}")),
            }
        }
        // A connection's buffer holds at most one frame (and its prefix) beyond what arrived.
        if buf.len() > HANDSHAKE_MAX_FRAME + 4 + chunk {
            return (frames, format!("buffer grew to {} bytes", buf.len()));
        }
    }
    (frames, format!("{} bytes left", buf.len()))
}

fn peer_stream(input: &[u8]) -> Result<String, String> {
    let (whole, end) = split_frames(input, input.len());
    for chunk in [1, 7, 4096] {
        let (split, split_end) = split_frames(input, chunk);
        if split != whole || (split_end.starts_with("err") != end.starts_with("err")) {
            return Err(format!(
                "framing depends on read sizes: {} frames ({end}) whole, {} ({split_end}) in {chunk}-byte reads",
                whole.len(),
                split.len()
            ));
        }
        if split_end.starts_with("buffer") {
            return Err(split_end);
        }
    }
    let Some((first, rest)) = whole.split_first() else {
        return Ok(format!("no frame; {end}"));
    };
    if let Err(e) = decode_hello(first) {
        return Ok(format!("hello refused: {e}"));
    }
    let decoded = rest.iter().filter(|f| decode_frame(f).is_ok()).count();
    Ok(format!(
        "ok: hello and {decoded} of {} frames; {end}",
        rest.len()
    ))
}

fn hello(input: &[u8]) -> Result<String, String> {
    match decode_hello(input) {
        Err(e) => Ok(format!("err: {e}")),
        Ok(h) => {
            let again = decode_hello(&encode_hello(&h));
            if again.as_ref() != Ok(&h) {
                return Err(format!(
                    "hello does not survive a round trip: {h:?} -> {again:?}"
                ));
            }
            Ok("ok".into())
        }
    }
}

fn frame(input: &[u8]) -> Result<String, String> {
    let f = match decode_frame(input) {
        Err(e) => return Ok(format!("err: {e}")),
        Ok(f) => f,
    };
    let again = decode_frame(&encode_frame(&f));
    if again.as_ref() != Ok(&f) {
        return Err(format!("frame does not survive a round trip: {f:?}"));
    }
    // Receivers validate every object before merging it: that must hold up too.
    let mut invalid = 0;
    visit_objects(&f, &mut |o| invalid += usize::from(o.validate().is_err()));
    let kind = match &f {
        Frame::Message(m) => format!("{m:?}").split('(').nth(1).unwrap_or("").to_owned(),
        other => format!("{other:?}"),
    };
    let kind: String = kind.chars().take_while(|c| c.is_alphanumeric()).collect();
    Ok(format!("ok: {kind}, {invalid} invalid objects"))
}

fn visit_objects(f: &Frame, visit: &mut impl FnMut(&dynamokv_core::Object)) {
    use dynamokv_core::message::{HandoffMessage as H, KvMessage as K, Message as M};
    use dynamokv_core::message::{HandoverMessage as O, Reply, SyncMessage as S};
    let Frame::Message(m) = f else { return };
    match m {
        M::Kv(K::Replicate { object, .. } | K::Repair { object, .. })
        | M::Handoff(H::Deliver { object, .. })
        | M::Handover(O::Offer { object, .. }) => visit(object),
        M::Kv(K::ReadReply {
            result: Ok(Some(object)),
            ..
        }) => visit(object),
        M::Kv(K::ForwardReply {
            response: Ok(Reply::Read(object) | Reply::Written { object, .. }),
            ..
        }) => visit(object),
        M::Sync(S::Push { objects, .. } | S::Pull { objects, .. }) => {
            objects.iter().for_each(|(_, o)| visit(o))
        }
        _ => {}
    }
}

const TOKEN: u8 = 0;
const PAYLOAD: u8 = 1;

fn context_seeds() -> Vec<Vec<u8>> {
    let c = codec();
    let mut seeds = Vec::new();
    for raw in [[1u8; 64], [9u8; 64], [200u8; 64]] {
        if let Ok(v) = inputs::vv(&mut Unstructured::new(&raw)) {
            let mut s = vec![TOKEN];
            s.extend_from_slice(c.encode(b"k", &v).as_bytes());
            seeds.push(s);
        }
    }
    seeds.push(vec![PAYLOAD, 1, 3, 5, 7]);
    seeds
}

fn context_generate(u: &mut Unstructured<'_>) -> arbitrary::Result<Vec<u8>> {
    let v = inputs::vv(u)?;
    Ok(if u.arbitrary()? {
        let mut s = vec![TOKEN];
        s.extend_from_slice(codec().encode(b"k", &v).as_bytes());
        s
    } else {
        let entries: Vec<(u64, u64, u64)> = u.arbitrary()?;
        let mut s = vec![PAYLOAD];
        s.extend(postcard::to_allocvec(&entries).unwrap_or_default());
        s
    })
}

fn context(input: &[u8]) -> Result<String, String> {
    let c = codec();
    let Some((mode, rest)) = input.split_first() else {
        return Ok("empty".into());
    };
    let decoded = if *mode == PAYLOAD {
        ContextCodec::decode_payload(rest)
    } else {
        c.decode(b"k", &String::from_utf8_lossy(rest))
    };
    match decoded {
        Err(e) => Ok(format!("err: {e}")),
        Ok(v) => {
            let again = c.decode(b"k", &c.encode(b"k", &v));
            if again.as_ref() != Ok(&v) {
                return Err(format!("vector does not survive a round trip: {v:?}"));
            }
            if c.decode(b"other key", &c.encode(b"k", &v)).is_ok() {
                return Err("a token for one key is taken for another".into());
            }
            Ok(format!(
                "ok: {}",
                if *mode == PAYLOAD { "payload" } else { "token" }
            ))
        }
    }
}

fn resp_seeds() -> Vec<Vec<u8>> {
    [
        &b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"[..],
        b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n*1\r\n$4\r\nPING\r\n",
        b"GET k\r\nSET k \"quoted value\"\r\n",
        b"*0\r\n\r\n*-1\r\n",
        b"*5\r\n$5\r\nHELLO\r\n$1\r\n2\r\n$4\r\nAUTH\r\n$1\r\nu\r\n$16\r\n0123456789abcdef\r\n",
    ]
    .iter()
    .map(|s| s.to_vec())
    .collect()
}

/// Tight limits reach every limit check with small inputs.
const TIGHT: Limits = Limits {
    max_args: 8,
    max_bulk: 64,
    max_inline: 128,
    max_command_bytes: 512,
};

fn parse_all(input: &[u8], limits: &Limits) -> Result<String, String> {
    let mut at = 0;
    let mut commands = 0;
    loop {
        let buf = &input[at..];
        match resp::parse(buf, limits) {
            Err(e) => return Ok(format!("err after {commands}: {e}")),
            Ok(None) => return Ok(format!("{commands} commands, incomplete rest")),
            Ok(Some((args, used))) => {
                if used == 0 || used > buf.len() {
                    return Err(format!("parse took {used} of {} bytes", buf.len()));
                }
                // An argument of an inline command is bounded by the line's limit.
                let longest = limits.max_bulk.max(limits.max_inline);
                if args.len() > limits.max_args || args.iter().any(|a| a.len() > longest) {
                    return Err(format!(
                        "a command past the limits was accepted: {} args",
                        args.len()
                    ));
                }
                if used > limits.max_command_bytes + 64 {
                    return Err(format!("a command of {used} bytes was accepted"));
                }
                let alone = resp::parse(&buf[..used], limits);
                if alone != Ok(Some((args.clone(), used))) {
                    return Err(format!(
                        "a command parses differently from exactly its own bytes: {alone:?}"
                    ));
                }
                commands += 1;
                at += used;
            }
        }
    }
}

fn resp_target(input: &[u8]) -> Result<String, String> {
    let tight = parse_all(input, &TIGHT)?;
    let server = parse_all(input, &Limits::for_values(1 << 20))?;
    let any = |s: &str| !s.contains(" 0 commands") && !s.starts_with("err after 0");
    let verdict = if any(&tight) || any(&server) {
        "ok"
    } else {
        "none"
    };
    Ok(format!("{verdict}: tight {tight} / server {server}"))
}

fn http_seeds() -> Vec<Vec<u8>> {
    let token = codec().encode(b"k", &dynamokv_core::VersionVector::new());
    [
        "k\0r=2&pr=1\0".to_owned(),
        format!("k\0w=3\0{token}"),
        "a%2Fb%25c\0r=%31\0".to_owned(),
        "%G1%\0r=1&r=3\0garbage".to_owned(),
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

fn http_generate(u: &mut Unstructured<'_>) -> arbitrary::Result<Vec<u8>> {
    let key = inputs::bytes(u, 48)?;
    let encode = u.arbitrary::<bool>()?;
    let mut s: Vec<u8> = if encode {
        percent_encoding::percent_encode(&key, percent_encoding::NON_ALPHANUMERIC)
            .to_string()
            .into_bytes()
    } else {
        key
    };
    s.push(0);
    for i in 0..u.int_in_range(0..=3)? {
        if i > 0 {
            s.push(b'&');
        }
        let name = *u.choose(&["r", "pr", "w", "pw", "%72", "x", ""])?;
        let value = *u.choose(&["1", "0", "255", "256", "-1", "%33", "%", "abc", ""])?;
        s.extend_from_slice(format!("{name}={value}").as_bytes());
    }
    s.push(0);
    if u.arbitrary()? {
        let v = inputs::vv(u)?;
        s.extend_from_slice(codec().encode(b"k", &v).as_bytes());
    } else {
        s.extend(inputs::bytes(u, 64)?);
    }
    Ok(s)
}

fn http(input: &[u8]) -> Result<String, String> {
    let mut parts = input.splitn(3, |b| *b == 0);
    let path = parts.next().unwrap_or_default();
    let query = parts.next().unwrap_or_default();
    let header = parts.next().unwrap_or_default();

    // The strict decoder on the raw segment, whatever a URI parser would make of it.
    let lossy = String::from_utf8_lossy(path);
    if let Ok(decoded) = percent_decode_strict(&lossy) {
        let encoded =
            percent_encoding::percent_encode(&decoded, percent_encoding::NON_ALPHANUMERIC)
                .to_string();
        if percent_decode_strict(&encoded).as_ref() != Ok(&decoded) {
            return Err(format!("{lossy:?} does not survive encoding and decoding"));
        }
    }

    let mut uri = b"/kv/".to_vec();
    uri.extend_from_slice(path);
    if !query.is_empty() {
        uri.push(b'?');
        uri.extend_from_slice(query);
    }
    let Ok(uri) = Uri::try_from(uri) else {
        return Ok("uri refused".into());
    };
    let key = match dynamokv_server::http::key_after(&uri, "/kv/") {
        Err(e) => return Ok(format!("key refused: {} {}", e.code(), e.message())),
        Ok(k) => k,
    };
    if dynamokv_core::limits::check_key(&key).is_err() {
        return Err(format!(
            "a key outside the limits was accepted: {} bytes",
            key.len()
        ));
    }
    let quorum = match kv::quorum_params(&uri, ["r", "pr"]) {
        Err(e) => format!("query refused: {}", e.message()),
        Ok(v) => format!("ok query {:?}", v.map(|x| x.is_some())),
    };
    let mut headers = HeaderMap::new();
    let context = match HeaderValue::from_bytes(header) {
        Err(_) => "header refused".to_owned(),
        Ok(v) => {
            headers.insert(CONTEXT_HEADER, v);
            match kv::context_from(&codec(), &key, &headers) {
                Ok(c) => format!("ok context {}", c.is_some()),
                Err(e) => format!("context refused: {}", e.message()),
            }
        }
    };
    Ok(format!("ok key; {quorum}; {context}"))
}
