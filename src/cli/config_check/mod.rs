//! `hsmca config check`: what `nginx -t` is to nginx. It runs the start-up
//! steps of `hsmca serve` with the same code — the config, the PIN source,
//! the PKCS#11 module, the token and the login, the CA key, the CA
//! certificate and a test signature, the socket directory rule, the store's
//! schema — and prints one line per step: ✓, or ✗ with the reason and the
//! fix. A step that needs one that failed is skipped (–). It never binds a
//! socket and never changes the token or the store: the token is only
//! logged in to and signed with (a wrong PIN does count as a failed login
//! on the token, as a start would), and the store is opened read-only
//! without migrations ([`crate::store::sqlite::inspect`]).
//!
//! `--setup` is the light check behind the service's `ExecCondition=`: is
//! hsmca set up at all? If not, it prints the next steps and exits 1, and
//! systemd skips the start instead of failing it (no restart loop).

mod report;
mod setup;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use clap::{Args, Subcommand};

use self::report::Reporter;
pub use self::report::{Check, Report, Status};
use super::{CliResult, serve};
use crate::{
    ca::{CaChain, CaError},
    config::{Config, ConfigError},
    pin::{self, PinError},
    server::socket::{self, SocketError},
    signing::DigestSigner,
    store::sqlite::inspect::{self as schema, SchemaState},
    token::{CaKey, TokenError, jwt_key::JwtKeyError, pool::SignerPool},
};

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Check the config, the PIN, the token, the CA key and certificate,
    /// the socket directory and the store as `serve` would at start-up,
    /// without serving or changing anything. Exits 1 if a check fails.
    Check(CheckArgs),
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    #[arg(long, short)]
    pub config: PathBuf,
    /// Print one JSON object on standard output instead of lines.
    #[arg(long)]
    pub json: bool,
    /// Apply the socket directory rule for the daemon's user NAME (e.g.
    /// hsmca) instead of the user running the check.
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
    /// Only check that hsmca has been set up (the config file and the CA
    /// certificate exist); if not, print the next steps and exit 1. For
    /// the service's ExecCondition=: systemd then skips the start instead of
    /// failing it. Anything else is left to `serve`, which fails loudly.
    #[arg(long, conflicts_with_all = ["json", "user"])]
    pub setup: bool,
}

pub async fn run(cmd: ConfigCommand) -> CliResult {
    match cmd {
        ConfigCommand::Check(args) if args.setup => setup::setup(&args.config),
        ConfigCommand::Check(args) => check(args).await,
    }
}

pub async fn check(args: CheckArgs) -> CliResult {
    let mut r = Reporter {
        json: args.json,
        checks: Vec::new(),
    };
    let path = &args.config;
    let cfg = match Config::load(path) {
        Ok(cfg) => {
            r.ok("config", format!("{} loads and is valid", path.display()));
            cfg
        }
        Err(e) => {
            let fix = match &e {
                ConfigError::Read { .. } => "give the path of the config file; /usr/share/doc/hsmca/examples/hsmca.example.toml documents every key (in the source: hsmca.example.toml)".to_string(),
                _ => "correct the key named above (HSMCA_<SECTION>__<KEY> variables override the file); hsmca.example.toml documents every key".to_string(),
            };
            r.fail("config", e.to_string(), fix);
            r.skip_range("pin", None, "the config did not load");
            return r.finish(path);
        }
    };

    // The token, as `serve` opens it (serve::open_signer), then the CA
    // certificate and the start-up self-test.
    let signer = token_checks(&mut r, &cfg, path).await;
    certificate_checks(&mut r, &cfg, path, signer.as_ref()).await;
    if let Some((pool, _)) = signer {
        let stopper = pool.clone();
        let _ = tokio::task::spawn_blocking(move || stopper.shutdown()).await;
    }

    socket_check(&mut r, &cfg, args.user.as_deref());
    store_check(&mut r, &cfg);
    r.finish(path)
}

