//! Listing certificate requests by label, end to end over the daemon's
//! socket: the filter is applied by the store, so every page is full while
//! more match, pages follow one another without gaps or repeats, label
//! changes and deletions show at once, and it all survives a restart.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

use common::{Ca, KeyPair};
use hsmca::proto::{
    CertificateRequestSpec, CreateCertificateRequestRequest, DeleteCertificateRequestRequest,
    ListCertificateRequestsRequest, UpdateCertificateRequestRequest,
    certificate_requests_client::CertificateRequestsClient,
};
use tonic::transport::Channel;

async fn client(ca: &Ca) -> CertificateRequestsClient<Channel> {
    CertificateRequestsClient::new(hsmca::cli::client::connect(&ca.socket()).await.unwrap())
}

/// Every request the filter lists, page by page (`page_size` each), newest
/// first; asserts that every page but the last is full.
async fn list_all(ca: &Ca, filter: &str, page_size: i32) -> Vec<String> {
    let mut c = client(ca).await;
    let mut ids = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .list_certificate_requests(ListCertificateRequestsRequest {
                page_size,
                page_token: token.clone(),
                filter: filter.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("list {filter:?}: {e:?}"))
            .into_inner();
        if !page.next_page_token.is_empty() {
            assert_eq!(
                page.certificate_requests.len(),
                page_size as usize,
                "a page short of its size before the end ({filter:?})"
            );
        }
        ids.extend(page.certificate_requests.into_iter().map(|r| r.id));
        if page.next_page_token.is_empty() {
            return ids;
        }
        token = page.next_page_token;
    }
}

#[tokio::test]
async fn label_filters_page_through_exactly_the_matching_requests() {
    let mut ca = Ca::new("p256");
    // Deleting a request is for administrators.
    ca.make_root_admin();
    ca.start();
    let key = KeyPair::new(ca.dir.path(), "p256");
    // 24 requests, oldest first: team a for every third, env prod for every
    // other one.
    let mut made: Vec<(String, BTreeMap<String, String>)> = Vec::new();
    for i in 0..24 {
        let mut labels = BTreeMap::from([(
            "team".to_string(),
            if i % 3 == 0 { "a" } else { "b" }.to_string(),
        )]);
        if i % 2 == 0 {
            labels.insert("env".into(), "prod".into());
        }
        let r = client(&ca)
            .await
            .create_certificate_request(CreateCertificateRequestRequest {
                spec: Some(CertificateRequestSpec {
                    pem_csr: key.csr(
                        &format!("/CN=l{i}"),
                        Some(&format!("DNS:l{i}.labels.example")),
                    ),
                    labels: labels.clone().into_iter().collect(),
                    ..Default::default()
                }),
                request_id: String::new(),
            })
            .await
            .unwrap_or_else(|e| panic!("create {i}: {e:?}\n{}", ca.log()))
            .into_inner();
        made.push((r.id, labels));
    }
    let expect = |made: &[(String, BTreeMap<String, String>)], want: &[(&str, &str)]| {
        made.iter()
            .rev()
            .filter(|(_, l)| {
                want.iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(id, _)| id.clone())
            .collect::<Vec<_>>()
    };

    assert_eq!(list_all(&ca, "", 5).await.len(), 24);
    let team_a = expect(&made, &[("team", "a")]);
    assert_eq!(team_a.len(), 8);
    for size in [1, 3, 8, 100] {
        assert_eq!(
            list_all(&ca, "label:team=a", size).await,
            team_a,
            "page size {size}"
        );
    }
    let both = expect(&made, &[("team", "a"), ("env", "prod")]);
    assert_eq!(both.len(), 4);
    assert_eq!(
        list_all(&ca, "label:team=a AND label:env=prod", 3).await,
        both
    );
    assert!(list_all(&ca, "label:team=c", 3).await.is_empty());
    assert!(list_all(&ca, "label:nope=a", 3).await.is_empty());

    // New labels replace the old ones at once.
    let moved = made[1].0.clone();
    let updated = client(&ca)
        .await
        .update_certificate_request(UpdateCertificateRequestRequest {
            id: moved.clone(),
            spec: Some(CertificateRequestSpec {
                labels: [("team".to_string(), "a".to_string())].into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.spec.unwrap().labels["team"], "a");
    made[1].1 = BTreeMap::from([("team".to_string(), "a".to_string())]);
    // A deleted request leaves the listing, labels and all.
    let gone = made[0].0.clone();
    client(&ca)
        .await
        .delete_certificate_request(DeleteCertificateRequestRequest { id: gone.clone() })
        .await
        .unwrap();
    made.remove(0);
    let team_a = expect(&made, &[("team", "a")]);
    assert!(team_a.contains(&moved) && !team_a.contains(&gone));
    assert_eq!(list_all(&ca, "label:team=a", 3).await, team_a);
    assert_eq!(
        list_all(&ca, "label:env=prod", 4).await,
        expect(&made, &[("env", "prod")])
    );

    // The labels are stored, not derived at run time: a restart keeps them.
    ca.stop();
    ca.start();
    assert_eq!(list_all(&ca, "label:team=a", 2).await, team_a);
    assert_eq!(
        list_all(&ca, "label:team=b AND label:env=prod", 4).await,
        expect(&made, &[("team", "b"), ("env", "prod")])
    );
}
