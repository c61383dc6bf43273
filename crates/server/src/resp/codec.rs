//! RESP framing: parsing the commands clients send and writing the replies (RESP2, and RESP3
//! for a connection that asked for it with `HELLO 3`: see [`resp3`] and [`map`]).
//!
//! Requests are arrays of bulk strings (`*2\r\n$3\r\nGET\r\n$1\r\nk\r\n`) or inline commands
//! (`GET k\r\n`, as typed into telnet). Every count and length is checked against [`Limits`]
//! before anything is allocated for it, so a hostile client cannot make the node reserve memory
//! it never sends: a command is at most `max_command_bytes` in the buffer, whatever its header
//! claims. Written by hand rather than with a RESP crate because only this request subset is
//! needed and each limit must be checked at the point the length is read.

/// Bounds on what one command may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most arguments in one command (the command name included).
    pub max_args: usize,
    /// Longest bulk string (one argument), in bytes.
    pub max_bulk: usize,
    /// Longest inline command line, in bytes.
    pub max_inline: usize,
    /// Most bytes one command may take in the buffer (headers included).
    pub max_command_bytes: usize,
}

impl Limits {
    /// The limits for a node accepting values of up to `max_value_bytes`.
    pub fn for_values(max_value_bytes: usize) -> Self {
        let max_bulk = max_value_bytes.max(64 * 1024);
        Self {
            max_args: 4096,
            max_bulk,
            max_inline: 64 * 1024,
            max_command_bytes: (max_bulk * 2).max(16 * 1024 * 1024),
        }
    }
}

/// A protocol violation: the client gets `-ERR Protocol error: ...` and the connection closes
/// (as Redis does), since the stream can no longer be framed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Protocol error: {0}")]
pub struct ProtocolError(pub String);

fn err<T>(what: impl Into<String>) -> Result<T, ProtocolError> {
    Err(ProtocolError(what.into()))
}

/// A parsed command's arguments and how many bytes of the buffer it took.
pub type Parsed = (Vec<Vec<u8>>, usize);

/// The longest header line (`*N` or `$N`) accepted.
const MAX_HEADER: usize = 32;

/// Finds the `\r\n`-terminated line starting at `at`; `None` when it is not all there yet.
fn line(
    buf: &[u8],
    at: usize,
    max: usize,
    what: &str,
) -> Result<Option<(usize, usize)>, ProtocolError> {
    let rest = &buf[at.min(buf.len())..];
    match rest.iter().take(max + 2).position(|b| *b == b'\r') {
        Some(i) if i + 1 < rest.len() => {
            if rest[i + 1] != b'\n' {
                return err(format!("{what} is not followed by CRLF"));
            }
            Ok(Some((at + i, at + i + 2)))
        }
        Some(_) => Ok(None),
        None if rest.len() > max => err(format!("{what} is too long")),
        None => Ok(None),
    }
}

fn number(bytes: &[u8], what: &str) -> Result<i64, ProtocolError> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .map_or_else(|| err(format!("invalid {what}")), Ok)
}

/// Parses one command from the front of `buf`: its arguments and how many bytes it took, or
/// `None` when the command is not complete yet. An empty argument list is an empty line or
/// `*0`, which clients may send and which gets no reply.
pub fn parse(buf: &[u8], limits: &Limits) -> Result<Option<Parsed>, ProtocolError> {
    match buf.first() {
        None => Ok(None),
        Some(b'*') => parse_multibulk(buf, limits),
        Some(_) => parse_inline(buf, limits),
    }
}

fn parse_multibulk(buf: &[u8], limits: &Limits) -> Result<Option<Parsed>, ProtocolError> {
    let Some((end, mut at)) = line(buf, 1, MAX_HEADER, "the multibulk length")? else {
        return Ok(None);
    };
    let count = number(&buf[1..end], "multibulk length")?;
    if count <= 0 {
        return Ok(Some((Vec::new(), at)));
    }
    if count as u64 > limits.max_args as u64 {
        return err(format!(
            "invalid multibulk length {count}: at most {} arguments per command",
            limits.max_args
        ));
    }
    let count = count as usize;
    // Reserve for what is in the buffer, never for what the header claims.
    let mut args = Vec::with_capacity(count.min(buf.len() / 4 + 1));
    for _ in 0..count {
        match buf.get(at) {
            None => return Ok(None),
            Some(b'$') => {}
            Some(other) => {
                return err(format!("expected '$', got '{}'", char::from(*other)));
            }
        }
        let Some((end, data)) = line(buf, at + 1, MAX_HEADER, "the bulk length")? else {
            return Ok(None);
        };
        let len = number(&buf[at + 1..end], "bulk length")?;
        if len < 0 || len as u64 > limits.max_bulk as u64 {
            return err(format!(
                "invalid bulk length {len}: arguments are at most {} bytes",
                limits.max_bulk
            ));
        }
        let len = len as usize;
        if data + len > limits.max_command_bytes {
            return err(format!(
                "the command is larger than {} bytes",
                limits.max_command_bytes
            ));
        }
        if buf.len() < data + len + 2 {
            return Ok(None);
        }
        if &buf[data + len..data + len + 2] != b"\r\n" {
            return err("a bulk string is not followed by CRLF");
        }
        args.push(buf[data..data + len].to_vec());
        at = data + len + 2;
    }
    Ok(Some((args, at)))
}

