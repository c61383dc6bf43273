//! `dynamokv admin certs`: a cluster CA and node and client certificates for people who have
//! no PKI of their own (rcgen, ECDSA P-256).
//!
//! The CA's key stays in the output directory: run the command again with the same `--out` to
//! issue certificates for more nodes (the CA found there is reused). Keys are written readable
//! by their owner only.

use anyhow::{Context as _, bail};
use clap::Args;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Flags of `dynamokv admin certs`.
#[derive(Args, Debug)]
pub struct CertsArgs {
    /// Directory to write into (created if missing). A CA already there (ca.pem, ca.key) is
    /// reused, so later runs issue certificates for new nodes of the same cluster.
    #[arg(long, default_value = "dynamokv-certs", value_name = "DIR")]
    out: PathBuf,
    /// Node ids to issue certificates for (repeat or separate with commas): ID.pem and ID.key,
    /// for the node's --tls-cert and --tls-key.
    #[arg(long = "node-id", value_delimiter = ',', value_name = "ID")]
    nodes: Vec<String>,
    /// Client names to issue client certificates for: client-NAME.pem and client-NAME.key,
    /// for --client-cert and --client-cert-key (needed when nodes run with
    /// --tls-require-client-cert).
    #[arg(long = "client", value_delimiter = ',', value_name = "NAME")]
    clients: Vec<String>,
    /// Host names and IP addresses clients reach the nodes at, added to every node
    /// certificate issued by this run (localhost, 127.0.0.1, ::1 and the node id always are).
    #[arg(long = "host", value_delimiter = ',', value_name = "NAME")]
    hosts: Vec<String>,
    /// Days the node and client certificates are valid (the CA: ten years).
    #[arg(long, default_value_t = 825, value_name = "DAYS")]
    days: u32,
    /// Overwrite node and client certificates that already exist.
    #[arg(long)]
    force: bool,
}

fn write(path: &Path, contents: &str, secret: bool) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let _ = secret;
    let mut f = options
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(contents.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

fn validity(params: &mut CertificateParams, days: u32) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(i64::from(days));
}

/// A DNS name is added to a certificate only when it is one (node ids may be anything).
fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn file_name(name: &str) -> anyhow::Result<&str> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        || name.starts_with('.')
    {
        bail!("{name:?} cannot name a certificate file: use letters, digits, '-', '_' and '.'");
    }
    Ok(name)
}

/// The CA in `dir`, created when missing.
fn ca(dir: &Path) -> anyhow::Result<(Issuer<'static, KeyPair>, bool)> {
    let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
    if key_path.exists() || cert_path.exists() {
        let key = std::fs::read_to_string(&key_path)
            .with_context(|| format!("cannot read the CA key {}", key_path.display()))?;
        let cert = std::fs::read_to_string(&cert_path)
            .with_context(|| format!("cannot read the CA certificate {}", cert_path.display()))?;
        let key = KeyPair::from_pem(&key)
            .with_context(|| format!("{} is not a PEM private key", key_path.display()))?;
        let issuer = Issuer::from_ca_cert_pem(&cert, key)
            .with_context(|| format!("{} is not a CA certificate", cert_path.display()))?;
        return Ok((issuer, false));
    }
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut suffix = [0u8; 4];
    getrandom::fill(&mut suffix).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let suffix: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("dynamokv cluster CA {suffix}"));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut params, 3650);
    let cert = params.self_signed(&key)?;
    write(&cert_path, &cert.pem(), false)?;
    write(&key_path, &key.serialize_pem(), true)?;
    Ok((Issuer::new(params, key), true))
}

