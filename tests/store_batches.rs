//! The group-commit writer of each engine, driven through the store seam:
//! a batch of concurrent writes in which some records break a unique
//! constraint (a serial or a caller's request_id already taken, two
//! records of one batch with the same serial) commits every other record
//! with its tags, reply and audit entry, refuses each bad one (`SerialTaken`
//! for a serial, `Duplicate` for a request_id), and leaves one audit chain that verifies, holding the
//! entries of exactly the records that were committed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{collections::BTreeMap, sync::Arc};

use common::postgres::PgServer;
use hsmca::{
    audit::{AuditEntry, GENESIS, verify_rows},
    config::StateConfig,
    store::{self, ListQuery, Record, Store, StoreError},
};

fn record(n: usize, serial: &str, request_id: &str) -> Record {
    Record {
        id: format!("cert-{n}"),
        serial: serial.to_owned(),
        owner_uid: 1000,
        owner_gid: 1000,
        owner_pid: 4242,
        subject: format!("CN=batch-{n}"),
        dns_names: vec![format!("b{n}.example.org")],
        uri_sans: vec![],
        ip_addresses: vec!["192.0.2.7".into()],
        profile: "client".into(),
        not_before: 1_700_000_000,
        expire_time: 4_000_000_000,
        create_time_us: 1_700_000_000_000_000 + n as i64,
        request_id: request_id.to_owned(),
        fingerprint: if request_id.is_empty() {
            String::new()
        } else {
            format!("fp-{n}")
        },
        description: format!("record {n}, with a quote ' and a tab\t"),
        tags: BTreeMap::from([
            ("batch".to_owned(), "yes".to_owned()),
            ("n".to_owned(), n.to_string()),
        ]),
        revoked: None,
        pem: format!("-----BEGIN CERTIFICATE-----\n{n}\n-----END CERTIFICATE-----\n"),
        // Every byte value, so a reply must come back byte for byte.
        reply: (0..=255u8).chain([0, 0, n as u8]).collect(),
    }
}

/// Batch record `n`'s serial and request_id (see [`check_engine`]).
fn keys(n: usize) -> (String, String) {
    let serial = match n {
        7 => "00aa".to_owned(),
        20 | 21 => "twin".to_owned(),
        n => format!("{n:04x}"),
    };
    let request_id = match n {
        8 => "taken".to_owned(),
        n if n % 3 == 0 => format!("rid-{n}"),
        _ => String::new(),
    };
    (serial, request_id)
}

fn audit(serial: &str) -> AuditEntry {
    AuditEntry {
        time_us: 1_700_000_000_000_000,
        uid: Some(1000),
        operation: "GenerateClientCertificate".into(),
        serial: serial.to_owned(),
        outcome: "issued".into(),
        ..Default::default()
    }
}

async fn check_engine(name: &str, store: Arc<dyn Store>) {
    // Already committed: a serial and a request_id the batch will reuse.
    store
        .insert_audited(record(0, "00aa", "taken"), Some(audit("00aa")))
        .await
        .unwrap();

    // The batch: every write in flight at once, so the writer takes them
    // together. Records 7 and 8 reuse record 0's serial and request_id;
    // records 20 and 21 share a serial of their own.
    let mut writes = tokio::task::JoinSet::new();
    for n in 1..=40usize {
        let (serial, request_id) = keys(n);
        let store = Arc::clone(&store);
        writes.spawn(async move {
            let r = store
                .insert_audited(record(n, &serial, &request_id), Some(audit(&serial)))
                .await;
            (n, r)
        });
    }
    let mut results = BTreeMap::new();
    while let Some(r) = writes.join_next().await {
        let (n, r) = r.unwrap();
        results.insert(n, r);
    }

    let mut committed = vec![0];
    for (n, r) in &results {
        match n {
            // A taken serial is told apart (the caller signs again under a
            // new one); a taken request_id is a duplicate request.
            7 => assert!(
                matches!(r, Err(StoreError::SerialTaken)),
                "{name}: record 7 reuses a serial and must be refused as taken: {r:?}"
            ),
            8 => assert!(
                matches!(r, Err(StoreError::Duplicate)),
                "{name}: record 8 reuses a request_id and must be refused as a duplicate: {r:?}"
            ),
            20 | 21 => {}
            n => {
                assert!(r.is_ok(), "{name}: record {n} must commit: {r:?}");
                committed.push(*n);
            }
        }
    }
    let twins: Vec<usize> = [20, 21]
        .into_iter()
        .filter(|n| results[n].is_ok())
        .collect();
    assert_eq!(
        twins.len(),
        1,
        "{name}: one of two twins commits: {results:?}"
    );
    assert!(
        [20, 21]
            .iter()
            .any(|n| matches!(results[n], Err(StoreError::SerialTaken))),
        "{name}: the other twin's serial is taken: {results:?}"
    );
    committed.extend(&twins);

    // Every committed record reads back as written.
    for &n in &committed {
        let got = store
            .get(&format!("cert-{n}"))
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{name}: record {n} is missing"));
        let (serial, request_id) = if n == 0 {
            ("00aa".to_owned(), "taken".to_owned())
        } else {
            keys(n)
        };
        let want = record(n, &serial, &request_id);
        assert_eq!(got, want, "{name}: record {n} reads back as written");
    }
    for n in [7, 8] {
        assert!(
            store.get(&format!("cert-{n}")).await.unwrap().is_none(),
            "{name}: refused record {n} must not be stored"
        );
    }
    let replay = store
        .by_request_id(1000, "rid-9", 0)
        .await
        .unwrap()
        .expect("request_id rid-9 replays");
    assert_eq!(replay.reply, record(9, "", "").reply, "{name}: reply bytes");

    // Tags landed with their records (and only theirs).
    let tagged = store
        .list(ListQuery {
            tags: vec![("batch".into(), "yes".into())],
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(tagged.len(), committed.len(), "{name}: tagged records");
    let one = store
        .list(ListQuery {
            tags: vec![("n".into(), "13".into())],
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(one.len(), 1, "{name}: tag n=13");
    assert_eq!(one[0].id, "cert-13");

    // One chain, in order, with an entry for each committed record only.
    let rows = store.audit_log(0, 1000).await.unwrap();
    verify_rows((0, GENESIS.to_owned()), &rows)
        .unwrap_or_else(|e| panic!("{name}: the audit chain breaks: {e}"));
    assert_eq!(rows.len(), committed.len(), "{name}: one entry per record");
    let serials: Vec<String> = rows
        .iter()
        .map(|r| {
            serde_json::from_str::<serde_json::Value>(&r.entry).unwrap()["serial"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        serials.iter().filter(|s| *s == "00aa").count(),
        1,
        "{name}: the refused record 7 left no audit entry"
    );
    assert_eq!(
        serials.iter().filter(|s| *s == "twin").count(),
        1,
        "{name}: one entry for the twins"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_with_duplicates_commits_the_others_and_one_chain_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let state = StateConfig {
        dir: dir.path().to_owned(),
        ..Default::default()
    };
    check_engine("sqlite", store::open(&state).await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_with_duplicates_commits_the_others_and_one_chain_postgres() {
    let pg = PgServer::shared().unwrap_or_else(PgServer::start);
    let db = pg.create_db();
    let dir = tempfile::tempdir().unwrap();
    let state = StateConfig {
        dir: dir.path().to_owned(),
        database: Some(pg.url(&db)),
        ..Default::default()
    };
    check_engine("postgres", store::open(&state).await.unwrap()).await;
}
