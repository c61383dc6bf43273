//! `dynamokv server`: configuration from an optional TOML file, overridden by flags.

use anyhow::Context as _;
use clap::parser::ValueSource;
use clap::{ArgMatches, Args};
use dynamokv_server::Config;
use std::path::PathBuf;
use std::process::ExitCode;

/// Flags of `dynamokv server`: every setting of the node (each overrides the same field of the
/// config file), then the process's own (config file, threads, logs).
#[derive(Args, Debug)]
pub struct ServerArgs {
    /// TOML config file; its fields are the settings below, in snake_case (e.g.
    /// `data_dir = "/var/lib/dynamokv"`, `sync = "always"`, `n = 3`; see docs/configuration.md).
    /// Flags given on the command line override it.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: Config,
    /// Threads serving network I/O (HTTP, RESP, peer connections); the state machine and its
    /// storage calls run on one more thread of their own. Several nodes on one machine (as
    /// `dynamokv dev` runs them) do best with 1 each. [default: the number of CPU cores]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    io_threads: Option<u16>,
    /// Log filter (tracing `EnvFilter` syntax, e.g. `info`, `dynamokv_server=debug`); the
    /// RUST_LOG environment variable wins when set.
    #[arg(long, default_value = "info", value_name = "FILTER")]
    log: String,
    /// Log format on standard error: `text` (colours only when standard error is a terminal)
    /// or `json` (one object per line, for log collectors).
    #[arg(long, default_value = "text", value_name = "FORMAT", value_parser = ["text", "json"])]
    log_format: String,
}

impl ServerArgs {
    /// The config file (or the defaults), with the settings given as flags (or in their
    /// environment variable) put over it, checked. `matches` are the `server` subcommand's.
    fn config(&self, matches: &ArgMatches) -> anyhow::Result<Config> {
        let file = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        let given = |id: &str| {
            matches.ids().any(|i| i.as_str() == id)
                && matches!(
                    matches.value_source(id),
                    Some(ValueSource::CommandLine | ValueSource::EnvVariable)
                )
        };
        let c = file.overridden_by(&self.settings, given)?;
        c.validate()?;
        Ok(c)
    }
}

fn init_logging(filter: &str, format: &str) {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        // fjall and lsm_tree log routine maintenance at info; keep them to warnings.
        tracing_subscriber::EnvFilter::new(format!("fjall=warn,lsm_tree=warn,{filter}"))
    });
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        logs.json().init();
    } else {
        // Colour codes only for a person at a terminal, never in a log file.
        logs.with_ansi(std::io::stderr().is_terminal()).init();
    }
}

/// A future that resolves when the process gets Ctrl-C (SIGINT) or SIGTERM. The handlers are
/// installed when this is called (it must run inside the runtime), not when the future is first
/// polled, so a signal that arrives while the node is still starting stops it cleanly too.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt()).ok();
    let mut term = signal(SignalKind::terminate()).ok();
    async move {
        let wait = async |s: &mut Option<tokio::signal::unix::Signal>| match s {
            Some(s) => {
                s.recv().await;
            }
            None => std::future::pending::<()>().await,
        };
        tokio::select! {
            _ = wait(&mut int) => {},
            _ = wait(&mut term) => {},
        }
        tracing::info!("shutdown requested");
    }
}

