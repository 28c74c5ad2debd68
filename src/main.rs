//! `cascade`: the one binary that runs every part of Cascade.
//!
//! Each subcommand loads the shared configuration (defaults → `--config`
//! file → `CASCADE_` environment variables), then starts one service through
//! the common `build` → `addrs` → `run` shape of the `service` crate.

#[cfg(feature = "bench")]
mod bench;
mod config;
mod dev;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use control_plane::ControlPlane;
use service::Service;
use service::config::Loaded;
use service::lifecycle::Shutdown;

use crate::config::CascadeConfig;

/// Bench builds count heap allocations, so that `cascade bench sfu` can say
/// how many the edge makes per forwarded datagram (every process of such a
/// build exports `cascade_heap_allocations_total`). Operators' builds keep
/// the system allocator untouched.
#[cfg(feature = "bench")]
#[global_allocator]
static COUNTING_ALLOCATOR: &stats_alloc::StatsAlloc<std::alloc::System> =
    &stats_alloc::INSTRUMENTED_SYSTEM;

#[cfg(feature = "bench")]
fn heap_allocations() -> u64 {
    let stats = stats_alloc::INSTRUMENTED_SYSTEM.stats();
    (stats.allocations + stats.reallocations) as u64
}

/// Exit code for configuration errors (like a usage error: the operator must
/// fix the input, retrying will not help).
const EXIT_BAD_CONFIG: u8 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "cascade",
    version,
    about = "Chat, calls and an edge-distributed WebRTC SFU cluster"
)]
struct Cli {
    /// TOML configuration file (also `CASCADE_CONFIG`). Environment variables
    /// `CASCADE_SECTION__KEY` override it.
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The whole system in one process, no servers needed: a control plane
    /// on SQLite in `--data-dir`, and per region a relay and edges.
    Dev(DevArgs),
    /// Run a control-plane replica: accounts, conversations, calls, placement.
    ControlPlane(ServiceArgs),
    /// Run an edge SFU node (`[edge]`): WebRTC media for the calls placed on it.
    Edge(ServiceArgs),
    /// Run a region's QUIC relay (`[relay]`): cascades media between edges
    /// and regions.
    Relay(ServiceArgs),
    /// Create a development CA and node certificates for relay links (no
    /// openssl needed). An existing CA in the directory is kept.
    Certs(CertsArgs),
    /// Account administration on the configured database.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Exit 0 when `GET <url>` answers 2xx within 2 s (container
    /// healthchecks: the image has no curl). Reads no configuration.
    Probe(ProbeArgs),
    /// Measure throughput and latency (results go to docs/benchmarks.md).
    /// Built only with `--features bench`: the release binary operators
    /// run carries no test code.
    #[cfg(feature = "bench")]
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Let an existing user read the audit log (`GET /v1/admin/audit`).
    Grant {
        /// Their username.
        username: String,
    },
    /// Withdraw site administration from a user.
    Revoke {
        /// Their username.
        username: String,
    },
    /// Print the credential a node uses on the internal API, derived from
    /// `control_plane.cluster.secret` (give each node only its own).
    NodeCredential {
        /// The node's id.
        node_id: String,
    },
}

#[derive(Debug, Args)]
struct DevArgs {
    /// Where SQLite, the cluster secret and certificates live (kept across
    /// runs).
    #[arg(long, default_value = "data")]
    data_dir: PathBuf,
    /// The control plane's HTTP port.
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Regions to start (eu, us, ap, sa in that order).
    #[arg(long, default_value_t = 2)]
    regions: usize,
    /// Edges per region.
    #[arg(long, default_value_t = 1)]
    edges_per_region: usize,
}

#[derive(Debug, Args)]
struct ProbeArgs {
    /// `http://host:port/path`, e.g. `http://127.0.0.1:8080/readyz`.
    url: String,
}

