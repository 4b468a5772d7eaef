//! Client commands: talk to a running daemon over its Unix socket.

use std::path::{Path, PathBuf};

use super::{CliResult, Connection, IssueArgs};
pub use crate::client::{connect, status_error, write_out};
use crate::{
    config::{Config, ServerConfig},
    proto::{
        GenerateClientCertificateRequest, GetCaCertificatesRequest,
        certificate_authority_client::CertificateAuthorityClient,
    },
};

/// The socket to use: `--socket`/`HSMCA_SOCKET`, else the config's
/// `server.socket`, else the default.
pub fn socket_path(conn: &Connection) -> CliResult<PathBuf> {
    if let Some(s) = &conn.socket {
        return Ok(s.clone());
    }
    if let Some(c) = &conn.config {
        return Ok(Config::load(c)?.server.socket);
    }
    Ok(ServerConfig::default().socket)
}

fn read(path: &Path) -> CliResult<String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()).into())
}

pub async fn issue(args: IssueArgs) -> CliResult {
    let socket = socket_path(&args.conn)?;
    let mut tags = std::collections::BTreeMap::new();
    for t in &args.tags {
        let (k, v) = t
            .split_once('=')
            .ok_or_else(|| format!("--tag {t:?}: expected key=value"))?;
        tags.insert(k.to_owned(), v.to_owned());
    }
    let cert_duration = match &args.duration {
        Some(d) => {
            let d = humantime::parse_duration(d).map_err(|e| format!("--duration {d:?}: {e}"))?;
            Some(prost_types::Duration::try_from(d).map_err(|e| format!("--duration: {e}"))?)
        }
        None => None,
    };
    let req = GenerateClientCertificateRequest {
        request_id: args.request_id.clone().unwrap_or_default(),
        public_key: args
            .public_key
            .as_deref()
            .map(read)
            .transpose()?
            .unwrap_or_default(),
        pem_csr: args
            .csr
            .as_deref()
            .map(read)
            .transpose()?
            .unwrap_or_default(),
        cert_duration,
        profile: args.profile.clone().unwrap_or_default(),
        common_name: args.cn.clone().unwrap_or_default(),
        dns_names: args.dns.clone(),
        uri_sans: args.uri.clone(),
        ip_addresses: args.ip.clone(),
        description: args.description.clone().unwrap_or_default(),
        tags,
    };
    let mut client = CertificateAuthorityClient::new(connect(&socket).await?);
    let cert = client
        .generate_client_certificate(req)
        .await
        .map_err(status_error)?
        .into_inner();
    if args.json {
        if let Some(out) = &args.out {
            write_out(Some(out), &cert.pem_certificate)?;
        }
        write_out(None, &super::records::issued_json(&cert)?)?;
    } else {
        write_out(args.out.as_deref(), &cert.pem_certificate)?;
    }
    if let Some(chain) = &args.chain {
        write_out(Some(chain), &cert.pem_certificate_chain.concat())?;
    }
    let expires = cert
        .expire_time
        .and_then(|t| std::time::SystemTime::try_from(t).ok())
        .map(|t| humantime::format_rfc3339_seconds(t).to_string())
        .unwrap_or_default();
    eprintln!(
        "issued {} serial {} subject {:?} expires {}",
        cert.certificate_id, cert.serial_number, cert.subject, expires
    );
    Ok(())
}

pub async fn ca(conn: Connection, out: Option<PathBuf>) -> CliResult {
    let socket = socket_path(&conn)?;
    let mut client = CertificateAuthorityClient::new(connect(&socket).await?);
    let resp = client
        .get_ca_certificates(GetCaCertificatesRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    write_out(out.as_deref(), &resp.pem_certificate_chain.concat())
}