fn parse_inline(buf: &[u8], limits: &Limits) -> Result<Option<Parsed>, ProtocolError> {
    let Some(nl) = buf
        .iter()
        .take(limits.max_inline + 1)
        .position(|b| *b == b'\n')
    else {
        if buf.len() > limits.max_inline {
            return err(format!(
                "the inline command is longer than {} bytes",
                limits.max_inline
            ));
        }
        return Ok(None);
    };
    let text = buf[..nl].strip_suffix(b"\r").unwrap_or(&buf[..nl]);
    let args: Vec<Vec<u8>> = text
        .split(|b| b.is_ascii_whitespace())
        .filter(|a| !a.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    if args.len() > limits.max_args {
        return err("too many arguments in an inline command");
    }
    Ok(Some((args, nl + 1)))
}

/// Appends a status reply (`+OK`).
pub fn simple(out: &mut Vec<u8>, s: &str) {
    out.push(b'+');
    out.extend_from_slice(s.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Appends an error reply; `msg` starts with its code (`ERR`, `UNAVAILABLE`, ...). Line breaks
/// in it become spaces, since an error is one line.
pub fn error(out: &mut Vec<u8>, msg: &str) {
    out.push(b'-');
    out.extend(
        msg.bytes()
            .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
    );
    out.extend_from_slice(b"\r\n");
}

/// Appends an integer reply.
pub fn integer(out: &mut Vec<u8>, n: i64) {
    out.push(b':');
    out.extend_from_slice(n.to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Appends a bulk string, or the null bulk string for `None`.
pub fn bulk(out: &mut Vec<u8>, value: Option<&[u8]>) {
    match value {
        None => out.extend_from_slice(b"$-1\r\n"),
        Some(v) => {
            out.push(b'$');
            out.extend_from_slice(v.len().to_string().as_bytes());
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(v);
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// Appends a map header for `pairs` key-value pairs (they follow, key then value): a RESP3 map,
/// or for RESP2 a flat array of twice as many elements.
pub fn map(out: &mut Vec<u8>, pairs: usize, resp3: bool) {
    if resp3 {
        out.push(b'%');
        out.extend_from_slice(pairs.to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
    } else {
        array(out, pairs * 2);
    }
}

/// Appends `reply` (one or more replies, as the commands write them: RESP2, with maps already
/// written for the connection's protocol) for a RESP3 connection: the null bulk string (`$-1`)
/// and the null array (`*-1`) become RESP3's null (`_`); every other type is written the same
/// in both. Bulk strings are copied whole, whatever bytes they hold.
pub fn resp3(reply: &[u8], out: &mut Vec<u8>) {
    let mut i = 0;
    while i < reply.len() {
        let Some(cr) = reply[i..].windows(2).position(|w| w == b"\r\n") else {
            out.extend_from_slice(&reply[i..]);
            return;
        };
        let (line, next) = (&reply[i..i + cr], i + cr + 2);
        if line == b"$-1" || line == b"*-1" {
            out.extend_from_slice(b"_\r\n");
            i = next;
            continue;
        }
        let body = match line.split_first() {
            Some((b'$', len)) => std::str::from_utf8(len)
                .ok()
                .and_then(|l| l.parse::<usize>().ok())
                .map_or(0, |l| l + 2),
            _ => 0,
        };
        let end = (next + body).min(reply.len());
        out.extend_from_slice(&reply[i..end]);
        i = end;
    }
}

/// Appends an array header for `n` elements (the elements follow).
pub fn array(out: &mut Vec<u8>, n: usize) {
    out.push(b'*');
    out.extend_from_slice(n.to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn limits() -> Limits {
        Limits {
            max_args: 8,
            max_bulk: 16,
            max_inline: 32,
            max_command_bytes: 64,
        }
    }

    fn encode(args: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        array(&mut out, args.len());
        for a in args {
            bulk(&mut out, Some(a));
        }
        out
    }

    #[test]
    fn multibulk_and_inline_commands_parse() {
        let l = limits();
        let wire = encode(&[b"SET", b"k", b"v\r\n"]);
        let (args, used) = parse(&wire, &l).unwrap().unwrap();
        assert_eq!(
            args,
            vec![b"SET".to_vec(), b"k".to_vec(), b"v\r\n".to_vec()]
        );
        assert_eq!(used, wire.len());
        let (args, used) = parse(b"GET  k\r\nPING\r\n", &l).unwrap().unwrap();
        assert_eq!(args, vec![b"GET".to_vec(), b"k".to_vec()]);
        assert_eq!(used, 8);
        assert_eq!(parse(b"*0\r\n", &l).unwrap(), Some((vec![], 4)));
        assert_eq!(parse(b"\r\n", &l).unwrap(), Some((vec![], 2)));
    }

    #[test]
    fn resp3_rewrites_only_the_nulls_and_copies_bulk_strings_whole() {
        let mut reply = Vec::new();
        array(&mut reply, 3);
        bulk(&mut reply, Some(b"$-1\r\n*-1\r\n"));
        bulk(&mut reply, None);
        integer(&mut reply, 7);
        simple(&mut reply, "OK");
        reply.extend_from_slice(b"*-1\r\n");
        let mut out = Vec::new();
        resp3(&reply, &mut out);
        assert_eq!(
            out,
            b"*3\r\n$10\r\n$-1\r\n*-1\r\n\r\n_\r\n:7\r\n+OK\r\n_\r\n".to_vec()
        );
        let (mut m2, mut m3) = (Vec::new(), Vec::new());
        map(&mut m2, 2, false);
        map(&mut m3, 2, true);
        assert_eq!(
            (m2.as_slice(), m3.as_slice()),
            (&b"*4\r\n"[..], &b"%2\r\n"[..])
        );
    }

    #[test]
    fn every_prefix_of_a_command_is_incomplete() {
        let l = limits();
        let wire = encode(&[b"MSET", b"a", b"1", b"b", b"22"]);
        for cut in 0..wire.len() {
            assert_eq!(
                parse(&wire[..cut], &l).unwrap(),
                None,
                "prefix of {cut} bytes"
            );
        }
        assert!(parse(&wire, &l).unwrap().is_some());
    }

    #[test]
    fn hostile_headers_are_refused_before_allocating() {
        let l = limits();
        for bad in [
            &b"*2147483648\r\n"[..],
            b"*9\r\n",
            b"*1\r\n$2147483648\r\n",
            b"*1\r\n$17\r\n",
            b"*1\r\n$-5\r\n",
            b"*1\r\n:1\r\n",
            b"*x\r\n",
            b"*1\r\n$1\r\nab\r\n",
            b"*1\r\x00",
            b"*1111111111111111111111111111111111111111\r\n",
        ] {
            assert!(
                parse(bad, &l).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // A header that never ends, and an inline line that never ends.
        assert!(parse(&[b'*'; 64], &l).is_err());
        assert!(parse(&[b'a'; 40], &l).is_err());
        assert_eq!(parse(&[b'a'; 20], &l).unwrap(), None);
        // Arguments within limits that add up to more than a command may be.
        let big = encode(&[b"MSET", &[b'x'; 16], &[b'y'; 16], &[b'z'; 16], &[b'w'; 16]]);
        assert!(parse(&big, &l).is_err());
    }

    proptest! {
        #[test]
        fn what_is_encoded_parses_back(args in proptest::collection::vec(
            proptest::collection::vec(any::<u8>(), 0..16), 1..8)) {
            let refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
            let mut wire = encode(&refs);
            wire.extend_from_slice(b"*1\r\n$4\r\nPING\r\n");
            let l = Limits { max_command_bytes: 4096, ..limits() };
            let (got, used) = parse(&wire, &l).unwrap().unwrap();
            prop_assert_eq!(got, args);
            prop_assert_eq!(&wire[used..], b"*1\r\n$4\r\nPING\r\n");
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = parse(&bytes, &limits());
        }
    }
}
