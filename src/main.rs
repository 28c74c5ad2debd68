//! `cascade`: the one binary that runs every part of Cascade.
//!
//! Each subcommand loads the shared configuration (defaults → `--config`
//! file → `CASCADE_` environment variables), then starts one service through
//! the common `build` → `addrs` → `run` shape of the `service` crate.

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
    /// Measure throughput and latency (results go to docs/benchmarks.md).
    #[command(subcommand)]
    Bench(BenchCommand),
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

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Message sends and page reads through the REST API against Postgres,
    /// beside the store alone and the HTTP ceiling, in one run.
    Api(ApiBenchArgs),
    /// WebSocket connections held by one replica, and fan-out latency to a
    /// group with and without them.
    Ws(WsBenchArgs),
    /// Simulated call placement: load balance, churn, decisions per second.
    Placement(PlacementBenchArgs),
    /// One publisher to N subscribers through a real edge, ramped, beside a
    /// raw UDP forwarder in the same run.
    Sfu(SfuBenchArgs),
    /// One relay hop (a `cascade relay` process): packets per second per
    /// core and added latency, beside a raw UDP forwarder in the same run.
    Relay(RelayBenchArgs),
}

#[derive(Debug, Args)]
struct RelayBenchArgs {
    /// Publisher packet rates of the ramp, per second, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [5_000u64, 20_000, 50_000, 100_000])]
    rates: Vec<u64>,
    /// Subscriber links behind the relay.
    #[arg(long, default_value_t = 1)]
    subscribers: usize,
    /// Payload bytes per packet after the RTP header.
    #[arg(long, default_value_t = 1100)]
    payload: usize,
    /// Seconds each step is measured.
    #[arg(long, default_value_t = 5)]
    step_secs: u64,
}

#[derive(Debug, Args)]
struct SfuBenchArgs {
    /// Subscriber counts of the ramp, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 10, 25, 50, 100, 150])]
    subscribers: Vec<usize>,
    /// Seconds each step is measured.
    #[arg(long, default_value_t = 5)]
    step_secs: u64,
    /// The publisher's video bitrate, kbit/s.
    #[arg(long, default_value_t = 1500)]
    video_kbps: u32,
    /// The publisher sends three simulcast layers (the top one at
    /// `--video-kbps`, then a third and a tenth of it) and subscribers ask
    /// for q, h and f in turn.
    #[arg(long)]
    simulcast: bool,
}

#[derive(Debug, Args)]
struct PlacementBenchArgs {
    /// Regions.
    #[arg(long, default_value_t = 20)]
    regions: usize,
    /// Edges per region.
    #[arg(long, default_value_t = 50)]
    edges: usize,
    /// Calls.
    #[arg(long, default_value_t = 1_000_000)]
    calls: usize,
    /// Bounded-load slack: capacity = (1 + slack) × mean load.
    #[arg(long, default_value_t = 0.10)]
    slack: f64,
}

#[derive(Debug, Args)]
struct WsBenchArgs {
    /// Postgres server for a scratch database; without it, embedded SQLite.
    #[arg(long)]
    database_url: Option<String>,
    /// Connections to hold in total.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Members of the group messages are sent to.
    #[arg(long, default_value_t = 100)]
    members: usize,
    /// Messages per phase.
    #[arg(long, default_value_t = 200)]
    messages: usize,
    /// Messages per second.
    #[arg(long, default_value_t = 20)]
    rate: u32,
}

#[derive(Debug, Args)]
struct ApiBenchArgs {
    /// Postgres server where a scratch database is created and dropped.
    #[arg(
        long,
        env = "TEST_DATABASE_URL",
        default_value = "postgres://postgres:postgres@127.0.0.1:5432/postgres"
    )]
    database_url: String,
    /// Seconds each workload runs.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Group conversations the traffic is spread over.
    #[arg(long, default_value_t = 64)]
    conversations: usize,
    /// Messages per conversation before the read workloads.
    #[arg(long, default_value_t = 500)]
    history: usize,
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
struct CertsArgs {
    /// Where to write `ca.pem`, `ca.key`, `<name>.pem`, `<name>.key`.
    #[arg(long, default_value = "certs")]
    out: PathBuf,
    /// Node ids to issue certificates for (relays and edges).
    #[arg(required = true)]
    names: Vec<String>,
}

#[derive(Debug, Args)]
struct ServiceArgs {
    /// Print the effective configuration (secrets redacted) and exit.
    #[arg(long)]
    print_config: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
        Command::Bench(BenchCommand::Api(args)) => exit_with(bench_api(args)),
        Command::Bench(BenchCommand::Ws(args)) => exit_with(bench_ws(args)),
        Command::Bench(BenchCommand::Placement(args)) => exit_with(bench_placement(&args)),
        Command::Bench(BenchCommand::Sfu(args)) => exit_with(bench_sfu(&args)),
        Command::Bench(BenchCommand::Relay(args)) => exit_with(bench_relay(&args)),
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
    for name in &args.names {
        if let Err(rule) = service::config::node_id_problem(name) {
            anyhow::bail!("node id {name:?}: use {rule}");
        }
    }
    let written = relay::tls::write_dev_certs(&args.out, &args.names)
        .context("cannot write the certificates")?;
    for path in written {
        println!("{}", path.display());
    }
    Ok(())
}

/// The multi-threaded runtime every subcommand runs on, with the one
/// rustls crypto provider (aws-lc-rs) installed first.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
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

