//! The `hsmca.v1.CertificateAuthority` service: identifies the peer, hands
//! the request to the issuer, and shapes the reply.

use std::{sync::Arc, time::SystemTime};

use tonic::{Request, Response, Status, transport::server::UdsConnectInfo};

use crate::{
    issue::{Issued, Issuer},
    proto::{
        ClientCertificate, DeleteClientCertificateRequest, GenerateClientCertificateRequest,
        GetCaCertificatesRequest, GetCaCertificatesResponse, GetClientCertificateRequest,
        GetCrlRequest, GetCrlResponse, ListClientCertificatesRequest,
        ListClientCertificatesResponse, UpdateClientCertificateRequest,
        certificate_authority_server::CertificateAuthority, client_certificate::State,
    },
    signing::DigestSigner,
};

/// Who is calling, from the kernel (SO_PEERCRED), not from anything the
/// client says.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
}

pub fn peer<T>(req: &Request<T>) -> Result<Peer, Status> {
    req.extensions()
        .get::<UdsConnectInfo>()
        .and_then(|info| info.peer_cred)
        .map(|c| Peer {
            uid: c.uid(),
            gid: c.gid(),
            pid: c.pid(),
        })
        .ok_or_else(|| {
            Status::unauthenticated("the caller's credentials could not be read from the socket")
        })
}

pub struct CaService<S> {
    issuer: Arc<Issuer<S>>,
}

impl<S> CaService<S> {
    pub fn new(issuer: Arc<Issuer<S>>) -> Self {
        Self { issuer }
    }
}

fn ts(t: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(t)
}

fn reply(issued: Issued, chain: &[String], root: &str) -> ClientCertificate {
    let mut pem_certificate_chain = Vec::with_capacity(chain.len() + 1);
    pem_certificate_chain.push(issued.pem_certificate.clone());
    pem_certificate_chain.extend(chain.iter().cloned());
    ClientCertificate {
        certificate_id: issued.certificate_id,
        pem_certificate: issued.pem_certificate,
        pem_certificate_chain,
        ca_cert: root.to_owned(),
        serial_number: issued.serial_hex,
        subject: issued.subject,
        dns_names: issued.names.dns,
        uri_sans: issued.names.uris,
        ip_addresses: issued.names.ips.iter().map(|ip| ip.to_string()).collect(),
        create_time: Some(ts(issued.create_time)),
        not_before: Some(ts(issued.not_before)),
        expire_time: Some(ts(issued.not_after)),
        description: issued.description,
        tags: issued.tags,
        state: State::Active as i32,
        request_id: issued.request_id,
    }
}

fn later(what: &str) -> Status {
    Status::unimplemented(format!("{what} is not available in this version of hsmca"))
}

#[tonic::async_trait]
impl<S: DigestSigner + 'static> CertificateAuthority for CaService<S> {
    async fn generate_client_certificate(
        &self,
        req: Request<GenerateClientCertificateRequest>,
    ) -> Result<Response<ClientCertificate>, Status> {
        let peer = peer(&req)?;
        let req = req.into_inner();
        let profile = req.profile.clone();
        match self.issuer.issue(req).await {
            Ok(issued) => {
                tracing::info!(
                    uid = peer.uid, gid = peer.gid, pid = peer.pid,
                    serial = %issued.serial_hex,
                    subject = %issued.subject,
                    profile = issued.profile.name(),
                    "issued certificate"
                );
                let ca = self.issuer.ca();
                Ok(Response::new(reply(issued, &ca.chain_pem, &ca.root_pem)))
            }
            Err(e) => {
                let status = Status::from(e);
                tracing::info!(
                    uid = peer.uid, gid = peer.gid, pid = peer.pid,
                    profile = %profile,
                    code = ?status.code(),
                    reason = status.message(),
                    "refused certificate"
                );
                Err(status)
            }
        }
    }

    async fn get_ca_certificates(
        &self,
        req: Request<GetCaCertificatesRequest>,
    ) -> Result<Response<GetCaCertificatesResponse>, Status> {
        peer(&req)?;
        let ca = self.issuer.ca();
        Ok(Response::new(GetCaCertificatesResponse {
            ca_cert: ca.root_pem.clone(),
            pem_certificate_chain: ca.chain_pem.clone(),
        }))
    }

    async fn get_client_certificate(
        &self,
        _: Request<GetClientCertificateRequest>,
    ) -> Result<Response<ClientCertificate>, Status> {
        Err(later("GetClientCertificate"))
    }

    async fn list_client_certificates(
        &self,
        _: Request<ListClientCertificatesRequest>,
    ) -> Result<Response<ListClientCertificatesResponse>, Status> {
        Err(later("ListClientCertificates"))
    }

    async fn update_client_certificate(
        &self,
        _: Request<UpdateClientCertificateRequest>,
    ) -> Result<Response<ClientCertificate>, Status> {
        Err(later("UpdateClientCertificate"))
    }

    async fn delete_client_certificate(
        &self,
        _: Request<DeleteClientCertificateRequest>,
    ) -> Result<Response<()>, Status> {
        Err(later("DeleteClientCertificate"))
    }

    async fn get_crl(&self, _: Request<GetCrlRequest>) -> Result<Response<GetCrlResponse>, Status> {
        Err(later("GetCrl"))
    }
}
