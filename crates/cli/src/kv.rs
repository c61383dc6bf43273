//! `dynamokv put | get | delete`: talk to a node with the client library.

use anyhow::{Context as _, bail};
use clap::Args;
use dynamokv_client::{ClusterClient, ReadResult, Routing};
use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;

/// The node to talk to.
#[derive(Args, Debug)]
pub struct NodeArg {
    /// Base URL of a node's HTTP API. The CLI fetches the ring from it and sends each request
    /// straight to the key's coordinator (falling back to other nodes when one is down).
    #[arg(
        long,
        env = "DYNAMOKV_NODE",
        default_value = "http://127.0.0.1:8080",
        value_name = "URL"
    )]
    node: String,
    /// Send requests to --node and let it forward to the coordinator, instead of routing by
    /// key in the client.
    #[arg(long)]
    no_routing: bool,
}

impl NodeArg {
    async fn connect(&self) -> anyhow::Result<ClusterClient> {
        let routing = if self.no_routing {
            Routing::AnyNode
        } else {
            Routing::Client
        };
        Ok(ClusterClient::connect(std::slice::from_ref(&self.node), routing).await?)
    }
}

/// `dynamokv put KEY VALUE`.
#[derive(Args, Debug)]
pub struct PutArgs {
    /// The key (1 to 1024 bytes).
    key: String,
    /// The value; omit it and use --value-file to read the value from a file.
    #[arg(required_unless_present = "value_file")]
    value: Option<String>,
    /// Read the value from FILE (`-` for standard input) instead of the VALUE argument.
    #[arg(long, value_name = "FILE", conflicts_with = "value")]
    value_file: Option<PathBuf>,
    /// Context from an earlier `get`: the write replaces the versions that read returned.
    /// Without it the value is kept beside any existing version (a sibling).
    #[arg(long, short = 'x', value_name = "CONTEXT")]
    context: Option<String>,
    /// The value expires after this many seconds: from then on no read or listing returns it.
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    ttl: Option<u64>,
    #[command(flatten)]
    node: NodeArg,
}

/// `dynamokv incr KEY [--by N]`.
#[derive(Args, Debug)]
pub struct IncrArgs {
    /// The counter's key.
    key: String,
    /// How much to add (negative to subtract).
    #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
    by: i64,
    #[command(flatten)]
    node: NodeArg,
}

/// `dynamokv get KEY`.
#[derive(Args, Debug)]
pub struct GetArgs {
    /// The key.
    key: String,
    /// Print the result as JSON (values as UTF-8 where possible, else base64 under `value_b64`).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    node: NodeArg,
}

/// `dynamokv delete KEY`.
#[derive(Args, Debug)]
pub struct DeleteArgs {
    /// The key.
    key: String,
    /// Context from an earlier `get`: deletes exactly the versions that read returned. Without
    /// it, deletes every version the coordinating node holds.
    #[arg(long, short = 'x', value_name = "CONTEXT")]
    context: Option<String>,
    #[command(flatten)]
    node: NodeArg,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn print_context(out: &mut impl std::io::Write, ctx: &Option<String>) -> std::io::Result<()> {
    match ctx {
        Some(c) => writeln!(out, "context: {c}"),
        None => Ok(()),
    }
}

/// Runs `dynamokv put`.
pub fn put(args: PutArgs) -> anyhow::Result<ExitCode> {
    let value = match (&args.value, &args.value_file) {
        (Some(v), _) => v.clone().into_bytes(),
        (None, Some(p)) if p.as_os_str() == "-" => {
            let mut v = Vec::new();
            std::io::stdin()
                .read_to_end(&mut v)
                .context("reading standard input")?;
            v
        }
        (None, Some(p)) => std::fs::read(p).with_context(|| format!("reading {}", p.display()))?,
        (None, None) => bail!("give a VALUE or --value-file"),
    };
    let ctx = runtime()?.block_on(async {
        let client = args.node.connect().await?;
        let key = args.key.as_bytes();
        let context = args.context.as_deref();
        let ctx = match args.ttl {
            Some(s) => {
                let ttl = std::time::Duration::from_secs(s);
                client.put_expiring(key, value, context, ttl).await?
            }
            None => client.put(key, value, context).await?.context,
        };
        anyhow::Ok(ctx)
    })?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "ok")?;
    print_context(&mut out, &ctx)?;
    Ok(ExitCode::SUCCESS)
}

