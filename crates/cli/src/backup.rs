//! `dynamokv admin backup` and `admin restore`: every live object of a running cluster to one
//! file, and back into any cluster.
//!
//! The file (format 2, docs/operations.md "Backup and restore"):
//! - 8 bytes of magic, `DKVBACK2`, then chunks (format 1, `DKVBACK1`, is read too: its objects
//!   have no deadlines or kinds);
//! - a chunk: its compressed length (u32, big-endian), its raw length (u32), the xxh3-64 of the
//!   raw bytes (u64), then the raw bytes compressed with LZ4 (block format). The raw bytes are
//!   the postcard encoding of `Vec<(key, Object)>`: keys in key order, every sibling of each
//!   object with its version vector;
//! - an end chunk: lengths 0 and 0, and in place of the checksum the number of objects in the
//!   file - so a truncated file (no end chunk, or another count) is told apart from a complete
//!   one.
//!
//! `--format jsonl` writes one JSON object per line instead: `key` (text, or `key_base64` when
//! not UTF-8), `values` (each live sibling's value, as text or `values_base64`) for other tools,
//! `object`, the base64 postcard of the whole object, which `restore` reads, and `v`: 2 (a line
//! without it holds an object as format 1 encoded it).
//!
//! A restore merges each object into its key's replicas through the one merge (W
//! acknowledgements): running it twice, or after a stop halfway, or over newer writes, changes
//! nothing that is already there - a newer version stays, a concurrent one becomes a sibling.

use anyhow::{Context as _, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use clap::{Args, ValueEnum};
use dynamokv_core::Object;
use dynamokv_core::version::LegacyObject;
use dynamokv_server::http::backup::{BackupPage, RestoreBatch, RestoreOutcome};
use std::io::{BufRead as _, BufReader, BufWriter, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// The file's first bytes: the format and its version.
pub const MAGIC: &[u8; 8] = b"DKVBACK2";
/// The magic of format 1: objects encoded before deadlines and kinds.
const MAGIC_1: &[u8; 8] = b"DKVBACK1";
/// Largest raw chunk a reader accepts (a writer makes them about 1 MiB).
const MAX_CHUNK: usize = 256 << 20;
/// Raw bytes a writer gathers before it closes a chunk.
const CHUNK_BYTES: usize = 1 << 20;

/// The file's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Checksummed, compressed chunks (the default).
    Native,
    /// One JSON object per line.
    Jsonl,
}

/// Flags of `dynamokv admin backup`.
#[derive(Args, Debug)]
pub struct BackupArgs {
    #[command(flatten)]
    node: crate::connect::NodeUrl,
    /// The file to write (`-` for standard output).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// The file's format.
    #[arg(long, value_enum, default_value_t = Format::Native)]
    format: Format,
    /// Objects per request (1 to 10 000).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    page: u32,
    /// Most objects read per second, so that clients keep their latency; 0: as fast as the
    /// cluster answers.
    #[arg(long, default_value_t = 5_000, value_name = "N")]
    rate: u64,
}

/// Flags of `dynamokv admin restore`.
#[derive(Args, Debug)]
pub struct RestoreArgs {
    #[command(flatten)]
    node: crate::connect::NodeUrl,
    /// The file to read (`-` for standard input).
    file: PathBuf,
    /// The file's format.
    #[arg(long, value_enum, default_value_t = Format::Native)]
    format: Format,
    /// Objects per request.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    batch: u32,
}

/// Writes backup files, chunk by chunk.
pub struct Writer<W: Write> {
    out: W,
    format: Format,
    pending: Vec<(Vec<u8>, Object)>,
    pending_bytes: usize,
    /// Objects written so far.
    pub count: u64,
    /// Bytes written so far.
    pub bytes: u64,
}

impl<W: Write> Writer<W> {
    /// A writer of `format` into `out` (the magic is written at once for the native format).
    pub fn new(mut out: W, format: Format) -> anyhow::Result<Self> {
        let mut bytes = 0;
        if format == Format::Native {
            out.write_all(MAGIC)?;
            bytes = MAGIC.len() as u64;
        }
        Ok(Writer {
            out,
            format,
            pending: Vec::new(),
            pending_bytes: 0,
            count: 0,
            bytes,
        })
    }

    /// Adds one object.
    pub fn add(&mut self, key: Vec<u8>, object: Object) -> anyhow::Result<()> {
        self.count += 1;
        if self.format == Format::Jsonl {
            let line = jsonl_line(&key, &object)?;
            self.out.write_all(line.as_bytes())?;
            self.out.write_all(b"\n")?;
            self.bytes += line.len() as u64 + 1;
            return Ok(());
        }
        self.pending_bytes += key.len() + object.size_bytes();
        self.pending.push((key, object));
        if self.pending_bytes >= CHUNK_BYTES {
            self.flush_chunk()?;
        }
        Ok(())
    }

    fn flush_chunk(&mut self) -> anyhow::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let raw = postcard::to_allocvec(&self.pending)?;
        let packed = lz4_flex::block::compress(&raw);
        self.out.write_all(&(packed.len() as u32).to_be_bytes())?;
        self.out.write_all(&(raw.len() as u32).to_be_bytes())?;
        self.out
            .write_all(&xxhash_rust::xxh3::xxh3_64(&raw).to_be_bytes())?;
        self.out.write_all(&packed)?;
        self.bytes += 16 + packed.len() as u64;
        self.pending.clear();
        self.pending_bytes = 0;
        Ok(())
    }

    /// Writes what is pending and the end chunk; returns the output.
    pub fn finish(mut self) -> anyhow::Result<W> {
        if self.format == Format::Native {
            self.flush_chunk()?;
            self.out.write_all(&[0u8; 8])?;
            self.out.write_all(&self.count.to_be_bytes())?;
            self.bytes += 16;
        }
        self.out.flush()?;
        Ok(self.out)
    }
}

