//! Client commands for the certificate records a daemon keeps: `get`, `list`,
//! `tag`, `revoke` and `crl`.
//!
//! Every formatting step is a pure function (filter strings, reason names,
//! the text block, the table, the JSON shapes) so it can be tested without a
//! daemon (format.rs); the command functions here only call the RPC and print.

mod format;

pub use self::format::*;

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use tonic::transport::Channel;

use super::{
    CliResult, Connection,
    client::{connect, socket_path, status_error, write_out},
};
use crate::proto::{
    ClientCertificate, DeleteClientCertificateRequest, GetClientCertificateRequest, GetCrlRequest,
    ListClientCertificatesRequest, UpdateClientCertificateRequest,
    certificate_authority_client::CertificateAuthorityClient,
};
use crate::revocation::normalize_reason;

/// Replies can be large (a page of 1000 records with their chains, a long
/// CRL): allow more than tonic's default 4 MiB.
const MAX_REPLY_BYTES: usize = 64 << 20;

#[derive(Args, Debug)]
pub struct GetArgs {
    #[command(flatten)]
    pub conn: Connection,
    /// The certificate's id.
    pub id: String,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// A certificate state, as `list --state` takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StateArg {
    Active,
    Revoked,
    Expired,
}

impl StateArg {
    /// The name the filter grammar (and the proto enum) uses.
    pub fn filter_name(self) -> &'static str {
        match self {
            StateArg::Active => "ACTIVE",
            StateArg::Revoked => "REVOKED",
            StateArg::Expired => "EXPIRED",
        }
    }
}

#[derive(Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    pub conn: Connection,
    /// Only certificates in this state.
    #[arg(long, value_enum, ignore_case = true)]
    pub state: Option<StateArg>,
    /// Only certificates with this tag; repeatable (all must match).
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    pub tags: Vec<String>,
    /// Certificates per page (the daemon's default is 50, at most 1000).
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..))]
    pub page_size: Option<i32>,
    /// Start at this page, from a previous `list`.
    #[arg(long)]
    pub page_token: Option<String>,
    /// Fetch every page, not just one.
    #[arg(long)]
    pub all: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct TagArgs {
    #[command(flatten)]
    pub conn: Connection,
    /// The certificate's id.
    pub id: String,
    /// Tags to set, merged into the existing ones; an empty VALUE removes the
    /// tag.
    #[arg(value_name = "KEY=VALUE")]
    pub tags: Vec<String>,
    /// Remove this tag; repeatable.
    #[arg(long, value_name = "KEY")]
    pub remove: Vec<String>,
    /// Replace the description ("" clears it).
    #[arg(long)]
    pub description: Option<String>,
    /// Print the updated record as JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct RevokeArgs {
    #[command(flatten)]
    pub conn: Connection,
    /// The certificate's id.
    pub id: String,
    /// RFC 5280 reason: unspecified, keyCompromise, caCompromise,
    /// affiliationChanged, superseded, cessationOfOperation,
    /// privilegeWithdrawn (any case; key-compromise works too).
    #[arg(long, value_parser = normalize_reason)]
    pub reason: Option<&'static str>,
}

#[derive(Args, Debug)]
pub struct CrlArgs {
    #[command(flatten)]
    pub conn: Connection,
    /// Write the PEM CRL here instead of standard output.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

async fn client(conn: &Connection) -> CliResult<CertificateAuthorityClient<Channel>> {
    let socket = socket_path(conn)?;
    Ok(CertificateAuthorityClient::new(connect(&socket).await?)
        .max_decoding_message_size(MAX_REPLY_BYTES))
}

fn print_record(c: &ClientCertificate, json: bool) -> CliResult {
    let text = if json {
        record_json(c)?
    } else {
        record_block(c)
    };
    write_out(None, &text)
}

pub async fn get(args: GetArgs) -> CliResult {
    let mut client = client(&args.conn).await?;
    let cert = client
        .get_client_certificate(GetClientCertificateRequest {
            certificate_id: args.id,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    print_record(&cert, args.json)
}

pub async fn list(args: ListArgs) -> CliResult {
    let tags = args
        .tags
        .iter()
        .map(|t| parse_tag(t, "--tag"))
        .collect::<Result<Vec<_>, _>>()?;
    let filter = build_filter(args.state, &tags);
    let mut client = client(&args.conn).await?;
    let mut certs = Vec::new();
    let mut page_token = args.page_token.clone().unwrap_or_default();
    let next = loop {
        let resp = client
            .list_client_certificates(ListClientCertificatesRequest {
                page_size: args.page_size.unwrap_or_default(),
                page_token: page_token.clone(),
                filter: filter.clone(),
            })
            .await
            .map_err(status_error)?
            .into_inner();
        certs.extend(resp.client_certificates);
        if !args.all || resp.next_page_token.is_empty() {
            break resp.next_page_token;
        }
        if resp.next_page_token == page_token {
            return Err("the daemon returned the same page token twice".into());
        }
        page_token = resp.next_page_token;
    };
    if args.json {
        write_out(None, &list_json(&certs, &next)?)?;
    } else if certs.is_empty() {
        eprintln!("no certificates");
    } else {
        write_out(None, &record_table(&certs))?;
    }
    if !next.is_empty() {
        eprintln!("more: run again with --page-token {next}");
    }
    Ok(())
}

pub async fn tag(args: TagArgs) -> CliResult {
    if args.tags.is_empty() && args.remove.is_empty() && args.description.is_none() {
        return Err("nothing to change: give KEY=VALUE tags, --remove KEY or --description".into());
    }
    let tags = update_tags(&args.tags, &args.remove)?;
    let mut client = client(&args.conn).await?;
    let cert = client
        .update_client_certificate(UpdateClientCertificateRequest {
            certificate_id: args.id,
            description: args.description,
            tags,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    print_record(&cert, args.json)
}

pub async fn revoke(args: RevokeArgs) -> CliResult {
    let mut client = client(&args.conn).await?;
    client
        .delete_client_certificate(DeleteClientCertificateRequest {
            certificate_id: args.id.clone(),
            reason: args.reason.unwrap_or_default().to_owned(),
        })
        .await
        .map_err(status_error)?;
    write_out(None, &format!("revoked {}\n", args.id))
}

pub async fn crl(args: CrlArgs) -> CliResult {
    let mut client = client(&args.conn).await?;
    let resp = client
        .get_crl(GetCrlRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    write_out(args.out.as_deref(), &resp.pem_crl)?;
    eprintln!(
        "this update {}, next update {}",
        time_text(resp.this_update.as_ref()),
        time_text(resp.next_update.as_ref())
    );
    Ok(())
}

#[cfg(test)]
mod tests;
