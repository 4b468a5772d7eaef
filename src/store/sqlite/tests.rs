//! The SQLite store against a real database file in a temporary directory.

use std::collections::BTreeMap;

use super::SqliteStore;
use crate::store::*;

fn rec(id: &str, uid: u32, t: i64, request_id: &str) -> Record {
    Record {
        id: id.into(),
        serial: format!("serial-{id}"),
        owner_uid: uid,
        owner_gid: 0,
        owner_pid: 1,
        subject: "CN=x".into(),
        dns_names: vec!["a.example".into()],
        uri_sans: vec![],
        ip_addresses: vec![],
        profile: "client".into(),
        not_before: 0,
        expire_time: 1000,
        create_time_us: t,
        request_id: request_id.into(),
        fingerprint: "fp".into(),
        description: String::new(),
        tags: BTreeMap::from([("team".to_string(), format!("t{}", t % 2))]),
        revoked: None,
        pem: "pem".into(),
        reply: vec![1, 2, 3],
    }
}

#[tokio::test]
async fn insert_get_list_update_revoke_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open_sqlite(dir.path()).await.unwrap();
    let inserts: Vec<_> = (0..20)
        .map(|i| store.insert(rec(&format!("id{i:02}"), if i < 15 { 7 } else { 8 }, i, "")))
        .collect();
    for r in futures_join(inserts).await {
        r.unwrap();
    }
    assert_eq!(
        store.get("id03").await.unwrap().unwrap(),
        rec("id03", 7, 3, "")
    );
    // Duplicate serial is refused.
    assert!(matches!(
        store.insert(rec("id03", 7, 3, "")).await,
        Err(StoreError::Duplicate)
    ));

    // Keyset pages, newest first, only uid 7.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list(ListQuery {
                owner_uid: Some(7),
                limit: 4,
                after: after.clone(),
                now: 0,
                ..Default::default()
            })
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        after = page.last().map(|r| (r.create_time_us, r.id.clone()));
        seen.extend(page.into_iter().map(|r| r.id));
    }
    let expected: Vec<String> = (0..15).rev().map(|i| format!("id{i:02}")).collect();
    assert_eq!(seen, expected);

    let tagged = store
        .list(ListQuery {
            owner_uid: Some(7),
            tags: vec![("team".into(), "t1".into())],
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(tagged.len(), 7);

    let updated = store
        .update_metadata(
            "id01",
            Some("described".into()),
            BTreeMap::from([
                ("team".to_string(), String::new()),
                ("env".to_string(), "prod".to_string()),
            ]),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(updated.description, "described");
    assert_eq!(
        updated.tags,
        BTreeMap::from([("env".to_string(), "prod".to_string())])
    );
    assert!(
        store
            .update_metadata("nope", None, BTreeMap::new())
            .await
            .unwrap()
            .is_none()
    );

    let r = store
        .revoke(
            "id02",
            Revocation {
                time: 50,
                reason: 1,
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        r.revoked,
        Some(Revocation {
            time: 50,
            reason: 1
        })
    );
    // A second revocation keeps the first.
    store
        .revoke(
            "id02",
            Revocation {
                time: 60,
                reason: 4,
            },
        )
        .await
        .unwrap();
    let revoked = store.revoked(10).await.unwrap();
    assert_eq!(
        revoked,
        vec![RevokedEntry {
            serial: "serial-id02".into(),
            time: 50,
            reason: 1
        }]
    );
    assert!(
        store.revoked(2000).await.unwrap().is_empty(),
        "expired entries leave the CRL"
    );
    let revoked_list = store
        .list(ListQuery {
            state: Some(StateFilter::Revoked),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(revoked_list.len(), 1);

    drop(store);
    let store = SqliteStore::open_sqlite(dir.path()).await.unwrap();
    assert_eq!(
        store.get("id01").await.unwrap().unwrap().description,
        "described"
    );
}

#[tokio::test]
async fn request_ids_are_unique_per_owner_until_expired() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open_sqlite(dir.path()).await.unwrap();
    store.insert(rec("a", 7, 100, "r1")).await.unwrap();
    let mut other = rec("b", 7, 200, "r1");
    other.serial = "other".into();
    assert!(matches!(
        store.insert(other.clone()).await,
        Err(StoreError::Duplicate)
    ));
    // Another owner may use the same id.
    let mut theirs = rec("c", 8, 200, "r1");
    theirs.serial = "theirs".into();
    store.insert(theirs).await.unwrap();
    assert_eq!(
        store.by_request_id(7, "r1", 0).await.unwrap().unwrap().id,
        "a"
    );
    assert!(store.by_request_id(7, "r1", 101).await.unwrap().is_none());
    assert_eq!(store.expire_request_ids(150).await.unwrap(), 1);
    store.insert(other).await.unwrap();
}

#[tokio::test]
async fn crl_state_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open_sqlite(dir.path()).await.unwrap();
    assert!(store.last_crl().await.unwrap().is_none());
    for n in 1..=2 {
        store
            .save_crl(CrlRecord {
                number: n,
                this_update: n,
                next_update: n + 10,
                pem: format!("crl{n}"),
            })
            .await
            .unwrap();
    }
    assert_eq!(store.last_crl().await.unwrap().unwrap().number, 2);
}

async fn futures_join<F: Future>(fs: Vec<F>) -> Vec<F::Output> {
    let mut out = Vec::new();
    let handles: Vec<_> = fs.into_iter().map(Box::pin).collect();
    for h in handles {
        out.push(h.await);
    }
    out
}
