//! `hsmca request …`: certificate requests that the daemon keeps issued and
//! renewed. `request watch --out-dir` is the mode a proxy sidecar runs in:
//! it keeps `cert.pem` and `chain.pem` current, reconnecting when the daemon
//! restarts.

use std::{
    borrow::Cow,
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use clap::{Args, Subcommand};
use serde::Serialize;
use tokio_stream::StreamExt;
use tonic::{Code, transport::Channel};

use super::{
    CliResult, Connection,
    client::{connect, socket_path, status_error, write_out},
    records::parse_tag,
};
use crate::proto::{
    CertificateRequest, CertificateRequestSpec, CreateCertificateRequestRequest,
    DeleteCertificateRequestRequest, GetCaCertificatesRequest, GetCertificateRequestRequest,
    ListCertificateRequestsRequest, RotateKeysRequest, UpdateCertificateRequestRequest,
    WatchCertificateRequestRequest, certificate_authority_client::CertificateAuthorityClient,
    certificate_request_status::State, certificate_requests_client::CertificateRequestsClient,
};
use crate::time::rfc3339;

const MAX_REPLY_BYTES: usize = 64 << 20;

#[derive(Subcommand, Debug)]
pub enum RequestCommand {
    /// File a CSR; the daemon issues for it and, unless --no-auto-renew,
    /// renews it before it expires.
    Create(CreateArgs),
    /// Print one certificate request.
    Get(IdArgs),
    /// List certificate requests, newest first.
    List(ListArgs),
    /// Change a request: a new CSR re-issues and revokes the earlier
    /// certificates; other changes apply from the next renewal.
    Update(UpdateArgs),
    /// Delete a request and revoke its certificates.
    Delete(IdArgs),
    /// Ask the owner to rotate keys (answered by `update --csr` with a new key).
    RotateKeys(IdArgs),
    /// Print every change of a request; with --out-dir keep cert.pem and
    /// chain.pem current.
    Watch(WatchArgs),
}

#[derive(Args, Debug)]
pub struct IdArgs {
    #[command(flatten)]
    pub conn: Connection,
    /// The certificate request's id.
    pub id: String,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    #[command(flatten)]
    pub conn: Connection,
    /// PEM CSR; the names come from it.
    #[arg(long)]
    pub csr: PathBuf,
    /// Issue once and never renew.
    #[arg(long)]
    pub no_auto_renew: bool,
    /// Lifetime of each certificate, e.g. 12h (default: the profile's).
    #[arg(long)]
    pub duration: Option<String>,
    /// client (default) or server.
    #[arg(long)]
    pub profile: Option<String>,
    #[arg(long)]
    pub description: Option<String>,
    /// A label as key=value; repeatable.
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// UUID that makes retrying this exact create safe.
    #[arg(long)]
    pub request_id: Option<String>,
    /// Return at once instead of waiting for the first certificate.
    #[arg(long)]
    pub no_wait: bool,
    /// Write the first certificate here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    pub conn: Connection,
    /// A filter: `state=FINISHED`, `label:KEY=VALUE`, joined by spaces.
    #[arg(long, default_value = "")]
    pub filter: String,
    #[arg(long)]
    pub page_size: Option<i32>,
    #[arg(long)]
    pub page_token: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct UpdateArgs {
    #[command(flatten)]
    pub conn: Connection,
    pub id: String,
    /// A new CSR (forces a re-issue; clears a rotate-keys request).
    #[arg(long)]
    pub csr: Option<PathBuf>,
    #[arg(long)]
    pub auto_renew: Option<bool>,
    #[arg(long)]
    pub duration: Option<String>,
    #[arg(long)]
    pub profile: Option<String>,
    #[arg(long)]
    pub description: Option<String>,
    /// Replace the labels with these (key=value, repeatable).
    #[arg(long = "label")]
    pub labels: Vec<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct WatchArgs {
    #[command(flatten)]
    pub conn: Connection,
    pub id: String,
    /// Keep DIR/cert.pem (the newest certificate) and DIR/chain.pem (its
    /// issuers up to the root) current, each replaced atomically.
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
    /// One JSON object per change instead of a text line.
    #[arg(long)]
    pub json: bool,
}

async fn clients(
    conn: &Connection,
) -> CliResult<(
    CertificateRequestsClient<Channel>,
    CertificateAuthorityClient<Channel>,
)> {
    let channel = connect(&socket_path(conn)?).await?;
    Ok((
        CertificateRequestsClient::new(channel.clone()).max_decoding_message_size(MAX_REPLY_BYTES),
        CertificateAuthorityClient::new(channel).max_decoding_message_size(MAX_REPLY_BYTES),
    ))
}

fn read(path: &Path) -> CliResult<String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()).into())
}