fn jsonl_line(key: &[u8], object: &Object) -> anyhow::Result<String> {
    let mut line = serde_json::Map::new();
    match std::str::from_utf8(key) {
        Ok(k) => line.insert("key".into(), k.into()),
        Err(_) => line.insert("key_base64".into(), STANDARD.encode(key).into()),
    };
    let values: Vec<&[u8]> = object.live().filter_map(|s| s.value.as_deref()).collect();
    if values.iter().all(|v| std::str::from_utf8(v).is_ok()) {
        let texts: Vec<String> = values
            .iter()
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect();
        line.insert("values".into(), texts.into());
    } else {
        let b64: Vec<String> = values.iter().map(|v| STANDARD.encode(v)).collect();
        line.insert("values_base64".into(), b64.into());
    }
    line.insert(
        "object".into(),
        STANDARD.encode(postcard::to_allocvec(object)?).into(),
    );
    line.insert("v".into(), 2.into());
    Ok(serde_json::Value::Object(line).to_string())
}

/// Reads backup files, batch by batch, checking everything.
pub struct Reader<R: Read> {
    input: BufReader<R>,
    format: Format,
    /// Bytes read so far (where an error is).
    pub offset: u64,
    chunks: u64,
    /// Objects read so far.
    pub count: u64,
    done: bool,
    /// A format 1 file: objects encoded before deadlines and kinds.
    legacy: bool,
}