/// Runs `dynamokv server`; `matches` are the subcommand's (to tell the flags given from the
/// defaults).
pub fn run(args: ServerArgs, matches: &ArgMatches) -> anyhow::Result<ExitCode> {
    let config = args.config(matches)?;
    init_logging(&args.log, &args.log_format);
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.io_threads {
        rt.worker_threads(usize::from(n));
    }
    let rt = rt
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let shutdown = {
        let _inside = rt.enter();
        shutdown_signal()
    };
    rt.block_on(dynamokv_server::run(config, shutdown))?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches, Parser};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ServerArgs,
    }

    /// The configuration `dynamokv server ARGS` runs with.
    fn config_of(args: &[&str]) -> anyhow::Result<Config> {
        let matches = Cli::command()
            .try_get_matches_from(std::iter::once("server").chain(args.iter().copied()))?;
        let cli = Cli::from_arg_matches(&matches)?;
        cli.args.config(&matches)
    }

    #[test]
    fn flags_given_override_the_file_and_nothing_else_does() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("node.toml");
        std::fs::write(
            &file,
            "n = 5\nr = 3\nw = 3\nsync = \"always\"\nhttp_max_connections = 7\ntombstone_min_age_ms = 9\n[tls]\ncert = \"c\"\nkey = \"k\"\nca = \"a\"\n",
        )
        .unwrap();
        let f = file.to_str().unwrap();
        // The file alone.
        let c = config_of(&["-c", f]).unwrap();
        assert_eq!(
            (c.node.n, c.node.r, c.sync),
            (5, 3, dynamokv_server::SyncMode::Always)
        );
        assert_eq!(c.http_max_connections, 7);
        assert_eq!(c.node.tombstone_min_age_ms, 9);
        assert!(c.tls.as_ref().is_some_and(|t| !t.require_client_cert));
        // Flags given win; the rest stays the file's (not the flags' defaults).
        let c = config_of(&[
            "-c",
            f,
            "-w",
            "2",
            "--http-max-connections",
            "9",
            "--tls-require-client-cert",
            "--seeds",
            "a:1,,b:2",
            "--cluster-secret",
            "s",
        ])
        .unwrap();
        assert_eq!((c.node.n, c.node.w), (5, 2));
        assert_eq!(c.http_max_connections, 9);
        assert_eq!(c.sync, dynamokv_server::SyncMode::Always);
        assert_eq!(c.node.tombstone_min_age_ms, 9);
        assert!(c.tls.as_ref().is_some_and(|t| t.require_client_cert));
        assert_eq!(c.seeds, vec!["a:1".to_owned(), "b:2".to_owned()]);
        // No file: the declared defaults.
        let c = config_of(&[]).unwrap();
        assert_eq!(c, Config::default());
        // Checked after the merge, with the setting's name.
        let e = config_of(&["-c", f, "-r", "6"]).unwrap_err().to_string();
        assert!(e.contains("r <= n"), "{e}");
        let e = config_of(&["--hint-rate", "0"]).unwrap_err().to_string();
        assert!(e.contains("hint_rate_per_sec must be at least 1"), "{e}");
        let e = config_of(&["--seeds", "a:1"]).unwrap_err().to_string();
        assert!(e.contains("without a cluster secret"), "{e}");
        let no_secret = config_of(&["-c", f, "--seeds", "a:1"]);
        assert!(no_secret.is_err(), "the file gives no secret either");
    }

    /// docs/configuration.md is the settings' reference, generated from their one declaration:
    /// a setting added, renamed or given another default fails this test until the file is
    /// regenerated (`DYNAMOKV_WRITE_DOCS=1 cargo test -p dynamokv -- configuration`).
    #[test]
    fn the_configuration_reference_is_generated_from_the_declaration() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/configuration.md");
        let expected = reference();
        if std::env::var_os("DYNAMOKV_WRITE_DOCS").is_some() {
            std::fs::write(path, &expected).unwrap();
        }
        let found = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            found == expected,
            "docs/configuration.md is out of date: regenerate it with DYNAMOKV_WRITE_DOCS=1 cargo test -p dynamokv -- configuration"
        );
    }

    /// The reference: every setting of `dynamokv server` with its file key, flag, default and
    /// help, from the clap declaration.
    /// examples/node.toml: every setting the file takes, at its default, each under its help;
    /// generated like the reference (`DYNAMOKV_WRITE_DOCS=1`), and it must load as the defaults.
    #[test]
    fn the_example_configuration_has_every_setting_and_loads() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/node.toml");
        let expected = example();
        if std::env::var_os("DYNAMOKV_WRITE_DOCS").is_some() {
            std::fs::write(path, &expected).unwrap();
        }
        let found = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            found == expected,
            "examples/node.toml is out of date: regenerate it with DYNAMOKV_WRITE_DOCS=1 cargo test -p dynamokv -- configuration"
        );
        let loaded = Config::from_toml(&found).unwrap();
        assert_eq!(loaded, Config::default());
        // Every setting the file takes is in it (a commented one for those without a default).
        let keys = serde_json::to_value(Config::default()).unwrap();
        for key in keys.as_object().unwrap().keys() {
            if key == "tls" || key == "tokens" {
                continue; // tables, described in the header
            }
            assert!(
                found.contains(&format!("\n{key} = ")) || found.contains(&format!("# {key} = ")),
                "{key} is missing from examples/node.toml"
            );
        }
    }

    fn example() -> String {
        let cmd = Cli::command();
        let help = |id: &str| {
            cmd.get_arguments()
                .find(|a| a.get_id().as_str() == id)
                .and_then(|a| a.get_long_help().or(a.get_help()).map(|h| h.to_string()))
                .unwrap_or_default()
        };
        let mut out = String::from(
            "# A dynamokv node's configuration file with every setting at its default, each under\n\
             # its help. Generated from the settings' declaration by a test; do not edit by hand\n\
             # (copy it). Use: dynamokv server --config node.toml; flags given override the file.\n\
             # Reference: docs/configuration.md; running nodes across hosts: docs/operations.md.\n\n\
             # Settings without a default are commented out; a node of a real cluster sets\n\
             # node_id, seeds (on its first start only) and the cluster secret (better given as\n\
             # DYNAMOKV_CLUSTER_SECRET in the environment than written here).\n\
             # seeds = [\"10.0.0.1:7070\", \"10.0.0.2:7070\"]\n\
             # [tls] takes cert, key, ca and require_client_cert; [[tokens]] entries take name,\n\
             # token and scopes (docs/security.md).\n",
        );
        let values = serde_json::to_value(Config::default()).unwrap();
        for (key, value) in values.as_object().unwrap() {
            if !value.is_null() || key == "tls" {
                continue;
            }
            let name = cmd
                .get_arguments()
                .find(|a| a.get_id().as_str() == key)
                .and_then(|a| a.get_value_names().and_then(|v| v.first().cloned()))
                .map(|v| v.to_string())
                .unwrap_or_else(|| "...".to_owned());
            out.push('\n');
            for l in textwrap(&help(key), 96) {
                out.push_str(&format!("# {l}\n"));
            }
            out.push_str(&format!("# {key} = \"{name}\"\n"));
        }
        let defaults = toml::to_string(&Config::default()).unwrap();
        for line in defaults.lines() {
            let Some((key, _)) = line.split_once(" = ") else {
                continue;
            };
            if key == "seeds" || key == "tokens" {
                continue;
            }
            out.push('\n');
            for l in textwrap(&help(key), 96) {
                out.push_str(&format!("# {l}\n"));
            }
            out.push_str(line);
            out.push('\n');
        }
        out
    }

    /// `text` in lines of at most `width` characters, broken at spaces.
    fn textwrap(text: &str, width: usize) -> Vec<String> {
        let mut lines = vec![String::new()];
        for word in text.split_whitespace() {
            let last = lines.last_mut().unwrap();
            if !last.is_empty() && last.len() + 1 + word.len() > width {
                lines.push(word.to_owned());
            } else {
                if !last.is_empty() {
                    last.push(' ');
                }
                last.push_str(word);
            }
        }
        lines
    }

    fn reference() -> String {
        let cmd = Cli::command();
        let keys: std::collections::BTreeSet<String> = serde_json::to_value(Config::default())
            .unwrap()
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        let mut out = String::from(
            "# Configuration reference\n\n\
             Generated from the settings' declaration (`crates/core/src/node/config.rs` and \
             `crates/server/src/config.rs`) by a test; do not edit by hand.\n\n\
             `dynamokv server` reads an optional TOML file (`--config FILE`) whose keys are the \
             settings' names below, then applies the flags given on the command line over it. \
             `[tls]` in the file holds `cert`, `key`, `ca` and `require_client_cert`; \
             `[[tokens]]` entries hold `name`, `token` and `scopes` (docs/security.md).\n\n\
             | setting (file key) | flag | default | what it does |\n|---|---|---|---|\n",
        );
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            let Some(long) = arg.get_long() else {
                continue;
            };
            let key = if keys.contains(id) {
                format!("`{id}`")
            } else if ["cert", "key", "ca"].contains(&id) {
                format!("`tls.{id}`")
            } else if id == "tls_require_client_cert" {
                "`tls.require_client_cert`".to_owned()
            } else {
                "(flag only)".to_owned()
            };
            let flag = match arg.get_short() {
                Some(c) => format!("`-{c}`, `--{long}`"),
                None => format!("`--{long}`"),
            };
            let default: Vec<String> = arg
                .get_default_values()
                .iter()
                .map(|v| v.to_string_lossy().into_owned())
                .collect();
            let default = if default.is_empty() {
                "-".to_owned()
            } else {
                format!("`{}`", default.join(","))
            };
            let help = arg
                .get_long_help()
                .or(arg.get_help())
                .map(|h| h.to_string().replace('\n', " ").replace('|', "\\|"))
                .unwrap_or_default();
            out.push_str(&format!("| {key} | {flag} | {default} | {help} |\n"));
        }
        out
    }
}