fn duration_arg(d: Option<&str>) -> CliResult<Option<prost_types::Duration>> {
    d.map(|d| -> CliResult<prost_types::Duration> {
        let d = humantime::parse_duration(d).map_err(|e| format!("--duration {d:?}: {e}"))?;
        Ok(prost_types::Duration::try_from(d).map_err(|e| format!("--duration: {e}"))?)
    })
    .transpose()
}

fn labels_arg(labels: &[String]) -> CliResult<BTreeMap<String, String>> {
    Ok(labels
        .iter()
        .map(|l| parse_tag(l, "--label"))
        .collect::<Result<_, _>>()?)
}

pub fn state_name(state: i32) -> String {
    State::try_from(state).map_or_else(|_| state.to_string(), |s| s.as_str_name().to_owned())
}

/// The request as the API shows it, for `--json`.
#[derive(Serialize, Debug)]
pub struct RequestJson {
    pub id: String,
    pub generation: i64,
    pub profile: String,
    pub cert_duration: Option<String>,
    pub auto_renew: bool,
    pub rotate_keys: bool,
    pub description: String,
    pub labels: BTreeMap<String, String>,
    pub observed_generation: i64,
    pub state: String,
    pub error: String,
    pub certificates: Vec<IssuedJson>,
    pub signed_certificate: String,
    pub signing_root_ca: String,
    pub create_time: Option<String>,
    pub update_time: Option<String>,
}

#[derive(Serialize, Debug)]
pub struct IssuedJson {
    pub serial_number: String,
    pub not_before: Option<String>,
    pub expire_time: Option<String>,
}

impl From<&CertificateRequest> for RequestJson {
    fn from(r: &CertificateRequest) -> Self {
        let time = |t: Option<&prost_types::Timestamp>| t.map(|t| rfc3339(t, true));
        let spec = r.spec.clone().unwrap_or_default();
        let status = r.status.clone().unwrap_or_default();
        RequestJson {
            id: r.id.clone(),
            generation: r.generation,
            profile: spec.profile,
            cert_duration: spec
                .cert_duration
                .and_then(|d| Duration::try_from(d).ok())
                .map(|d| humantime::format_duration(d).to_string()),
            auto_renew: spec.auto_renew.unwrap_or(true),
            rotate_keys: spec.rotate_keys,
            description: spec.description,
            labels: spec.labels.into_iter().collect(),
            observed_generation: status.observed_generation,
            state: state_name(status.state),
            error: status.error.clone(),
            certificates: status
                .certificates
                .iter()
                .map(|c| IssuedJson {
                    serial_number: c.serial_number.clone(),
                    not_before: time(c.not_before.as_ref()),
                    expire_time: time(c.expire_time.as_ref()),
                })
                .collect(),
            signed_certificate: status.signed_certificate,
            signing_root_ca: status.signing_root_ca,
            create_time: time(r.create_time.as_ref()),
            update_time: time(r.update_time.as_ref()),
        }
    }
}

fn printable(s: &str) -> Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(s.chars().flat_map(char::escape_default).collect())
}

/// A request as a `key: value` block.
pub fn request_block(r: &CertificateRequest) -> String {
    let spec = r.spec.clone().unwrap_or_default();
    let status = r.status.clone().unwrap_or_default();
    let mut out = String::new();
    let mut field =
        |k: &str, v: &str| out.push_str(&format!("{:<20}{}\n", format!("{k}:"), printable(v)));
    field("id", &r.id);
    field("state", &state_name(status.state));
    field(
        "generation",
        &format!(
            "{} (status describes {})",
            r.generation, status.observed_generation
        ),
    );
    if !status.error.is_empty() {
        field("error", &status.error);
    }
    field("profile", &spec.profile);
    field(
        "auto renew",
        if spec.auto_renew.unwrap_or(true) {
            "yes"
        } else {
            "no"
        },
    );
    if spec.rotate_keys {
        field("rotate keys", "requested: update with a CSR for a new key");
    }
    if let Some(d) = spec.cert_duration.and_then(|d| Duration::try_from(d).ok()) {
        field("duration", &humantime::format_duration(d).to_string());
    }
    if !spec.description.is_empty() {
        field("description", &spec.description);
    }
    for (k, v) in &spec.labels {
        field("label", &format!("{k}={v}"));
    }
    for c in &status.certificates {
        let exp = c
            .expire_time
            .as_ref()
            .map_or_else(|| "-".to_owned(), |t| rfc3339(t, false));
        field("certificate", &format!("{} expires {exp}", c.serial_number));
    }
    if let Some(t) = &r.update_time {
        field("updated", &rfc3339(t, false));
    }
    out
}