impl<R: Read> Reader<R> {
    /// A reader of `format` over `input`; refuses a native file without the magic.
    pub fn new(input: R, format: Format) -> anyhow::Result<Self> {
        let mut input = BufReader::new(input);
        let (mut offset, mut legacy) = (0, false);
        if format == Format::Native {
            let mut magic = [0u8; 8];
            input
                .read_exact(&mut magic)
                .context("the file is shorter than a backup's header")?;
            if &magic != MAGIC && &magic != MAGIC_1 {
                if magic.starts_with(b"DKVBACK") {
                    bail!(
                        "this backup is format {}, which this dynamokv does not read (it reads 1 and {})",
                        magic[7] as char,
                        MAGIC[7] as char
                    );
                }
                bail!(
                    "not a dynamokv backup: it does not start with {:?} (a JSON lines export needs --format jsonl)",
                    String::from_utf8_lossy(MAGIC)
                );
            }
            offset = 8;
            legacy = &magic == MAGIC_1;
        }
        Ok(Reader {
            input,
            format,
            offset,
            chunks: 0,
            count: 0,
            done: false,
            legacy,
        })
    }

    /// The next batch of objects; `None` at the end of a complete file.
    pub fn next_batch(&mut self) -> anyhow::Result<Option<RestoreBatch>> {
        if self.done {
            return Ok(None);
        }
        match self.format {
            Format::Native => self.next_chunk(),
            Format::Jsonl => self.next_lines(),
        }
    }

    fn next_chunk(&mut self) -> anyhow::Result<Option<RestoreBatch>> {
        let at = self.offset;
        let mut head = [0u8; 16];
        if let Err(e) = self.input.read_exact(&mut head) {
            bail!(
                "the backup is truncated: it ends at byte {at} after {} chunks ({} objects) without its end marker ({e})",
                self.chunks,
                self.count
            );
        }
        self.offset += 16;
        let packed_len = u32::from_be_bytes(head[0..4].try_into()?) as usize;
        let raw_len = u32::from_be_bytes(head[4..8].try_into()?) as usize;
        let sum = u64::from_be_bytes(head[8..16].try_into()?);
        if packed_len == 0 && raw_len == 0 {
            if sum != self.count {
                bail!(
                    "the backup's end marker (byte {at}) counts {sum} objects but the file holds {}: it is damaged",
                    self.count
                );
            }
            self.done = true;
            return Ok(None);
        }
        if raw_len > MAX_CHUNK || packed_len > MAX_CHUNK {
            bail!(
                "chunk {} at byte {at} claims {raw_len} bytes: the file is damaged or not a backup",
                self.chunks + 1
            );
        }
        let mut packed = vec![0u8; packed_len];
        self.input.read_exact(&mut packed).with_context(|| {
            format!(
                "the backup is truncated inside chunk {} (byte {at})",
                self.chunks + 1
            )
        })?;
        self.offset += packed_len as u64;
        let damaged = |what: String| {
            anyhow::anyhow!(
                "chunk {} at byte {at} is damaged ({what}); the objects before it ({}) are good",
                self.chunks + 1,
                self.count
            )
        };
        let raw = lz4_flex::block::decompress(&packed, raw_len)
            .map_err(|e| damaged(format!("it does not decompress: {e}")))?;
        if xxhash_rust::xxh3::xxh3_64(&raw) != sum {
            return Err(damaged("it fails its checksum".into()));
        }
        let batch: RestoreBatch = if self.legacy {
            postcard::from_bytes::<Vec<(Vec<u8>, LegacyObject)>>(&raw)
                .map(|b| b.into_iter().map(|(k, o)| (k, o.into_object())).collect())
        } else {
            postcard::from_bytes(&raw)
        }
        .map_err(|e| damaged(format!("undecodable: {e}")))?;
        for (key, object) in &batch {
            object.validate().map_err(|e| {
                damaged(format!(
                    "the object of {:?} is not valid: {e}",
                    String::from_utf8_lossy(key)
                ))
            })?;
        }
        self.chunks += 1;
        self.count += batch.len() as u64;
        Ok(Some(batch))
    }

