//! `hsmca bench --request-list N`: ListCertificateRequests over a store
//! holding N certificate requests, through the daemon's socket. The store
//! is filled before the daemon starts (one transaction, FAILED requests the
//! worker leaves alone), then each listing is timed: an unfiltered page,
//! label filters matching 10 %, 0.1 %, one and no request, two labels at
//! once, paging through every match of a filter, and paging through the
//! whole table (what a label filter cost when it was applied after paging).

use std::{path::Path, time::Instant};

use prost::Message;

use super::daemon::{Daemon, Testbed};
use crate::{
    client::{CliResult, connect},
    proto::{
        CertificateRequest, CertificateRequestSpec, CertificateRequestStatus,
        ListCertificateRequestsRequest, certificate_request_status::State,
        certificate_requests_client::CertificateRequestsClient,
    },
    store::sqlite::SqliteStore,
};

/// Times each single-page listing is repeated.
const REPEAT: usize = 30;
const PAGE: i32 = 100;

/// Fills the store in `state_dir` with `n` requests owned by `uid`: label
/// `team` = t0..t9 (10 % each), `shard` = s0..s999 (0.1 %), `n` = the index.
async fn fill(state_dir: &Path, n: usize, uid: u32) -> CliResult {
    // Creates the store at this build's schema.
    drop(SqliteStore::open_sqlite(state_dir).await?);
    let db = state_dir.join(crate::store::sqlite::inspect::DB_FILE);
    tokio::task::spawn_blocking(move || -> CliResult {
        let mut conn = rusqlite::Connection::open(db)?;
        let tx = conn.transaction()?;
        {
            let mut req = tx.prepare(
                "INSERT INTO certificate_requests (id, owner_uid, owner_gid, request_id, \
                 fingerprint, dup_key, names_key, state, due_at, create_time, resource) \
                 VALUES (?1, ?2, ?2, '', '', ?1, ?1, ?3, NULL, ?4, ?5)",
            )?;
            let mut label = tx.prepare(
                "INSERT INTO certificate_request_labels (request_id, key, value, owner_uid, \
                 create_time) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for i in 0..n {
                let id = format!("bench-{i:08}");
                let labels = [
                    ("team".to_owned(), format!("t{}", i % 10)),
                    ("shard".to_owned(), format!("s{}", i % 1000)),
                    ("n".to_owned(), i.to_string()),
                ];
                let r = CertificateRequest {
                    id: id.clone(),
                    generation: 1,
                    spec: Some(CertificateRequestSpec {
                        labels: labels.iter().cloned().collect(),
                        ..Default::default()
                    }),
                    status: Some(CertificateRequestStatus {
                        state: State::Failed as i32,
                        error: "bench".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                let create_time = 1_700_000_000_000_000i64 + i as i64;
                req.execute(rusqlite::params![
                    id,
                    uid,
                    State::Failed as i32,
                    create_time,
                    r.encode_to_vec()
                ])?;
                for (k, v) in &labels {
                    label.execute(rusqlite::params![id, k, v, uid, create_time])?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    })
    .await?
}

struct Timed {
    what: String,
    matched: usize,
    median_ms: f64,
    p99_ms: f64,
}

/// Lists with `filter`: one page (`all` false) or every page; returns the
/// requests seen.
async fn list(
    c: &mut CertificateRequestsClient<tonic::transport::Channel>,
    filter: &str,
    all: bool,
) -> CliResult<usize> {
    let mut token = String::new();
    let mut seen = 0;
    loop {
        let page = c
            .list_certificate_requests(ListCertificateRequestsRequest {
                page_size: PAGE,
                page_token: token,
                filter: filter.to_owned(),
            })
            .await?
            .into_inner();
        seen += page.certificate_requests.len();
        if !all || page.next_page_token.is_empty() {
            return Ok(seen);
        }
        token = page.next_page_token;
    }
}

async fn time(
    c: &mut CertificateRequestsClient<tonic::transport::Channel>,
    what: &str,
    filter: &str,
    all: bool,
    repeat: usize,
) -> CliResult<Timed> {
    let matched = list(c, filter, all).await?;
    let mut ms = Vec::with_capacity(repeat);
    for _ in 0..repeat {
        let t = Instant::now();
        list(c, filter, all).await?;
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    Ok(Timed {
        what: what.to_owned(),
        matched,
        median_ms: at(0.5),
        p99_ms: at(0.99),
    })
}

pub async fn run(setup: &Path, n: usize) -> CliResult {
    let bed = Testbed::new(setup, "p256", &[])?;
    let cfg = bed.load_config()?;
    eprintln!("bench: filling the store with {n} certificate requests");
    let t = Instant::now();
    fill(&cfg.state.dir, n, rustix::process::geteuid().as_raw()).await?;
    eprintln!("bench: filled in {:.1} s", t.elapsed().as_secs_f64());
    let d = Daemon::start(&bed)?;
    let mut c = CertificateRequestsClient::new(connect(&bed.socket()).await?);
    let mid = n / 2;
    let mut rows = Vec::new();
    for (what, filter) in [
        ("unfiltered, first page", String::new()),
        ("label team=t3 (10 %), first page", "label:team=t3".into()),
        (
            "label shard=s7 (0.1 %), first page",
            "label:shard=s7".into(),
        ),
        ("label n=N/2 (one request)", format!("label:n={mid}")),
        ("label team=none (no request)", "label:team=none".into()),
        (
            "labels team=t3 AND shard=s3, first page",
            "label:team=t3 AND label:shard=s3".into(),
        ),
    ] {
        rows.push(time(&mut c, what, &filter, false, REPEAT).await?);
    }
    rows.push(
        time(
            &mut c,
            "label team=t3, every page",
            "label:team=t3",
            true,
            3,
        )
        .await?,
    );
    rows.push(time(&mut c, "unfiltered, every page", "", true, 3).await?);
    d.stop()?;
    println!(
        "ListCertificateRequests over {n} requests (page size {PAGE}; {REPEAT} runs per page, 3 per full listing)"
    );
    println!(
        "{:<44} {:>8} {:>10} {:>10}",
        "listing", "listed", "median ms", "p99 ms"
    );
    for r in rows {
        println!(
            "{:<44} {:>8} {:>10.2} {:>10.2}",
            r.what, r.matched, r.median_ms, r.p99_ms
        );
    }
    Ok(())
}
