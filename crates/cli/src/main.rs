//! `dynamokv`: the one binary - run a node, talk to one, measure the storage engine.

mod admin;
mod backup;
mod bench;
mod bench_storage;
mod certs;
mod connect;
mod dev;
mod kv;
mod ring_balance;
mod server;

use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};

/// mimalloc instead of the system allocator: a node allocates on its I/O threads and frees on
/// its node thread (and back) for every request, which glibc's malloc handles poorly (a fifth
/// of a node's CPU went to it in the profile in docs/bench.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// dynamokv: a Dynamo-style distributed key-value store.
#[derive(Parser)]
#[command(name = "dynamokv", version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("DYNAMOKV_COMMIT"), ")"), about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// For https:// node URLs: the CA certificate to trust (PEM; the cluster CA).
    #[arg(
        id = "tls_client_ca",
        long = "cacert",
        global = true,
        env = "DYNAMOKV_CACERT",
        value_name = "PEM",
        help_heading = TLS_HEADING
    )]
    cacert: Option<std::path::PathBuf>,
    /// For https:// node URLs: a client certificate to present (PEM), for nodes started with
    /// --tls-require-client-cert.
    #[arg(
        id = "tls_client_cert",
        long = "client-cert",
        global = true,
        env = "DYNAMOKV_CLIENT_CERT",
        value_name = "PEM",
        help_heading = TLS_HEADING
    )]
    cert: Option<std::path::PathBuf>,
    /// The private key of --client-cert (PEM).
    #[arg(
        id = "tls_client_key",
        long = "client-cert-key",
        global = true,
        env = "DYNAMOKV_CLIENT_CERT_KEY",
        value_name = "PEM",
        help_heading = TLS_HEADING
    )]
    key: Option<std::path::PathBuf>,
}

/// The help heading of the client TLS flags, apart from each command's own flags.
const TLS_HEADING: &str = "Client TLS (for https:// node URLs; any command)";

#[derive(Subcommand)]
enum Command {
    /// Start a local cluster of real node processes on loopback (Ctrl-C stops it).
    Dev(dev::DevArgs),
    /// Run a node: serve the HTTP API over a data directory.
    #[command(override_usage = "dynamokv server [OPTIONS]")]
    Server(Box<server::ServerArgs>),
    /// Write a value (with the context of a read, it replaces what that read returned).
    Put(kv::PutArgs),
    /// Read a key: its value alone on standard output, the context on standard error; exit 1
    /// when not found, 3 when concurrent writes left siblings (listed on standard error).
    Get(kv::GetArgs),
    /// Add to a counter (`--by N`, default 1; negative subtracts) and print its new value.
    /// Increments through any node, concurrent or not, all count.
    Incr(kv::IncrArgs),
    /// Delete a key (with a context, exactly the versions it covers).
    Delete(kv::DeleteArgs),
    /// List the keys holding a live value, one per line in key order (every page of them).
    List(kv::ListArgs),
    /// Operator commands: `admin status` shows members as a node (or every node) sees them.
    #[command(subcommand)]
    Admin(admin::AdminCommand),
    /// Load a running cluster with a closed-loop workload; print throughput and latency.
    Bench(bench::BenchArgs),
    /// Measure the disk engine through the `Engine` trait: puts, synced batches, gets, scans.
    BenchStorage(bench_storage::BenchStorageArgs),
    /// Measure how evenly token placements spread the key space over nodes.
    RingBalance(ring_balance::RingBalanceArgs),
}

/// A client command whose output goes to a reader that stops early (`admin status | head`) ends
/// as other Unix tools do, by SIGPIPE, instead of panicking in `println!`. The nodes (`server`,
/// `dev`) keep Rust's default - SIGPIPE ignored - so a peer or client that goes away is an error
/// on that connection, not the end of the process.
fn stop_quietly_on_a_closed_pipe() {
    // SAFETY: setting a signal's disposition to the default, before any other thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> std::process::ExitCode {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let tls = dynamokv_client::tls::ClientTls {
        ca: cli.cacert.clone(),
        cert: cli.cert.clone(),
        key: cli.key.clone(),
    };
    if tls != dynamokv_client::tls::ClientTls::default()
        && let Err(e) = dynamokv_client::tls::configure(&tls)
    {
        eprintln!("error: {e}");
        return std::process::ExitCode::from(2);
    }
    if !matches!(cli.command, Command::Dev(_) | Command::Server(_)) {
        stop_quietly_on_a_closed_pipe();
    }
    let result = match cli.command {
        Command::Dev(args) => dev::run(args),
        Command::Server(args) => {
            let m = matches.subcommand_matches("server").unwrap_or(&matches);
            server::run(*args, m)
        }
        Command::Put(args) => kv::put(args),
        Command::Get(args) => kv::get(args),
        Command::List(args) => kv::list(args),
        Command::Delete(args) => kv::delete(args),
        Command::Incr(args) => kv::incr(args),
        Command::Admin(cmd) => admin::run(cmd),
        Command::Bench(args) => bench::run(args),
        Command::BenchStorage(args) => bench_storage::run(args),
        Command::RingBalance(args) => ring_balance::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
