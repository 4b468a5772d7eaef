//! `hsmca workload`: a client of the workload socket (`fetch`, what
//! `spire-agent api fetch x509` does) and a view of the registration
//! entries (`entries`).

use std::{
    io::Write,
    path::{Path, PathBuf},
    time::Duration,
};

use clap::{Args, Subcommand};
use der::{Decode, EncodePem, pem::LineEnding};
use tokio_stream::StreamExt;
use tonic::{Code, Request};
use x509_cert::Certificate;

use super::CliResult;
use crate::{
    client::{connect, status_error, write_out},
    config::Config,
    proto::workload::{
        X509svidRequest, X509svidResponse, spiffe_workload_api_client::SpiffeWorkloadApiClient,
    },
    server::workload_api::SECURITY_HEADER,
};

#[derive(Subcommand, Debug)]
pub enum WorkloadCommand {
    /// Fetch this process's X509-SVIDs from the workload socket: print
    /// them, or write svid.pem, svid.key (0600) and bundle.pem.
    Fetch(FetchArgs),
    /// List the registration entries of a configuration and the local
    /// users each one gives an identity.
    Entries {
        #[arg(long, short)]
        config: PathBuf,
    },
}

#[derive(Args, Debug)]
pub struct FetchArgs {
    /// The workload socket (also `SPIFFE_ENDPOINT_SOCKET`, `unix://` or a path).
    #[arg(long, env = "SPIFFE_ENDPOINT_SOCKET")]
    pub socket: PathBuf,
    /// Write svid.pem (the chain), svid.key and bundle.pem here; further
    /// SVIDs as svid.1.pem, svid.1.key, …
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
    /// Print the SVIDs (certificates and bundle, never the key) as JSON.
    #[arg(long)]
    pub json: bool,
    /// Keep running and rewrite the files at every rotation.
    #[arg(long, requires = "out_dir")]
    pub watch: bool,
}

pub async fn run(cmd: WorkloadCommand) -> CliResult {
    match cmd {
        WorkloadCommand::Fetch(a) => fetch(a).await,
        WorkloadCommand::Entries { config } => entries(&config),
    }
}

fn socket_path(p: &Path) -> PathBuf {
    let s = p.to_string_lossy();
    match s.strip_prefix("unix://") {
        Some(rest) => PathBuf::from(rest),
        None => p.to_owned(),
    }
}

