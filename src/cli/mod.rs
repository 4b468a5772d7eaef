//! The `hsmca` command line: `serve` and `init` run next to the token, and
//! `config check` runs the start-up checks of `serve` without serving;
//! `issue`, `ca`, `get`, `list`, `tag`, `revoke`, `crl` and `request` are
//! clients of a running daemon's socket; `status` reads its metrics socket;
//! `bench` sets up its own token and daemon and measures them.

pub mod audit;
pub mod client;
pub mod config_check;
pub mod docs;
pub mod init;
pub mod jwt_key;
pub mod records;
pub mod requests;
pub mod serve;
pub mod serve_workload;
pub mod status;
pub mod store;
pub mod workload;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub use crate::client::CliResult;

/// `hsmca --version`: the crate version and the commit it was built from
/// (build.rs; "unknown" when built outside a git checkout).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("HSMCA_GIT_COMMIT"),
    ")"
);

#[derive(Parser, Debug)]
#[command(
    name = "hsmca",
    version = VERSION,
    about = "A certificate authority whose CA key never leaves a PKCS#11 token"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the daemon: log in to the token and serve gRPC on the Unix socket.
    Serve {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Create the CA key in the token and the CA certificate.
    Init(InitArgs),
    /// Check a configuration before serving with it.
    #[command(subcommand)]
    Config(config_check::ConfigCommand),
    /// Ask the daemon for a certificate.
    Issue(Box<IssueArgs>),
    /// Print the CA certificates (issuing CA first, root last).
    Ca {
        #[command(flatten)]
        conn: Connection,
        /// Write the chain here instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Print one certificate record.
    Get(records::GetArgs),
    /// List certificate records, newest first.
    List(records::ListArgs),
    /// Set or remove tags, or replace the description, of a certificate.
    Tag(records::TagArgs),
    /// Revoke a certificate: it appears on the next CRL.
    Revoke(records::RevokeArgs),
    /// Print the current CRL.
    Crl(records::CrlArgs),
    /// Certificate requests: CSRs the daemon keeps issued and renewed.
    #[command(subcommand)]
    Request(requests::RequestCommand),
    /// Summarise the daemon's metrics: token, issued and refused
    /// certificates, signer queue, latencies.
    Status(status::StatusArgs),
    /// The audit log: every signature and every refusal, hash-chained.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// The store itself: copy a SQLite store into PostgreSQL.
    #[command(subcommand)]
    Store(store::StoreCommand),
    /// The SPIFFE workload endpoint: fetch this process's SVIDs, list the
    /// registration entries.
    #[command(subcommand)]
    Workload(workload::WorkloadCommand),
    /// Measure issuance against the token's own signing rate, on a fresh
    /// token and a daemon started for the purpose (see BENCHMARKS.md).
    Bench(Box<crate::bench::BenchArgs>),
    /// Part of `hsmca bench`: the raw C_Sign rate, in a process of its own
    /// with the token's environment; prints JSON.
    #[command(hide = true)]
    BenchRaw {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        seconds: f64,
    },
    /// One workload of `hsmca bench` (see bench/peers.rs).
    #[command(hide = true)]
    BenchWorkloadPeer {
        #[arg(long)]
        socket: PathBuf,
    },
    /// Write the man pages (DIR/man) and the bash, zsh and fish completions
    /// (DIR/completions), generated from these definitions; for packaging.
    #[command(hide = true)]
    GenerateDocs { dir: PathBuf },
}

#[derive(Args, Debug)]
pub struct InitArgs {
    #[arg(long, short)]
    pub config: PathBuf,
    /// Replace an existing CA key (and certificate) instead of refusing.
    #[arg(long)]
    pub force: bool,
    /// Write a CSR for the CA key to this file, for an external root to sign,
    /// instead of making a self-signed root.
    #[arg(long, conflicts_with = "import_chain")]
    pub csr: Option<PathBuf>,
    /// Install the chain an external root signed (the CA certificate first,
    /// then each issuer up to the root).
    #[arg(long)]
    pub import_chain: Option<PathBuf>,
    /// Replace the JWT-SVID signing key ([workload.jwt]) with a new one and
    /// keep the old one as `<key_label>.previous`; the CA key is not
    /// touched. A restarted daemon signs with the new key and keeps the old
    /// one in its JWT bundle for one JWT lifetime.
    #[arg(long, conflicts_with_all = ["csr", "import_chain", "force"])]
    pub rotate_jwt_key: bool,
}

/// How a client finds the daemon.
#[derive(Args, Debug, Clone)]
pub struct Connection {
    /// The daemon's socket.
    #[arg(long, env = "HSMCA_SOCKET")]
    pub socket: Option<PathBuf>,
    /// Read the socket path from this config file.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct IssueArgs {
    #[command(flatten)]
    pub conn: Connection,
    /// PEM public key (SubjectPublicKeyInfo) to certify.
    #[arg(long, conflicts_with = "csr", required_unless_present = "csr")]
    pub public_key: Option<PathBuf>,
    /// PEM CSR to certify; the names come from the CSR.
    #[arg(long)]
    pub csr: Option<PathBuf>,
    /// Requested lifetime, e.g. 12h (default: the profile's).
    #[arg(long)]
    pub duration: Option<String>,
    /// Certificate profile: client (default) or server.
    #[arg(long)]
    pub profile: Option<String>,
    #[arg(long)]
    pub cn: Option<String>,
    #[arg(long = "dns")]
    pub dns: Vec<String>,
    #[arg(long = "uri")]
    pub uri: Vec<String>,
    #[arg(long = "ip")]
    pub ip: Vec<String>,
    /// UUID that makes retrying this exact request safe.
    #[arg(long)]
    pub request_id: Option<String>,
    #[arg(long)]
    pub description: Option<String>,
    /// A tag as key=value; repeatable.
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Write the certificate here (default: standard output, unless --json).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write the chain (certificate first, root last) here.
    #[arg(long)]
    pub chain: Option<PathBuf>,
    /// Print the record and the PEMs as JSON on standard output.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(cli: Cli) -> CliResult {
    match cli.command {
        Command::Serve { config } => serve::serve(&config).await,
        Command::Init(args) => init::init(args).await,
        Command::Config(cmd) => config_check::run(cmd).await,
        Command::Issue(args) => client::issue(*args).await,
        Command::Ca { conn, out } => client::ca(conn, out).await,
        Command::Get(args) => records::get(args).await,
        Command::List(args) => records::list(args).await,
        Command::Tag(args) => records::tag(args).await,
        Command::Revoke(args) => records::revoke(args).await,
        Command::Crl(args) => records::crl(args).await,
        Command::Request(cmd) => requests::run(cmd).await,
        Command::Status(args) => status::status(args).await,
        Command::Audit(cmd) => audit::run(cmd).await,
        Command::Store(cmd) => store::run(cmd).await,
        Command::Workload(cmd) => workload::run(cmd).await,
        Command::Bench(args) => crate::bench::bench(*args).await,
        Command::BenchRaw { config, seconds } => crate::bench::raw::main(&config, seconds).await,
        Command::BenchWorkloadPeer { socket } => crate::bench::peers::peer_main(&socket),
        Command::GenerateDocs { dir } => docs::generate(&dir),
    }
}
