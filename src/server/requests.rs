//! The `hsmca.v1.CertificateRequests` service: identifies the peer and hands
//! the call to [`Requests`]; the list RPC's page tokens and filter live here.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{replies, service::peer};
use crate::{
    proto::{
        CertificateRequest, CreateCertificateRequestRequest, DeleteCertificateRequestRequest,
        GetCertificateRequestRequest, ListCertificateRequestsRequest,
        ListCertificateRequestsResponse, RotateKeysRequest, UpdateCertificateRequestRequest,
        WatchCertificateRequestRequest, certificate_request_status::State,
        certificate_requests_server::CertificateRequests,
    },
    requests::{Requests, watch::WatchRequest},
};

pub struct RequestsService {
    requests: Arc<Requests>,
}

impl RequestsService {
    pub fn new(requests: Arc<Requests>) -> Self {
        Self { requests }
    }
}

/// A list filter: the state, and labels that must all match.
type Filter = (Option<State>, Vec<(String, String)>);

/// `state=PENDING|FINISHED|FAILED` and `label:KEY=VALUE` terms.
pub fn parse_filter(s: &str) -> Result<Filter, String> {
    let mut state = None;
    let mut labels = Vec::new();
    for (word, value) in replies::parse_terms(s, "state=FINISHED or label:KEY=VALUE")? {
        if word == "state" {
            if state.is_some() {
                return Err("filter names state twice".into());
            }
            state = Some(
                State::from_str_name(&value.to_ascii_uppercase()).ok_or_else(|| {
                    format!("filter state {value:?} is not PENDING, FINISHED or FAILED")
                })?,
            );
        } else if let Some(key) = word.strip_prefix("label:") {
            if key.is_empty() {
                return Err("filter label: needs a key".into());
            }
            if labels.len() >= 10 {
                return Err("filter has more than 10 label terms".into());
            }
            labels.push((key.to_owned(), value));
        } else {
            return Err(format!(
                "filter term {word:?} is unknown; use state=… or label:KEY=VALUE"
            ));
        }
    }
    Ok((state, labels))
}

#[tonic::async_trait]
impl CertificateRequests for RequestsService {
    async fn create_certificate_request(
        &self,
        req: Request<CreateCertificateRequestRequest>,
    ) -> Result<Response<CertificateRequest>, Status> {
        let peer = peer(&req)?;
        let profile = req
            .get_ref()
            .spec
            .as_ref()
            .map(|s| s.profile.clone())
            .unwrap_or_default();
        match self.requests.create(peer, req.into_inner()).await {
            Ok(r) => Ok(Response::new(r)),
            Err(e) => {
                let status = Status::from(e);
                let who = self.requests.identify(&peer).await;
                super::service::audit_refusal(
                    self.requests.store(),
                    self.requests.auth(),
                    &who,
                    "CreateCertificateRequest",
                    &profile,
                    Vec::new(),
                    &status,
                )
                .await;
                tracing::info!(
                    uid = peer.uid, gid = peer.gid, pid = peer.pid,
                    code = ?status.code(),
                    reason = status.message(),
                    "refused certificate request"
                );
                Err(status)
            }
        }
    }

    async fn get_certificate_request(
        &self,
        req: Request<GetCertificateRequestRequest>,
    ) -> Result<Response<CertificateRequest>, Status> {
        let peer = peer(&req)?;
        Ok(Response::new(
            self.requests.get(peer, &req.get_ref().id).await?,
        ))
    }

    async fn list_certificate_requests(
        &self,
        req: Request<ListCertificateRequestsRequest>,
    ) -> Result<Response<ListCertificateRequestsResponse>, Status> {
        let peer = peer(&req)?;
        let req = req.into_inner();
        let (limit, after) = replies::page(req.page_size, &req.page_token)?;
        let (state, labels) = parse_filter(&req.filter).map_err(Status::invalid_argument)?;
        let (page, more) = self
            .requests
            .list(peer, state, &labels, after, limit)
            .await?;
        let next_page_token = match (more, page.last()) {
            (true, Some((t, r))) => replies::encode_page_token(*t, &r.id),
            _ => String::new(),
        };
        Ok(Response::new(ListCertificateRequestsResponse {
            certificate_requests: page.into_iter().map(|(_, r)| r).collect(),
            next_page_token,
        }))
    }

    async fn update_certificate_request(
        &self,
        req: Request<UpdateCertificateRequestRequest>,
    ) -> Result<Response<CertificateRequest>, Status> {
        let peer = peer(&req)?;
        let req = req.into_inner();
        Ok(Response::new(
            self.requests.update(peer, &req.id, req.spec).await?,
        ))
    }

    async fn delete_certificate_request(
        &self,
        req: Request<DeleteCertificateRequestRequest>,
    ) -> Result<Response<()>, Status> {
        let peer = peer(&req)?;
        self.requests.delete(peer, &req.get_ref().id).await?;
        Ok(Response::new(()))
    }

    type WatchCertificateRequestStream = WatchRequest;

    async fn watch_certificate_request(
        &self,
        req: Request<WatchCertificateRequestRequest>,
    ) -> Result<Response<Self::WatchCertificateRequestStream>, Status> {
        let peer = peer(&req)?;
        Ok(Response::new(
            self.requests.watch(peer, &req.get_ref().id).await?,
        ))
    }

    async fn rotate_keys(
        &self,
        req: Request<RotateKeysRequest>,
    ) -> Result<Response<CertificateRequest>, Status> {
        let peer = peer(&req)?;
        Ok(Response::new(
            self.requests.rotate_keys(peer, &req.get_ref().id).await?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters() {
        assert_eq!(parse_filter("").unwrap(), (None, vec![]));
        assert_eq!(
            parse_filter("state=finished AND label:team=\"pay ments\"").unwrap(),
            (
                Some(State::Finished),
                vec![("team".into(), "pay ments".into())]
            )
        );
        for bad in [
            "state=DONE",
            "state=FAILED state=PENDING",
            "label:=x",
            "tag:a=b",
            "state",
        ] {
            assert!(parse_filter(bad).is_err(), "{bad}");
        }
    }
}