/// The PIN source, then module, token, login and key through
/// [`serve::open_signer`]: its error says which step failed.
async fn token_checks(
    r: &mut Reporter,
    cfg: &Config,
    config_path: &Path,
) -> Option<(Arc<SignerPool>, CaKey)> {
    let source = match pin::pin_source(&cfg.token)
        .and_then(|s| pin::load_pin(&cfg.token).map(|_| s))
    {
        Ok(s) => {
            r.ok("pin", format!("read from {s}"));
            s
        }
        Err(e) => {
            let fix = match &e {
                PinError::Permissions { path, .. } => format!(
                    "chmod 600 {path}, owned by the daemon's user (under systemd leave token.pin_file unset: LoadCredential= hands the daemon the PIN)"
                ),
                PinError::Missing { .. } => "set token.pin_file to a file holding the token's user PIN (mode 0600), or under systemd put it in /etc/hsmca/pin (LoadCredential=hsmca-pin:/etc/hsmca/pin), or set HSMCA_PIN".to_string(),
                PinError::Read { path, .. } => format!(
                    "create {path} (mode 0600) holding the user PIN, readable by the user running hsmca"
                ),
                PinError::Empty(_) | PinError::NotUtf8(_) => {
                    "write the token's user PIN into it, on one line".to_string()
                }
            };
            r.fail("pin", e.to_string(), fix);
            r.skip_range("module", Some("certificate"), "needs the PIN");
            return None;
        }
    };
    let locator = match cfg.token.locator() {
        Ok(l) => l,
        Err(e) => {
            // Config::load validated the locator; kept for completeness.
            r.fail("module", e.to_string(), "correct the token section");
            r.skip_range("token", Some("certificate"), "the token section is invalid");
            return None;
        }
    };
    let module = locator.module.display().to_string();
    let key_name = crate::token::KeySelector::from_locator(&locator).to_string();
    let jwt = super::jwt_key::configured(cfg);
    let mut opened = serve::open_signers(cfg, 1, jwt).await;
    if let Err(e) = &opened
        && let Some(j) = e.downcast_ref::<JwtKeyError>()
    {
        // The CA key is fine (it is looked up first): report the JWT key
        // and go on with the CA checks without it.
        let fix = match &j.source {
            TokenError::JwtKeyNotFound(_) => format!(
                "make it with: hsmca init --config {} (it keeps the CA key and makes only what is missing)",
                config_path.display()
            ),
            _ => format!(
                "give workload.jwt.key_label a key pair of workload.jwt.key_type that is not the CA key, or replace it with: hsmca init --config {} --rotate-jwt-key",
                config_path.display()
            ),
        };
        let detail = e.to_string();
        match serve::open_signer(cfg, 1).await {
            Ok((pool, key)) => {
                r.ok("module", format!("{module} loaded"));
                r.ok("token", format!("{:?} found", locator.token_label));
                r.ok("login", format!("logged in with the PIN from {source}"));
                r.ok("key", ca_key_detail(&key_name, cfg));
                r.fail("jwt-key", detail, fix);
                return Some((pool, key));
            }
            Err(e) => opened = Err(e),
        }
    }
    match opened {
        Ok((pool, key, jwt_pair)) => {
            r.ok("module", format!("{module} loaded"));
            r.ok("token", format!("{:?} found", locator.token_label));
            r.ok("login", format!("logged in with the PIN from {source}"));
            r.ok("key", ca_key_detail(&key_name, cfg));
            match (jwt, jwt_pair) {
                (Some(j), Some(pair)) => r.ok(
                    "jwt-key",
                    format!(
                        "{:?}: one {} key pair, not the CA key{}",
                        j.key_label,
                        j.key_type.name(),
                        if pair.previous.is_some() {
                            format!("; the previous one ({:?}) is kept", j.previous_label())
                        } else {
                            String::new()
                        }
                    ),
                ),
                _ => r.skip(
                    "jwt-key",
                    "the workload endpoint ([workload]) is not configured",
                ),
            }
            Some((pool, key))
        }
        Err(e) => {
            let (failed, fix) = classify(e.as_ref(), &module, &source, config_path);
            let steps = ["module", "token", "login", "key"];
            for step in steps {
                if step == failed {
                    break;
                }
                let detail = match step {
                    "module" => format!("{module} loaded"),
                    "token" => format!("{:?} found", locator.token_label),
                    _ => format!("logged in with the PIN from {source}"),
                };
                r.ok(step, detail);
            }
            r.fail(failed, e.to_string(), fix);
            let next = steps
                .iter()
                .position(|s| *s == failed)
                .and_then(|i| steps.get(i + 1));
            match next {
                Some(next) => r.skip_range(
                    next,
                    Some("certificate"),
                    &format!("the {failed} check failed"),
                ),
                None => r.skip("jwt-key", &format!("the {failed} check failed")),
            }
            None
        }
    }
}

fn ca_key_detail(key_name: &str, cfg: &Config) -> String {
    format!(
        "{key_name}: exactly one {} private key and its public half; sensitive, not extractable",
        cfg.ca.key_type.name(),
    )
}