async fn fetch(a: FetchArgs) -> CliResult {
    if let Some(dir) = &a.out_dir {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let socket = socket_path(&a.socket);
    let mut delay = Duration::from_millis(200);
    loop {
        let channel = connect(&socket).await?;
        let mut client = SpiffeWorkloadApiClient::new(channel);
        let mut req = Request::new(X509svidRequest {});
        req.metadata_mut().insert(
            SECURITY_HEADER,
            tonic::metadata::MetadataValue::from_static("true"),
        );
        let mut stream = match client.fetch_x509svid(req).await {
            Ok(s) => s.into_inner(),
            Err(s) if a.watch && s.code() == Code::Unavailable => {
                eprintln!("{}; retrying in {delay:?}", status_error(s));
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
                continue;
            }
            Err(s) => return Err(status_error(s)),
        };
        while let Some(msg) = stream.next().await {
            let resp = msg.map_err(status_error)?;
            show(&a, &resp)?;
            if !a.watch {
                return Ok(());
            }
        }
        if !a.watch {
            return Err("the workload socket closed the stream".into());
        }
        eprintln!("the stream ended; reconnecting in {delay:?}");
        tokio::time::sleep(delay).await;
    }
}

/// DER certificates, concatenated, as PEM blocks.
fn pem_certs(der: &[u8]) -> CliResult<(String, Vec<Certificate>)> {
    let mut rest = der;
    let mut pem = String::new();
    let mut certs = Vec::new();
    while !rest.is_empty() {
        let (cert, tail) = Certificate::from_der_partial(rest)?;
        pem.push_str(&cert.to_pem(LineEnding::LF)?);
        certs.push(cert);
        rest = tail;
    }
    Ok((pem, certs))
}

fn key_pem(pkcs8: &[u8]) -> CliResult<zeroize::Zeroizing<String>> {
    Ok(zeroize::Zeroizing::new(
        der::pem::encode_string("PRIVATE KEY", LineEnding::LF, pkcs8)
            .map_err(|e| format!("cannot encode the key: {e}"))?,
    ))
}

fn show(a: &FetchArgs, resp: &X509svidResponse) -> CliResult {
    let mut json = Vec::new();
    for (i, svid) in resp.svids.iter().enumerate() {
        let (chain_pem, certs) = pem_certs(&svid.x509_svid)?;
        let (bundle_pem, _) = pem_certs(&svid.bundle)?;
        let not_after = certs
            .first()
            .map(|c| {
                crate::time::rfc3339_secs(crate::time::unix_secs(
                    c.tbs_certificate().validity().not_after.to_system_time(),
                ))
            })
            .unwrap_or_default();
        if let Some(dir) = &a.out_dir {
            let suffix = if i == 0 {
                String::new()
            } else {
                format!(".{i}")
            };
            crate::ca::write_atomic(&dir.join(format!("svid{suffix}.pem")), chain_pem.as_bytes())?;
            crate::ca::write_atomic(
                &dir.join(format!("bundle{suffix}.pem")),
                bundle_pem.as_bytes(),
            )?;
            write_private(
                &dir.join(format!("svid{suffix}.key")),
                &key_pem(&svid.x509_svid_key)?,
            )?;
        }
        if a.json {
            json.push(serde_json::json!({
                "spiffe_id": svid.spiffe_id,
                "hint": svid.hint,
                "not_after": not_after,
                "svid_pem": chain_pem,
                "bundle_pem": bundle_pem,
            }));
        } else if a.out_dir.is_none() {
            write_out(
                None,
                &format!(
                    "SPIFFE ID: {}\nHint: {}\nExpires: {not_after}\n{chain_pem}Bundle:\n{bundle_pem}",
                    svid.spiffe_id, svid.hint
                ),
            )?;
        } else {
            write_out(
                None,
                &format!(
                    "{} (expires {not_after}) written to {}\n",
                    svid.spiffe_id,
                    a.out_dir
                        .as_deref()
                        .map(|d| d.display().to_string())
                        .unwrap_or_default()
                ),
            )?;
        }
    }
    if a.json {
        write_out(None, &(serde_json::Value::Array(json).to_string() + "\n"))?;
    }
    Ok(())
}

/// A private key file: mode 0600 from its creation, replaced atomically.
fn write_private(path: &Path, text: &str) -> CliResult {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .map_err(|e| format!("cannot write in {}: {e}", dir.display()))?;
    tmp.write_all(text.as_bytes())?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(())
}

fn entries(config: &Path) -> CliResult {
    let cfg = Config::load(config)?;
    let w = &cfg.workload;
    let mut out = String::new();
    match &w.socket {
        Some(s) => out.push_str(&format!(
            "workload socket {} (trust domain {})\n",
            s.display(),
            w.trust_domain
        )),
        None => out.push_str("the workload endpoint is off (workload.socket is not set)\n"),
    }
    let compiled = crate::workload::entries::Entries::compile(w);
    let users: Vec<uzers::User> = unsafe_free_users();
    for e in &compiled.list {
        let c = &e.config;
        let mut sel = Vec::new();
        if let Some(v) = c.uid {
            sel.push(format!("uid={v}"));
        }
        if let Some(v) = c.gid {
            sel.push(format!("gid={v}"));
        }
        if let Some(v) = &c.user {
            sel.push(format!("user={v}"));
        }
        if let Some(v) = &c.group {
            sel.push(format!("group={v}"));
        }
        if let Some(v) = &c.exe {
            sel.push(format!("exe={}", v.display()));
        }
        if let Some(v) = &c.unit {
            sel.push(format!("unit={v}"));
        }
        let sel = if sel.is_empty() {
            "every caller".to_owned()
        } else {
            sel.join(" ")
        };
        out.push_str(&format!(
            "[{}] {sel} -> {} ttl {} key {}{}{}\n",
            e.index,
            c.spiffe_id,
            humantime::format_duration(c.ttl()),
            c.key_type.name(),
            if c.hint.is_empty() { "" } else { " hint " },
            c.hint
        ));
        let mut matched = 0;
        for u in &users {
            let attrs = crate::workload::attest::Attributes {
                uid: u.uid(),
                gid: u.primary_group_id(),
                user: Some(u.name().to_string_lossy().into_owned()),
                groups: uzers::get_user_groups(u.name(), u.primary_group_id())
                    .unwrap_or_default()
                    .iter()
                    .map(|g| g.name().to_string_lossy().into_owned())
                    .collect(),
                exe: c.exe.clone(),
                unit: c.unit.clone(),
            };
            if crate::workload::entries::selects(c, &attrs)
                && let Some(id) = crate::workload::entries::render(&c.spiffe_id, &attrs)
            {
                matched += 1;
                if matched <= 20 {
                    out.push_str(&format!(
                        "    {} (uid {}): {id}\n",
                        attrs.user.as_deref().unwrap_or("?"),
                        attrs.uid
                    ));
                }
            }
        }
        if matched > 20 {
            out.push_str(&format!("    … and {} more local users\n", matched - 20));
        }
        if matched == 0 {
            out.push_str("    no local user matches\n");
        }
    }
    write_out(None, &out)
}

/// Every user of the user database.
fn unsafe_free_users() -> Vec<uzers::User> {
    // SAFETY-free: uzers::all_users is an unsafe fn (getpwent is not
    // thread-safe), so the list comes from getent instead.
    let Ok(out) = std::process::Command::new("getent").arg("passwd").output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(':').nth(2)?.parse::<u32>().ok())
        .filter_map(uzers::get_user_by_uid)
        .collect()
}