/// Runs `dynamokv incr`: prints the counter's new value.
pub fn incr(args: IncrArgs) -> anyhow::Result<ExitCode> {
    let value = runtime()?.block_on(async {
        let client = args.node.connect().await?;
        anyhow::Ok(client.increment(args.key.as_bytes(), args.by).await?)
    })?;
    writeln!(std::io::stdout().lock(), "{value}")?;
    Ok(ExitCode::SUCCESS)
}

/// Runs `dynamokv delete`.
pub fn delete(args: DeleteArgs) -> anyhow::Result<ExitCode> {
    let ctx = runtime()?.block_on(async {
        let client = args.node.connect().await?;
        let w = client
            .delete(args.key.as_bytes(), args.context.as_deref())
            .await?;
        anyhow::Ok(w.context)
    })?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "deleted")?;
    print_context(&mut out, &ctx)?;
    Ok(ExitCode::SUCCESS)
}

fn read_json(r: &ReadResult) -> serde_json::Value {
    use serde_json::json;
    let siblings: Vec<_> = r
        .siblings
        .iter()
        .map(|s| match std::str::from_utf8(&s.value) {
            Ok(text) => json!({ "value": text, "timestamp": s.timestamp }),
            Err(_) => {
                use base64::Engine as _;
                let b64 = base64::engine::general_purpose::STANDARD.encode(&s.value);
                json!({ "value_b64": b64, "timestamp": s.timestamp })
            }
        })
        .collect();
    json!({ "siblings": siblings, "context": r.context, "tombstones": r.tombstones })
}

/// Runs `dynamokv get`. Exit code 1 when the key has no value.
pub fn get(args: GetArgs) -> anyhow::Result<ExitCode> {
    let read = runtime()?.block_on(async {
        let client = args.node.connect().await?;
        anyhow::Ok(client.get(args.key.as_bytes(), None).await?)
    })?;
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", read_json(&read))?;
        return Ok(if read.siblings.is_empty() {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        });
    }
    // Standard output gets exactly the value (`get k > file` copies it); the rest goes to
    // standard error.
    let mut err = std::io::stderr().lock();
    let code = match read.siblings.as_slice() {
        [] => {
            writeln!(err, "not found")?;
            ExitCode::from(1)
        }
        [only] => {
            out.write_all(&only.value)?;
            if std::io::IsTerminal::is_terminal(&out) {
                writeln!(out)?;
            }
            ExitCode::SUCCESS
        }
        many => {
            writeln!(
                err,
                "{} siblings (concurrent writes; --json shows them as data, and a put with this context reconciles them):",
                many.len()
            )?;
            for (i, s) in many.iter().enumerate() {
                write!(err, "sibling {}: ", i + 1)?;
                err.write_all(&s.value)?;
                writeln!(err)?;
            }
            ExitCode::from(3)
        }
    };
    print_context(&mut err, &read.context)?;
    Ok(code)
}

/// `dynamokv list [--prefix P]`.
#[derive(Args, Debug)]
pub struct ListArgs {
    /// Only keys starting with this.
    #[arg(long, default_value = "")]
    prefix: String,
    /// Start after this key (the `next` a stopped listing printed).
    #[arg(long, value_name = "KEY")]
    after: Option<String>,
    /// Keys fetched per request (1 to 10 000).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    page: u32,
    /// Stop after this many keys.
    #[arg(long, value_name = "N")]
    max: Option<u64>,
    #[command(flatten)]
    node: NodeArg,
}

/// Runs `dynamokv list`: every key holding a live value, one per line in key order; with a
/// running count on standard error when it is a terminal.
pub fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let client = args.node.connect().await?;
        let mut out = std::io::stdout().lock();
        let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let mut after: Option<Vec<u8>> = args.after.map(String::into_bytes);
        let mut listed = 0u64;
        loop {
            let page = client
                .list(args.prefix.as_bytes(), after.as_deref(), args.page)
                .await
                .with_context(|| format!("listing after {listed} keys"))?;
            for key in &page.keys {
                out.write_all(key)?;
                out.write_all(b"\n")?;
                listed += 1;
                if args.max.is_some_and(|m| listed >= m) {
                    return Ok(ExitCode::SUCCESS);
                }
            }
            if progress {
                eprint!("\r{listed} keys");
            }
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        if progress {
            eprintln!("\r{listed} keys");
        }
        Ok(ExitCode::SUCCESS)
    })
}
