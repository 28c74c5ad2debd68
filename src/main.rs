//! `cascade`: the one binary that runs every part of Cascade.
//!
//! Each subcommand loads the shared configuration (defaults → `--config`
//! file → `CASCADE_` environment variables), then starts one service through
//! the common `build` → `addrs` → `run` shape of the `service` crate.

mod config;

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
    /// Run a control-plane replica: accounts, conversations, calls, placement.
    ControlPlane(ServiceArgs),
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
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Message sends and page reads through the REST API against Postgres,
    /// beside the store alone and the HTTP ceiling, in one run.
    Api(ApiBenchArgs),
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
        Command::Admin(command) => {
            let config = loaded.config;
            service::telemetry::init_tracing(&config.telemetry);
            exit_with(admin(command, &config.control_plane))
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

/// Starts `S` on a fresh runtime and serves until SIGTERM or Ctrl-C.
fn run<S: Service>(config: S::Config) -> anyhow::Result<()> {
    // One crypto provider for the whole process (aws-lc-rs); rustls panics
    // at first use if it has to guess between two.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
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
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let options = testkit::bench::api::ApiBenchOptions {
        admin_database_url: args.database_url,
        duration: std::time::Duration::from_secs(args.seconds),
        clients: args.clients,
        conversations: args.conversations,
        history: args.history,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
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