fn print(r: &CertificateRequest, json: bool) -> CliResult {
    if json {
        let mut s = serde_json::to_string_pretty(&RequestJson::from(r))?;
        s.push('\n');
        write_out(None, &s)
    } else {
        write_out(None, &request_block(r))
    }
}

pub async fn run(cmd: RequestCommand) -> CliResult {
    match cmd {
        RequestCommand::Create(a) => create(a).await,
        RequestCommand::Get(a) => {
            let (mut c, _) = clients(&a.conn).await?;
            let r = c
                .get_certificate_request(GetCertificateRequestRequest { id: a.id })
                .await
                .map_err(status_error)?
                .into_inner();
            print(&r, a.json)
        }
        RequestCommand::List(a) => list(a).await,
        RequestCommand::Update(a) => update(a).await,
        RequestCommand::Delete(a) => {
            let (mut c, _) = clients(&a.conn).await?;
            c.delete_certificate_request(DeleteCertificateRequestRequest { id: a.id.clone() })
                .await
                .map_err(status_error)?;
            eprintln!("deleted {}; its certificates are revoked", a.id);
            Ok(())
        }
        RequestCommand::RotateKeys(a) => {
            let (mut c, _) = clients(&a.conn).await?;
            let r = c
                .rotate_keys(RotateKeysRequest { id: a.id })
                .await
                .map_err(status_error)?
                .into_inner();
            print(&r, a.json)
        }
        RequestCommand::Watch(a) => watch(a).await,
    }
}