fn issue(
    issuer: &Issuer<'static, KeyPair>,
    common_name: &str,
    sans: Vec<String>,
    usages: Vec<ExtendedKeyUsagePurpose>,
    days: u32,
) -> anyhow::Result<(String, String)> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(sans)?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = usages;
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, days);
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Makes sure `out` holds a CA and a node certificate for each of `ids` (issuing only what is
/// missing): what `dynamokv dev --tls` runs before starting nodes.
pub fn ensure_nodes(out: &Path, ids: &[String]) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let (issuer, _) = ca(out)?;
    for id in ids {
        file_name(id)?;
        let (cert_path, key_path) = (out.join(format!("{id}.pem")), out.join(format!("{id}.key")));
        if cert_path.exists() && key_path.exists() {
            continue;
        }
        let (pem, key) = issue_node(&issuer, id, &[], 825)?;
        write(&cert_path, &pem, false)?;
        write(&key_path, &key, true)?;
    }
    Ok(())
}

fn issue_node(
    issuer: &Issuer<'static, KeyPair>,
    name: &str,
    hosts: &[String],
    days: u32,
) -> anyhow::Result<(String, String)> {
    let mut sans = vec!["localhost".to_owned(), "127.0.0.1".into(), "::1".into()];
    let name_owned = name.to_owned();
    if is_dns_name(name) && !sans.contains(&name_owned) {
        sans.push(name_owned);
    }
    for h in hosts {
        if !sans.contains(h) {
            sans.push(h.clone());
        }
    }
    issue(
        issuer,
        name,
        sans,
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        days,
    )
}

/// Runs `dynamokv admin certs`.
pub fn run(args: CertsArgs) -> anyhow::Result<ExitCode> {
    if args.nodes.is_empty() && args.clients.is_empty() {
        bail!("name at least one --node-id (or --client) to issue a certificate for");
    }
    if args.days == 0 {
        bail!("--days must be at least 1");
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let (issuer, created) = ca(&args.out)?;
    let dir = args.out.display();
    if created {
        println!(
            "created the cluster CA: {dir}/ca.pem (its key {dir}/ca.key: keep it safe and off the nodes)"
        );
    } else {
        println!("using the cluster CA in {dir}");
    }
    let mut written = Vec::new();
    let targets = (args.nodes.iter().map(|n| (n, n.clone(), true))).chain(
        args.clients
            .iter()
            .map(|c| (c, format!("client-{c}"), false)),
    );
    for (name, stem, is_node) in targets {
        file_name(name)?;
        let (cert_path, key_path) = (
            args.out.join(format!("{stem}.pem")),
            args.out.join(format!("{stem}.key")),
        );
        if !args.force && (cert_path.exists() || key_path.exists()) {
            bail!(
                "{} already exists: pass --force to replace it",
                cert_path.display()
            );
        }
        let (pem, key) = if is_node {
            issue_node(&issuer, name, &args.hosts, args.days)?
        } else {
            issue(
                &issuer,
                name,
                Vec::new(),
                vec![ExtendedKeyUsagePurpose::ClientAuth],
                args.days,
            )?
        };
        write(&cert_path, &pem, false)?;
        write(&key_path, &key, true)?;
        written.push((name.clone(), is_node, stem));
    }
    for (name, is_node, stem) in &written {
        if *is_node {
            println!("node {name}: {dir}/{stem}.pem, {dir}/{stem}.key");
        } else {
            println!("client {name}: {dir}/{stem}.pem, {dir}/{stem}.key");
        }
    }
    if written.iter().any(|w| w.1) {
        println!(
            "start node ID with: --tls-cert {dir}/ID.pem --tls-key {dir}/ID.key --tls-ca {dir}/ca.pem"
        );
        println!(
            "clients: curl --cacert {dir}/ca.pem https://...; dynamokv --cacert {dir}/ca.pem ...; redis-cli --tls --cacert {dir}/ca.pem"
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names() {
        assert!(is_dns_name("n1"));
        assert!(is_dns_name("db-3.example.com"));
        assert!(!is_dns_name("node_1"));
        assert!(!is_dns_name("-a"));
        assert!(!is_dns_name(""));
    }

    #[test]
    fn file_names_cannot_leave_the_directory() {
        assert!(file_name("n1").is_ok());
        assert!(file_name("../n1").is_err());
        assert!(file_name("a/b").is_err());
        assert!(file_name(".hidden").is_err());
    }
}