/// Runs `cascade bench api` and prints a Markdown report.
#[allow(clippy::print_stdout, reason = "the report is the command's output")]
fn bench_api(args: ApiBenchArgs) -> anyhow::Result<()> {
    let options = testkit::bench::api::ApiBenchOptions {
        admin_database_url: args.database_url,
        duration: std::time::Duration::from_secs(args.seconds),
        clients: args.clients,
        conversations: args.conversations,
        history: args.history,
    };
    let runtime = runtime()?;
    let results = runtime.block_on(testkit::bench::api::run(&options));
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "cascade bench api: {} clients, {} conversations, {} s per workload, {cores} cores ({cpu})\n",
        options.clients,
        options.conversations,
        options.duration.as_secs(),
    );
    print!("{}", testkit::bench::markdown(&results));
    Ok(())
}

/// Runs `cascade bench placement` and prints a Markdown report.
#[allow(clippy::print_stdout, reason = "the report is the command's output")]
fn bench_placement(args: &PlacementBenchArgs) -> anyhow::Result<()> {
    let options = testkit::bench::placement::PlacementOptions {
        regions: args.regions,
        edges: args.edges,
        calls: args.calls,
        slack: args.slack,
    };
    anyhow::ensure!(
        options.regions > 0 && options.edges > 7 && options.calls > 0,
        "need at least one region, 8 edges and one call"
    );
    let rows = testkit::bench::placement::run(&options);
    println!(
        "cascade bench placement: {} regions × {} edges, {} calls, slack {}\n",
        options.regions, options.edges, options.calls, options.slack
    );
    println!("| metric | value | aim |\n|---|---:|---|");
    for row in rows {
        println!("| {} | {} | {} |", row.metric, row.value, row.aim);
    }
    Ok(())
}

/// Runs `cascade bench ws` and prints a Markdown report.
#[allow(clippy::print_stdout, reason = "the report is the command's output")]
fn bench_ws(args: WsBenchArgs) -> anyhow::Result<()> {
    let options = testkit::bench::ws::WsBenchOptions {
        admin_database_url: args.database_url,
        connections: args.connections,
        members: args.members,
        messages: args.messages,
        rate: args.rate,
    };
    let runtime = runtime()?;
    let report = runtime.block_on(testkit::bench::ws::run(&options));
    println!(
        "cascade bench ws: {} connections, {}-member group, {} messages per phase at {}/s, {} cores\n",
        options.connections,
        options.members,
        options.messages,
        options.rate,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    print!("{}", testkit::bench::markdown(&report.phases));
    let idle = options.connections.saturating_sub(options.members).max(1) as f64;
    println!(
        "\nheld at the end: {} of {} ({} failed or closed); opening the idle ones took {:.1} s",
        report.held,
        options.connections,
        report.failed,
        report.connect_time.as_secs_f64()
    );
    println!(
        "server RSS: {:.1} MiB before the idle connections, {:.1} MiB after ({:.1} KiB per connection); server CPU {:.1} s",
        report.rss.0 as f64 / 1048576.0,
        report.rss.1 as f64 / 1048576.0,
        (report.rss.1 as f64 - report.rss.0 as f64) / 1024.0 / idle,
        report.server_cpu_secs
    );
    if let [quiet, loaded] = report.phases.as_slice() {
        println!(
            "p99 with all connections / p99 with members only: {:.2}",
            loaded.p99.as_secs_f64() / quiet.p99.as_secs_f64().max(1e-9)
        );
    }
    Ok(())
}

/// Runs `cascade bench relay` and prints a Markdown report.
#[allow(clippy::print_stdout, reason = "the report is the command's output")]
fn bench_relay(args: &RelayBenchArgs) -> anyhow::Result<()> {
    if args.rates.is_empty() || args.rates.contains(&0) || args.subscribers == 0 {
        anyhow::bail!("--rates needs rates above 0 and --subscribers at least 1");
    }
    let options = testkit::bench::relay::RelayBenchOptions {
        rates: args.rates.clone(),
        subscribers: args.subscribers.min(50),
        payload: args.payload.clamp(16, 1200),
        step: std::time::Duration::from_secs(args.step_secs.max(1)),
    };
    let runtime = runtime()?;
    let report = runtime.block_on(testkit::bench::relay::run(&options));
    println!(
        "cascade bench relay: {} B packets ({} B payload + relay and RTP headers), {} subscriber link(s), {} s per step, {} cores ({})\n",
        options.payload + 19,
        options.payload,
        options.subscribers,
        options.step.as_secs(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model(),
    );
    print!("{}", testkit::bench::relay::markdown(&report));
    Ok(())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_default()
}

/// Runs `cascade bench sfu` and prints a Markdown report.
#[allow(clippy::print_stdout, reason = "the report is the command's output")]
fn bench_sfu(args: &SfuBenchArgs) -> anyhow::Result<()> {
    if args.subscribers.is_empty() || args.subscribers.contains(&0) {
        anyhow::bail!("--subscribers needs one or more counts above 0");
    }
    let options = testkit::bench::sfu::SfuBenchOptions {
        subscribers: args.subscribers.clone(),
        step: std::time::Duration::from_secs(args.step_secs.max(1)),
        video_kbps: args.video_kbps.clamp(50, 20_000),
        simulcast: args.simulcast,
    };
    let runtime = runtime()?;
    let report = runtime.block_on(testkit::bench::sfu::run(&options));
    let cpu = cpu_model();
    println!(
        "cascade bench sfu: VP8 {} kbit/s ({} B frames at 30/s){} + Opus, {} s per step, {} cores ({cpu})\n",
        options.video_kbps,
        report.delta_body + 11,
        if options.simulcast {
            ", simulcast q/h/f (a tenth, a third, all of it), subscribers asking q, h, f in turn"
        } else {
            ""
        },
        options.step.as_secs(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    print!("{}", testkit::bench::sfu::markdown(&report));
    Ok(())
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