async fn create(a: CreateArgs) -> CliResult {
    let spec = CertificateRequestSpec {
        pem_csr: read(&a.csr)?,
        profile: a.profile.clone().unwrap_or_default(),
        cert_duration: duration_arg(a.duration.as_deref())?,
        auto_renew: Some(!a.no_auto_renew),
        rotate_keys: false,
        description: a.description.clone().unwrap_or_default(),
        labels: labels_arg(&a.labels)?,
    };
    let (mut c, _) = clients(&a.conn).await?;
    let mut r = c
        .create_certificate_request(CreateCertificateRequestRequest {
            spec: Some(spec),
            request_id: a.request_id.clone().unwrap_or_default(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    if !a.no_wait {
        let mut stream = c
            .watch_certificate_request(WatchCertificateRequestRequest { id: r.id.clone() })
            .await
            .map_err(status_error)?
            .into_inner();
        while let Some(next) = stream.next().await {
            r = next.map_err(status_error)?;
            if r.status
                .as_ref()
                .is_some_and(|s| s.state() != State::Pending)
            {
                break;
            }
        }
    }
    let status = r.status.clone().unwrap_or_default();
    if let Some(out) = &a.out {
        if status.signed_certificate.is_empty() {
            return Err(format!("request {} has no certificate yet", r.id).into());
        }
        write_out(Some(out), &status.signed_certificate)?;
    }
    print(&r, a.json)?;
    if status.state() == State::Failed {
        return Err(format!("request {} FAILED: {}", r.id, status.error).into());
    }
    Ok(())
}

async fn list(a: ListArgs) -> CliResult {
    let (mut c, _) = clients(&a.conn).await?;
    let resp = c
        .list_certificate_requests(ListCertificateRequestsRequest {
            page_size: a.page_size.unwrap_or_default(),
            page_token: a.page_token.clone().unwrap_or_default(),
            filter: a.filter.clone(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    if a.json {
        #[derive(Serialize)]
        struct Page {
            certificate_requests: Vec<RequestJson>,
            next_page_token: String,
        }
        let mut s = serde_json::to_string_pretty(&Page {
            certificate_requests: resp
                .certificate_requests
                .iter()
                .map(RequestJson::from)
                .collect(),
            next_page_token: resp.next_page_token.clone(),
        })?;
        s.push('\n');
        write_out(None, &s)?;
    } else if resp.certificate_requests.is_empty() {
        eprintln!("no certificate requests");
    } else {
        let mut out = format!(
            "{:<36}  {:<8}  {:>4}  {:<25}  {}\n",
            "ID", "STATE", "GEN", "EXPIRES", "SERIAL"
        );
        for r in &resp.certificate_requests {
            let status = r.status.clone().unwrap_or_default();
            let last = status.certificates.last();
            out.push_str(&format!(
                "{:<36}  {:<8}  {:>4}  {:<25}  {}\n",
                printable(&r.id),
                state_name(status.state),
                r.generation,
                last.and_then(|c| c.expire_time.as_ref())
                    .map_or_else(|| "-".to_owned(), |t| rfc3339(t, false)),
                last.map_or("-", |c| c.serial_number.as_str()),
            ));
        }
        write_out(None, &out)?;
    }
    if !resp.next_page_token.is_empty() {
        eprintln!("more: run again with --page-token {}", resp.next_page_token);
    }
    Ok(())
}

async fn update(a: UpdateArgs) -> CliResult {
    let spec = CertificateRequestSpec {
        pem_csr: a.csr.as_deref().map(read).transpose()?.unwrap_or_default(),
        profile: a.profile.clone().unwrap_or_default(),
        cert_duration: duration_arg(a.duration.as_deref())?,
        auto_renew: a.auto_renew,
        rotate_keys: false,
        description: a.description.clone().unwrap_or_default(),
        labels: labels_arg(&a.labels)?,
    };
    let (mut c, _) = clients(&a.conn).await?;
    let r = c
        .update_certificate_request(UpdateCertificateRequestRequest {
            id: a.id,
            spec: Some(spec),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    print(&r, a.json)
}

/// One line per change, for a person or a log.
fn change_line(r: &CertificateRequest) -> String {
    let status = r.status.clone().unwrap_or_default();
    let spec = r.spec.clone().unwrap_or_default();
    let mut line = format!(
        "{} {} generation {}",
        r.update_time
            .as_ref()
            .map_or_else(|| "-".to_owned(), |t| rfc3339(t, false)),
        state_name(status.state),
        r.generation
    );
    if let Some(c) = status.certificates.last() {
        line.push_str(&format!(" serial {}", c.serial_number));
    }
    if spec.rotate_keys {
        line.push_str(" rotate-keys");
    }
    if !status.error.is_empty() {
        line.push_str(&format!(" error: {}", printable(&status.error)));
    }
    line.push('\n');
    line
}

/// Writes the newest certificate and its chain: chain.pem first, so that a
/// reader that sees the new cert.pem also sees its chain; each file is
/// replaced by rename, so neither is ever read half-written.
fn write_pair(dir: &Path, cert: &str, chain: &str) -> CliResult {
    crate::ca::write_atomic(&dir.join("chain.pem"), chain.as_bytes())?;
    crate::ca::write_atomic(&dir.join("cert.pem"), cert.as_bytes())?;
    Ok(())
}

async fn watch(a: WatchArgs) -> CliResult {
    if let Some(dir) = &a.out_dir {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let mut written = String::new();
    let mut delay = Duration::from_millis(200);
    loop {
        match watch_once(&a, &mut written).await {
            Ok(()) => return Ok(()),
            Err(WatchEnd::Fatal(e)) => return Err(e),
            Err(WatchEnd::Retry(why)) => {
                eprintln!("watch interrupted ({why}); reconnecting in {delay:?}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

enum WatchEnd {
    /// The daemon is away (restarting): try again.
    Retry(String),
    Fatal(Box<dyn std::error::Error + Send + Sync>),
}

fn classify(s: tonic::Status) -> WatchEnd {
    match s.code() {
        Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled => {
            WatchEnd::Retry(format!(
                "{}: {}",
                crate::server::errors::code_name(s.code()),
                s.message()
            ))
        }
        _ => WatchEnd::Fatal(status_error(s)),
    }
}

async fn watch_once(a: &WatchArgs, written: &mut String) -> Result<(), WatchEnd> {
    let (mut c, mut ca) = clients(&a.conn)
        .await
        .map_err(|e| WatchEnd::Retry(e.to_string()))?;
    let mut stream = c
        .watch_certificate_request(WatchCertificateRequestRequest { id: a.id.clone() })
        .await
        .map_err(classify)?
        .into_inner();
    while let Some(next) = stream.next().await {
        let r = next.map_err(classify)?;
        let out = if a.json {
            serde_json::to_string(&RequestJson::from(&r))
                .map(|s| s + "\n")
                .map_err(|e| WatchEnd::Fatal(e.into()))?
        } else {
            change_line(&r)
        };
        write_out(None, &out).map_err(WatchEnd::Fatal)?;
        let cert = r
            .status
            .as_ref()
            .map(|s| s.signed_certificate.clone())
            .unwrap_or_default();
        if let Some(dir) = &a.out_dir
            && !cert.is_empty()
            && cert != *written
        {
            let chain = ca
                .get_ca_certificates(GetCaCertificatesRequest {})
                .await
                .map_err(classify)?
                .into_inner()
                .pem_certificate_chain
                .concat();
            write_pair(dir, &cert, &chain).map_err(WatchEnd::Fatal)?;
            *written = cert;
        }
    }
    Err(WatchEnd::Retry("the stream ended".into()))
}