#[derive(Debug, Args)]
struct CertsArgs {
    /// Where to write `ca.pem`, `ca.key`, `<name>.pem`, `<name>.key`.
    #[arg(long, default_value = "certs")]
    out: PathBuf,
    /// Relay node ids to issue certificates for (each names its node:
    /// spiffe://cascade.internal/relay/ID, plus relay.cascade.internal).
    #[arg(long = "relay", value_name = "ID", num_args = 1.., required_unless_present_any = ["edges", "webs", "roleless"])]
    relays: Vec<String>,
    /// Edge node ids to issue certificates for
    /// (spiffe://cascade.internal/edge/ID).
    #[arg(long = "edge", value_name = "ID", num_args = 1..)]
    edges: Vec<String>,
    /// Plain HTTPS server certificates for NAME and localhost (a
    /// development TLS proxy in front of the API and edges); they cannot link.
    #[arg(long = "web", value_name = "NAME", num_args = 1..)]
    webs: Vec<String>,
    /// Names without a role (the form before certificates named their
    /// node): refused with a hint.
    #[arg(hide = true)]
    roleless: Vec<String>,
}

#[derive(Debug, Args)]
struct ServiceArgs {
    /// Print the effective configuration (secrets redacted) and exit.
    #[arg(long)]
    print_config: bool,
}

fn main() -> ExitCode {
    #[cfg(feature = "bench")]
    service::telemetry::count_heap_allocations_with(heap_allocations);
    let cli = Cli::parse();
    if let Command::Probe(args) = &cli.command {
        return probe(&args.url);
    }
    let loaded = match service::config::load::<CascadeConfig>(
        service::config::config_file(cli.config).as_deref(),
    ) {
        Ok(loaded) => loaded,
        Err(error) => {
            eprintln!("cascade: invalid configuration:");
            for problem in &error.problems {
                eprintln!("  {problem}");
            }
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };

    match cli.command {
        #[cfg(feature = "bench")]
        Command::Bench(command) => exit_with(bench::run(command)),
        Command::Admin(command) => {
            let config = loaded.config;
            service::telemetry::init_tracing(&config.telemetry);
            exit_with(admin(command, &config.control_plane))
        }
        Command::Edge(args) => {
            if args.print_config {
                return print_config(&loaded);
            }
            let config = loaded.config;
            service::telemetry::init_tracing(&config.telemetry);
            str0m::crypto::from_feature_flags().install_process_default();
            exit_with(run::<edge_node::Edge>(config.edge))
        }
        Command::Relay(args) => {
            if args.print_config {
                return print_config(&loaded);
            }
            let config = loaded.config;
            service::telemetry::init_tracing(&config.telemetry);
            exit_with(run::<relay::Relay>(config.relay))
        }
        Command::Certs(args) => exit_with(certs(&args)),
        Command::Probe(_) => unreachable!("answered before the configuration is read"),
        Command::Dev(args) => {
            let config = loaded.config;
            service::telemetry::init_tracing(&config.telemetry);
            str0m::crypto::from_feature_flags().install_process_default();
            exit_with(dev(args))
        }
        Command::ControlPlane(args) => {
            if args.print_config {
                return print_config(&loaded);
            }
            let config = loaded.config;
            service::telemetry::init_tracing(&config.telemetry);
            exit_with(run::<ControlPlane>(config.control_plane))
        }
    }
}

/// `cascade probe`: one plain-HTTP GET, the status line decides.
fn probe(url: &str) -> ExitCode {
    match probe_status(url) {
        Ok(status) if (200..300).contains(&status) => ExitCode::SUCCESS,
        Ok(status) => {
            eprintln!("cascade probe: {url} answered {status}");
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("cascade probe: {url}: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn probe_status(url: &str) -> anyhow::Result<u16> {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    use std::time::Duration;
    let rest = url
        .strip_prefix("http://")
        .context("only http:// URLs are probed")?;
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let addr = authority
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {authority:?} (host:port)"))?
        .next()
        .context("no address")?;
    let timeout = Duration::from_secs(2);
    let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET /{path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = [0u8; 64];
    let mut read = 0;
    while read < 12 {
        let n = stream.read(&mut head[read..])?;
        anyhow::ensure!(n > 0, "connection closed before a status line");
        read += n;
    }
    let line = String::from_utf8_lossy(&head[..read]);
    line.split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .filter(|_| line.starts_with("HTTP/1."))
        .with_context(|| format!("not an HTTP answer: {line:?}"))
}

#[allow(
    clippy::print_stdout,
    reason = "printing the configuration is the command's output"
)]
fn print_config(loaded: &Loaded<CascadeConfig>) -> ExitCode {
    print!("{}", loaded.to_redacted_toml());
    ExitCode::SUCCESS
}

#[allow(
    clippy::print_stdout,
    reason = "the files written are the command's output"
)]
fn certs(args: &CertsArgs) -> anyhow::Result<()> {
    use relay::tls::CertFor;
    use relay::tls::Role;
    if let Some(name) = args.roleless.first() {
        anyhow::bail!(
            "{name:?} has no role: certificates name their node and role, so say \
             `--relay {name}` or `--edge {name}` (or `--web {name}` for a TLS proxy)"
        );
    }
    let mut wanted = Vec::new();
    for (role, names) in [(Role::Relay, &args.relays), (Role::Edge, &args.edges)] {
        for name in names {
            wanted.push(CertFor::Node(role, name.clone()));
        }
    }
    wanted.extend(args.webs.iter().cloned().map(CertFor::Web));
    let mut seen = std::collections::HashSet::new();
    for cert in &wanted {
        let name = cert.name();
        if let Err(rule) = service::config::node_id_problem(name) {
            anyhow::bail!("name {name:?}: use {rule}");
        }
        if !seen.insert(name) {
            anyhow::bail!("{name:?} is named twice: each name is one pair of files");
        }
    }
    let written =
        relay::tls::write_dev_certs(&args.out, &wanted).context("cannot write the certificates")?;
    for path in written {
        println!("{}", path.display());
    }
    Ok(())
}

/// The multi-threaded runtime every subcommand runs on, with the one
/// rustls crypto provider (aws-lc-rs) installed first.
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Runs `cascade dev` until SIGTERM or Ctrl-C.
fn dev(args: DevArgs) -> anyhow::Result<()> {
    let runtime = runtime()?;
    runtime.block_on(async {
        let shutdown = Shutdown::on_termination_signal();
        let options = dev::DevOptions {
            data_dir: args.data_dir,
            port: args.port,
            regions: args.regions,
            edges_per_region: args.edges_per_region,
        };
        let stopping = shutdown.clone();
        let run = dev::run(options, shutdown);
        tokio::pin!(run);
        tokio::select! {
            result = &mut run => result,
            () = stopping.wait() => {
                // Each service drains within its own timeout; this bounds
                // the whole.
                tokio::time::timeout(dev::STOP_TIMEOUT, run)
                    .await
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("services did not stop in time")))
            }
        }
    })
}