/// Which token step an error from [`serve::open_signer`] belongs to, and
/// what to do about it.
fn classify(
    e: &(dyn std::error::Error + Send + Sync + 'static),
    module: &str,
    source: &pin::PinSource,
    config_path: &Path,
) -> (&'static str, String) {
    let init = format!("hsmca init --config {}", config_path.display());
    let list_objects = format!("pkcs11-tool --module {module} --login --list-objects");
    let module_fix = format!(
        "install the HSM's PKCS#11 library, or set token.module to its path (SoftHSM2: /usr/lib/softhsm/libsofthsm2.so, package softhsm2); now: {module}"
    );
    let token_fix = format!(
        "check token.token_label against the tokens the module sees (pkcs11-tool --module {module} --list-token-slots); SoftHSM2 reads its token directory from SOFTHSM2_CONF or /etc/softhsm/softhsm2.conf"
    );
    let login_fix = format!(
        "put the token's user PIN (not the SO PIN) in {source}; a locked PIN is reset with the SO PIN using the HSM's own tool"
    );
    let Some(t) = e.downcast_ref::<TokenError>() else {
        return if e.downcast_ref::<PinError>().is_some() {
            ("login", login_fix)
        } else {
            ("module", module_fix)
        };
    };
    match t {
        TokenError::Load { .. } | TokenError::Other(_) => ("module", module_fix),
        TokenError::TokenNotFound(_) | TokenError::AmbiguousToken { .. } => ("token", token_fix),
        TokenError::PinIncorrect | TokenError::PinLocked => ("login", login_fix),
        TokenError::Pkcs11 { function, .. } => {
            if function.contains("Initialize") {
                ("module", module_fix)
            } else if function.contains("Slot") || function.contains("TokenInfo") {
                ("token", token_fix)
            } else if function.contains("Session") || function.contains("Login") {
                ("login", login_fix)
            } else {
                (
                    "key",
                    format!("see the token's objects with: {list_objects}"),
                )
            }
        }
        TokenError::KeyNotFound(_) => (
            "key",
            format!(
                "generate the CA key and certificate with: {init} (or correct token.key_label / token.key_id)"
            ),
        ),
        TokenError::AmbiguousKey(_) => (
            "key",
            format!(
                "remove the extra objects (see them with: {list_objects}) or give token.key_id to choose one"
            ),
        ),
        TokenError::KeyUnsuitable { .. } => (
            "key",
            format!(
                "name a sign-only, non-extractable key of ca.key_type (token.key_label / token.key_id), or make one with `{init} --force` (a new CA key and certificate)"
            ),
        ),
        _ => (
            "key",
            format!("see the token's objects with: {list_objects}"),
        ),
    }
}

/// The CA certificate (and chain) loads, certifies the token key, and a
/// test signature through the signing threads verifies with it — the
/// start-up self-test of `serve`.
async fn certificate_checks(
    r: &mut Reporter,
    cfg: &Config,
    config_path: &Path,
    signer: Option<&(Arc<SignerPool>, CaKey)>,
) {
    let init = format!("hsmca init --config {}", config_path.display());
    let ca = match CaChain::load(&cfg.ca) {
        Ok(ca) => ca,
        Err(e) => {
            let fix = match &e {
                CaError::Missing(_) => format!("make the CA certificate with: {init}"),
                CaError::Read { .. } => {
                    "check the path in ca.certificate / ca.chain and that this user may read it"
                        .to_string()
                }
                _ => format!(
                    "restore the CA certificate made for the token key; `{init} --import-chain CHAIN` installs one an external root signed, `{init} --force` makes a new CA (key and certificate)"
                ),
            };
            r.fail("certificate", e.to_string(), fix);
            r.skip("signature", "needs the CA certificate");
            return;
        }
    };
    let subject = ca.issuing.tbs_certificate().subject().to_string();
    let until = humantime::format_rfc3339_seconds(ca.not_after);
    let Some((pool, key)) = signer else {
        r.skip(
            "certificate",
            &format!(
                "{subject} loads, but was not compared with the token key: the token checks failed"
            ),
        );
        r.skip("signature", "needs the CA key");
        return;
    };
    if let Err(e) = ca.check_key(&key.spki) {
        r.fail(
            "certificate",
            e.to_string(),
            format!(
                "restore the CA certificate made for this key (ca.certificate), or make a new CA with `{init} --force` (clients must then trust the new root)"
            ),
        );
        r.skip("signature", "the certificate is not the token key's");
        return;
    }
    let expired = ca.not_after < std::time::SystemTime::now();
    if expired {
        r.fail(
            "certificate",
            format!("{subject}: the chain expired at {until}"),
            format!(
                "renew the CA certificate: `{init} --force`, or import a new chain from your root"
            ),
        );
    } else {
        r.ok(
            "certificate",
            format!(
                "{subject} ({} in the chain) certifies the token key; valid until {until}",
                ca.chain_pem.len()
            ),
        );
    }
    match serve::self_test(pool, &ca).await {
        Ok(()) => r.ok(
            "signature",
            format!(
                "a token signature ({:?}) verified with the CA certificate",
                pool.scheme()
            ),
        ),
        Err(e) => r.fail(
            "signature",
            e.to_string(),
            "check ca.key_type, ca.rsa_padding and ca.digest against the key and the certificate",
        ),
    }
}

fn socket_check(r: &mut Reporter, cfg: &Config, user: Option<&str>) {
    let socket = &cfg.server.socket;
    let (uid, gid, who) = match user {
        Some(name) => match uzers::get_user_by_name(name) {
            Some(u) => (u.uid(), u.primary_group_id(), format!("user {name}")),
            None => {
                r.fail(
                    "socket",
                    format!("no user {name:?} on this host"),
                    "name the daemon's user with --user (the packaged unit runs as hsmca)",
                );
                return;
            }
        },
        None => (
            rustix::process::geteuid().as_raw(),
            rustix::process::getegid().as_raw(),
            "this user".to_string(),
        ),
    };
    let dir = socket
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    match socket::check_socket_dir_as(socket, uid, gid) {
        Ok(()) => r.ok(
            "socket",
            format!(
                "{}: only root and {who} can replace {}",
                dir.display(),
                socket.display()
            ),
        ),
        Err(e) => {
            let fix = match &e {
                SocketError::DirUnreadable { dir, .. } => format!(
                    "create {} for the daemon's user (systemd: RuntimeDirectory=hsmca makes /run/hsmca; by hand: install -d -m 0750 -o hsmca -g hsmca DIR), or run the check as that user or with --user",
                    dir.display()
                ),
                _ => "keep the socket in a directory owned by the daemon's user (or root) that no one else can write, e.g. /run/hsmca (RuntimeDirectory=hsmca); run the check as the daemon's user or with --user NAME".to_string(),
            };
            r.fail("socket", e.to_string(), fix);
        }
    }
}

fn store_check(r: &mut Reporter, cfg: &Config) {
    if let Ok(crate::config::Database::Postgres(url)) = cfg.state.database() {
        // The URL holds no password (state.database refuses one).
        r.ok(
            "store",
            format!(
                "PostgreSQL at {url}: the connection, the password and the schema version are \
                 checked when serve starts"
            ),
        );
        return;
    }
    let dir = &cfg.state.dir;
    match schema::inspect(dir) {
        Ok(SchemaState::Absent { path }) => match creatable(dir) {
            Ok(()) => r.ok(
                "store",
                format!(
                    "no store yet: serve creates {} (schema version {})",
                    path.display(),
                    schema::SCHEMA_VERSION
                ),
            ),
            Err(why) => r.fail(
                "store",
                format!("{} cannot be created: {why}", path.display()),
                format!(
                    "create {} for the daemon's user (systemd: StateDirectory=hsmca makes /var/lib/hsmca)",
                    dir.display()
                ),
            ),
        },
        Ok(SchemaState::Current { path }) => r.ok(
            "store",
            format!(
                "{}: schema version {}, this build's",
                path.display(),
                schema::SCHEMA_VERSION
            ),
        ),
        Ok(SchemaState::Older { path, version }) => r.ok(
            "store",
            format!(
                "{}: schema version {version}; serve migrates it to version {} at start-up (back it up first)",
                path.display(),
                schema::SCHEMA_VERSION
            ),
        ),
        Ok(SchemaState::Newer { path, version }) => r.fail(
            "store",
            format!(
                "{}: schema version {version} is newer than this build's ({}): a newer hsmca wrote it, and this one cannot start on it",
                path.display(),
                schema::SCHEMA_VERSION
            ),
            "run the newer hsmca again, or restore the backup of the store taken before the upgrade",
        ),
        Ok(SchemaState::Dirty { path, version }) => r.fail(
            "store",
            format!(
                "{}: migration {version} failed half-way; serve refuses to start on it",
                path.display()
            ),
            "restore the backup of the store taken before the upgrade",
        ),
        Err(e) => r.fail(
            "store",
            e.to_string(),
            format!(
                "run the check as the daemon's user, and check the permissions of {}",
                dir.display()
            ),
        ),
    }
}

/// Whether `dir` exists and is writable, or could be made in its nearest
/// existing ancestor, by this user.
fn creatable(dir: &Path) -> Result<(), String> {
    let existing = dir
        .ancestors()
        .find(|a| a.exists())
        .unwrap_or(Path::new("/"));
    rustix::fs::access(existing, rustix::fs::Access::WRITE_OK)
        .map_err(|e| format!("{} is not writable by this user ({e})", existing.display()))
}