    fn next_lines(&mut self) -> anyhow::Result<Option<RestoreBatch>> {
        let mut batch = Vec::new();
        let mut line = String::new();
        while batch.len() < 1000 {
            line.clear();
            let n = self.input.read_line(&mut line)?;
            if n == 0 {
                self.done = true;
                break;
            }
            self.offset += n as u64;
            if line.trim().is_empty() {
                continue;
            }
            let lineno = self.count + batch.len() as u64 + 1;
            let bad = |what: &str| anyhow::anyhow!("line {lineno}: {what}");
            let v: serde_json::Value =
                serde_json::from_str(&line).map_err(|e| bad(&format!("not JSON: {e}")))?;
            let key = match (&v["key"], &v["key_base64"]) {
                (serde_json::Value::String(k), _) => k.clone().into_bytes(),
                (_, serde_json::Value::String(k)) => STANDARD
                    .decode(k)
                    .map_err(|e| bad(&format!("key_base64 is not base64: {e}")))?,
                _ => return Err(bad("no key")),
            };
            let object = v["object"].as_str().ok_or_else(|| {
                bad("no object (an export line needs the object field to be restored)")
            })?;
            let bytes = STANDARD
                .decode(object)
                .map_err(|e| bad(&format!("object is not base64: {e}")))?;
            let object = match v["v"].as_u64() {
                None => dynamokv_core::version::decode_legacy(&bytes),
                Some(2) => postcard::from_bytes::<Object>(&bytes),
                Some(n) => {
                    return Err(bad(&format!(
                        "object format {n} is not one this dynamokv reads"
                    )));
                }
            }
            .map_err(|e| bad(&format!("undecodable object: {e}")))?;
            object
                .validate()
                .map_err(|e| bad(&format!("the object is not valid: {e}")))?;
            batch.push((key, object));
        }
        self.count += batch.len() as u64;
        Ok((!batch.is_empty()).then_some(batch))
    }
}

/// `r` if it is a success; otherwise an error naming `url`, the status, `when`, and the body.
async fn answered(
    r: reqwest::Response,
    url: &str,
    when: &str,
) -> anyhow::Result<reqwest::Response> {
    if r.status().is_success() {
        return Ok(r);
    }
    let status = r.status();
    let body = r.text().await.unwrap_or_default();
    bail!("{url} answered {status} {when}: {body}")
}

fn bar(len: Option<u64>, what: &str) -> indicatif::ProgressBar {
    let bar = match len {
        Some(n) => indicatif::ProgressBar::new(n),
        None => indicatif::ProgressBar::new_spinner(),
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{{elapsed_precise}} {what} {{human_pos}} objects ({{per_sec}}) {{msg}}"
        ))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar
}

/// Runs `dynamokv admin backup`.
pub fn backup(args: BackupArgs) -> anyhow::Result<ExitCode> {
    let (rt, http) = crate::connect::runtime_with_timeout(Duration::from_secs(60))?;
    let url = args.node.url().trim_end_matches('/').to_owned();
    let out: Box<dyn Write> = if args.out.as_os_str() == "-" {
        Box::new(std::io::stdout().lock())
    } else {
        let tmp = args.out.with_extension("partial");
        Box::new(BufWriter::new(
            std::fs::File::create(&tmp)
                .with_context(|| format!("cannot create {}", tmp.display()))?,
        ))
    };
    let mut writer = Writer::new(out, args.format)?;
    let progress = bar(None, "backed up");
    let started = Instant::now();
    let mut after: Option<Vec<u8>> = None;
    rt.block_on(async {
        loop {
            let mut query = vec![("limit", args.page.to_string())];
            if let Some(a) = &after {
                query.push(("after", STANDARD.encode(a)));
            }
            let r = http
                .get(format!("{url}/admin/backup"))
                .query(&query)
                .send()
                .await
                .with_context(|| format!("cannot reach {url}"))?;
            let r = answered(r, &url, &format!("after {} objects", writer.count)).await?;
            let page: BackupPage = postcard::from_bytes(&r.bytes().await?)
                .context("the node's backup page does not decode (another dynamokv version?)")?;
            let n = page.entries.len() as u64;
            for (key, object) in page.entries {
                writer.add(key, object)?;
            }
            progress.inc(n);
            progress.set_message(format!("{:.1} MB", writer.bytes as f64 / 1e6));
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
            if args.rate > 0 {
                // Paced: the cluster serves its clients first.
                let due = Duration::from_secs_f64(writer.count as f64 / args.rate as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    tokio::time::sleep(wait).await;
                }
            }
        }
        anyhow::Ok(())
    })?;
    let (count, bytes) = (writer.count, writer.bytes);
    drop(writer.finish()?);
    if args.out.as_os_str() != "-" {
        std::fs::rename(args.out.with_extension("partial"), &args.out)
            .with_context(|| format!("cannot write {}", args.out.display()))?;
    }
    progress.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "backed up {count} objects to {} ({:.1} MB) in {secs:.1} s ({:.0} objects/s, {:.1} MB/s)",
        args.out.display(),
        bytes as f64 / 1e6,
        count as f64 / secs.max(1e-3),
        bytes as f64 / 1e6 / secs.max(1e-3)
    );
    Ok(ExitCode::SUCCESS)
}