/// Starts `S` on a fresh runtime and serves until SIGTERM or Ctrl-C.
fn run<S: Service>(config: S::Config) -> anyhow::Result<()> {
    // One crypto provider for the whole process (aws-lc-rs); rustls panics
    // at first use if it has to guess between two (`runtime` installs it).
    let runtime = runtime()?;
    runtime.block_on(async {
        // Listen for signals before binding, so an early SIGTERM is not lost.
        let shutdown = Shutdown::on_termination_signal();
        let app = S::build(config).await.context("start-up failed")?;
        tracing::info!(addrs = ?app.addrs(), "serving");
        app.run(shutdown).await.context("service failed")
    })
}

/// Grants or revokes site administration. Operators do this on an
/// existing account, so nobody can claim admin rights by registering a
/// name first.
#[allow(
    clippy::print_stdout,
    reason = "the confirmation is the command's output"
)]
fn admin(command: AdminCommand, config: &control_plane::ControlPlaneConfig) -> anyhow::Result<()> {
    let (username, grant) = match command {
        AdminCommand::Grant { username } => (username, true),
        AdminCommand::Revoke { username } => (username, false),
        AdminCommand::NodeCredential { node_id } => {
            let secret = config.cluster.secret.as_deref().context(
                "control_plane.cluster.secret is not set; nodes cannot authenticate without it",
            )?;
            println!("{}", control_plane::api::node_credential(secret, &node_id));
            return Ok(());
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let store = control_plane::store::open(&config.database, &config.data_dir)
            .await
            .context("cannot open the database")?;
        let username = username.trim().to_ascii_lowercase();
        if !store
            .set_admin(&username, grant)
            .await
            .context("cannot update the user")?
        {
            anyhow::bail!("no user named {username:?}");
        }
        let verb = if grant { "is now" } else { "is no longer" };
        println!("{username} {verb} a site administrator");
        Ok(())
    })
}

fn exit_with(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("cascade: {error:#}");
            ExitCode::FAILURE
        }
    }
}