/// Runs `dynamokv admin restore`. Exit code 1 when some objects were not restored.
pub fn restore(args: RestoreArgs) -> anyhow::Result<ExitCode> {
    let (rt, http) = crate::connect::runtime_with_timeout(Duration::from_secs(120))?;
    let url = args.node.url().trim_end_matches('/').to_owned();
    let stdin = args.file.as_os_str() == "-";
    if !stdin {
        // A whole pass first: a truncated, damaged or foreign file is refused before anything
        // is written.
        let file = std::fs::File::open(&args.file)
            .with_context(|| format!("cannot open {}", args.file.display()))?;
        let mut check = Reader::new(file, args.format)
            .with_context(|| format!("{} is refused", args.file.display()))?;
        while check
            .next_batch()
            .with_context(|| format!("{} is refused; nothing was restored", args.file.display()))?
            .is_some()
        {}
    }
    let input: Box<dyn Read> = if stdin {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(
            std::fs::File::open(&args.file)
                .with_context(|| format!("cannot open {}", args.file.display()))?,
        )
    };
    let mut reader = Reader::new(input, args.format)
        .with_context(|| format!("{} is refused", args.file.display()))?;
    let progress = bar(None, "restored");
    let started = Instant::now();
    let mut total = RestoreOutcome::default();
    rt.block_on(async {
        while let Some(batch) = reader
            .next_batch()
            .with_context(|| format!("{} is refused", args.file.display()))?
        {
            for part in batch.chunks(args.batch as usize) {
                let body = postcard::to_allocvec(&part.to_vec())?;
                let r = http
                    .post(format!("{url}/admin/restore"))
                    .body(body)
                    .send()
                    .await
                    .with_context(|| format!("cannot reach {url}"))?;
                let when = format!(
                    "after {} objects restored (run the restore again: it changes nothing already restored)",
                    total.restored
                );
                let r = answered(r, &url, &when).await?;
                let outcome: RestoreOutcome = r.json().await?;
                total.restored += outcome.restored;
                total.failed += outcome.failed;
                for e in outcome.errors {
                    if total.errors.len() < 10 {
                        total.errors.push(e);
                    }
                }
                progress.inc(part.len() as u64);
            }
        }
        anyhow::Ok(())
    })?;
    progress.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "restored {} objects from {} in {secs:.1} s ({:.0} objects/s){}",
        total.restored,
        args.file.display(),
        total.restored as f64 / secs.max(1e-3),
        if total.failed > 0 {
            format!("; {} failed", total.failed)
        } else {
            String::new()
        }
    );
    for (key, why) in &total.errors {
        eprintln!("  {key}: {why}");
    }
    if total.failed > 0 {
        eprintln!(
            "run the restore again once the cluster is healthy: it changes nothing already restored"
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dynamokv_core::{ActorId, VersionVector};

    fn objects(n: usize) -> Vec<(Vec<u8>, Object)> {
        (0..n)
            .map(|i| {
                let o = Object::new().update(
                    ActorId(7),
                    &VersionVector::new(),
                    Some(format!("value {i}").into_bytes()),
                    i as u64,
                );
                (format!("k{i:05}").into_bytes(), o)
            })
            .collect()
    }

    fn write(format: Format, entries: &[(Vec<u8>, Object)]) -> Vec<u8> {
        let mut w = Writer::new(Vec::new(), format).unwrap();
        for (k, o) in entries {
            w.add(k.clone(), o.clone()).unwrap();
        }
        w.finish().unwrap()
    }

    fn read_all(format: Format, bytes: &[u8]) -> anyhow::Result<Vec<(Vec<u8>, Object)>> {
        let mut r = Reader::new(bytes, format)?;
        let mut all = Vec::new();
        while let Some(b) = r.next_batch()? {
            all.extend(b);
        }
        Ok(all)
    }

    #[test]
    fn a_backup_reads_back_and_damage_is_refused_with_where() {
        let entries = objects(30_000);
        for format in [Format::Native, Format::Jsonl] {
            let file = write(format, &entries);
            assert_eq!(read_all(format, &file).unwrap(), entries);
        }
        let file = write(Format::Native, &entries);
        assert!(file.len() < 30_000 * 40, "compressed: {} bytes", file.len());
        // Truncated: no end marker.
        let err = read_all(Format::Native, &file[..file.len() - 20]).unwrap_err();
        assert!(format!("{err:#}").contains("truncated"), "{err:#}");
        // A flipped byte in a chunk.
        let mut bad = file.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0x40;
        let err = format!("{:#}", read_all(Format::Native, &bad).unwrap_err());
        assert!(err.contains("chunk") && err.contains("byte"), "{err}");
        // Foreign files.
        let err = format!(
            "{:#}",
            read_all(Format::Native, b"hello world, not a backup").unwrap_err()
        );
        assert!(err.contains("not a dynamokv backup"), "{err}");
        let err = format!(
            "{:#}",
            read_all(Format::Native, b"DKVBACK9........").unwrap_err()
        );
        assert!(err.contains("format 9"), "{err}");
        let err = format!(
            "{:#}",
            read_all(Format::Jsonl, b"{\"key\":\"a\"}\n").unwrap_err()
        );
        assert!(err.contains("line 1") && err.contains("object"), "{err}");
    }

    #[test]
    fn a_format_1_backup_and_an_old_jsonl_line_still_restore() {
        #[derive(serde::Serialize)]
        struct OldObject {
            clock: VersionVector,
            siblings: Vec<(dynamokv_core::Dot, u64, Option<Vec<u8>>)>,
        }
        let (key, object) = objects(1).remove(0);
        let old = OldObject {
            clock: object.clock().clone(),
            siblings: object
                .siblings()
                .iter()
                .map(|s| (s.dot, s.timestamp, s.value.clone()))
                .collect(),
        };
        let raw = postcard::to_allocvec(&vec![(key.clone(), &old)]).unwrap();
        let packed = lz4_flex::block::compress(&raw);
        let mut file = b"DKVBACK1".to_vec();
        file.extend((packed.len() as u32).to_be_bytes());
        file.extend((raw.len() as u32).to_be_bytes());
        file.extend(xxhash_rust::xxh3::xxh3_64(&raw).to_be_bytes());
        file.extend(&packed);
        file.extend([0u8; 8]);
        file.extend(1u64.to_be_bytes());
        let want = vec![(key, object)];
        assert_eq!(read_all(Format::Native, &file).unwrap(), want);
        let line = format!(
            "{{\"key\":\"k00000\",\"object\":\"{}\"}}\n",
            STANDARD.encode(postcard::to_allocvec(&old).unwrap())
        );
        assert_eq!(read_all(Format::Jsonl, line.as_bytes()).unwrap(), want);
        // Today's files carry deadlines and kinds.
        assert_eq!(&write(Format::Native, &want)[..8], b"DKVBACK2");
    }
}
