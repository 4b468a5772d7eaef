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
    // A serial already stored is refused as such (the caller signs again
    // with a new one); another key taken is a plain duplicate.
    let mut same_serial = rec("id99", 7, 3, "");
    same_serial.serial = "serial-id03".into();
    assert!(matches!(
        store.insert(same_serial).await,
        Err(StoreError::SerialTaken)
    ));
    let mut same_id = rec("id03", 7, 3, "");
    same_id.serial = "serial-new".into();
    assert!(matches!(
        store.insert(same_id).await,
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

fn req(id: &str, t: i64, labels: &[(&str, &str)]) -> RequestRow {
    use prost::Message;
    let labels: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let resource = crate::proto::CertificateRequest {
        id: id.into(),
        spec: Some(crate::proto::CertificateRequestSpec {
            labels: labels.clone().into_iter().collect(),
            ..Default::default()
        }),
        ..Default::default()
    };
    RequestRow {
        id: id.into(),
        owner_uid: 7,
        owner_gid: 7,
        request_id: String::new(),
        fingerprint: String::new(),
        dup_key: format!("dup-{id}"),
        names_key: format!("names-{id}"),
        state: 1,
        due_at: None,
        create_time_us: t,
        labels,
        resource: resource.encode_to_vec(),
    }
}

async fn list_ids(store: &SqliteStore, labels: &[(&str, &str)], limit: u32) -> Vec<String> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_requests(RequestQuery {
                owner_uid: Some(7),
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                after: after.clone(),
                limit,
                ..Default::default()
            })
            .await
            .unwrap();
        if page.is_empty() {
            return out;
        }
        after = page.last().map(|r| (r.create_time_us, r.id.clone()));
        out.extend(page.into_iter().map(|r| r.id));
    }
}

#[tokio::test]
async fn request_labels_are_kept_in_step_and_filter_in_sql() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open_sqlite(dir.path()).await.unwrap();
    for i in 0..30 {
        let team = if i % 3 == 0 { "a" } else { "b" };
        let row = req(
            &format!("r{i:02}"),
            i,
            &[("team", team), ("n", &i.to_string())],
        );
        store.create_request(row).await.unwrap();
    }
    let a: Vec<String> = (0..30)
        .rev()
        .filter(|i| i % 3 == 0)
        .map(|i| format!("r{i:02}"))
        .collect();
    assert_eq!(list_ids(&store, &[("team", "a")], 4).await, a);
    assert_eq!(
        list_ids(&store, &[("team", "a"), ("n", "9")], 4).await,
        ["r09"]
    );
    assert!(
        list_ids(&store, &[("team", "a"), ("n", "10")], 4)
            .await
            .is_empty()
    );
    let got = store.get_request("r03").await.unwrap().unwrap();
    assert_eq!(got, req("r03", 3, &[("team", "a"), ("n", "3")]));

    // A commit replaces the labels; a delete removes them.
    let mut moved = req("r03", 3, &[("team", "c")]);
    moved.resource = got.resource.clone();
    assert!(
        store
            .commit_request(RequestChange::row_only(moved))
            .await
            .unwrap()
    );
    assert_eq!(list_ids(&store, &[("team", "c")], 4).await, ["r03"]);
    assert!(list_ids(&store, &[("n", "3")], 4).await.is_empty());
    let rev = Revocation { time: 1, reason: 5 };
    assert!(store.delete_request("r03", vec![], rev).await.unwrap());
    assert!(list_ids(&store, &[("team", "c")], 4).await.is_empty());
    let left: i64 = rusqlite::Connection::open(dir.path().join("hsmca.db"))
        .unwrap()
        .query_row(
            "SELECT count(*) FROM certificate_request_labels WHERE request_id = 'r03'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(left, 0);
}

/// A store as the sqlx-based releases left it: schema 3, sqlx's migration
/// record, replies and resources as base64 text.
fn legacy_store(dir: &std::path::Path) {
    use base64::Engine;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let conn = rusqlite::Connection::open(dir.join("hsmca.db")).unwrap();
    conn.execute_batch(&super::schema::legacy_sql()).unwrap();
    conn.execute_batch(
        "CREATE TABLE _sqlx_migrations (version BIGINT PRIMARY KEY, description TEXT NOT NULL, \
         installed_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP, success BOOLEAN NOT NULL, \
         checksum BLOB NOT NULL, execution_time BIGINT NOT NULL);
         INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (1, 'one', TRUE, X'00', 0), (2, 'two', TRUE, X'00', 0), (3, 'three', TRUE, X'00', 0);",
    )
    .unwrap();
    let r = rec("old", 7, 5, "rid");
    conn.execute(
        "INSERT INTO certificates (id, serial, owner_uid, owner_gid, owner_pid, subject, \
         dns_names, uri_sans, ip_addresses, profile, not_before, expire_time, create_time, \
         request_id, fingerprint, description, tags, pem, reply) VALUES ('old', 'serial-old', 7, \
         0, 1, 'CN=x', '[\"a.example\"]', '[]', '[]', 'client', 0, 1000, 5, 'rid', 'fp', '', \
         '{\"team\":\"t1\"}', 'pem', ?1)",
        [b64(&r.reply)],
    )
    .unwrap();
    let q = req("oldreq", 9, &[("team", "legacy")]);
    conn.execute(
        "INSERT INTO certificate_requests (id, owner_uid, owner_gid, request_id, fingerprint, \
         dup_key, names_key, state, due_at, create_time, resource) \
         VALUES ('oldreq', 7, 7, '', '', 'dup-oldreq', 'names-oldreq', 1, NULL, 9, ?1)",
        [b64(&q.resource)],
    )
    .unwrap();
    conn.execute(
        "INSERT INTO audit_log (seq, entry, prev_hash, hash) VALUES (1, '{\"time_us\":42}', 'g', 'h')",
        [],
    )
    .unwrap();
}

#[tokio::test]
async fn a_legacy_store_is_migrated_to_blobs_and_labels() {
    let dir = tempfile::tempdir().unwrap();
    legacy_store(dir.path());
    let store = SqliteStore::open_sqlite(dir.path()).await.unwrap();
    assert_eq!(
        store.get("old").await.unwrap().unwrap(),
        rec("old", 7, 5, "rid")
    );
    assert_eq!(
        store.get_request("oldreq").await.unwrap().unwrap(),
        req("oldreq", 9, &[("team", "legacy")])
    );
    assert_eq!(list_ids(&store, &[("team", "legacy")], 2).await, ["oldreq"]);
    drop(store);
    let conn = rusqlite::Connection::open(dir.path().join("hsmca.db")).unwrap();
    let (versions, blob, time_us): (String, String, i64) = conn
        .query_row(
            "SELECT (SELECT group_concat(version) FROM schema_migrations), \
             (SELECT typeof(reply) FROM certificates), (SELECT time_us FROM audit_log)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(versions, "1,2,3,4,5,6,7");
    assert_eq!(blob, "blob");
    assert_eq!(time_us, 42);
    // The audit log is keyed by its sequence alone: no index beside it.
    let (seq_is_rowid, indexes): (bool, i64) = conn
        .query_row(
            "SELECT (SELECT rowid = seq FROM audit_log),              (SELECT count(*) FROM sqlite_master WHERE type = 'index' AND tbl_name = 'audit_log')",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert!(seq_is_rowid);
    assert_eq!(indexes, 0);
    assert_eq!(
        super::inspect::inspect(dir.path()).unwrap(),
        super::inspect::SchemaState::Current {
            path: dir.path().join("hsmca.db")
        }
    );
}

#[tokio::test]
async fn a_newer_schema_is_refused_naming_both_versions() {
    let dir = tempfile::tempdir().unwrap();
    drop(SqliteStore::open_sqlite(dir.path()).await.unwrap());
    let newer = super::schema::LATEST + 1;
    rusqlite::Connection::open(dir.path().join("hsmca.db"))
        .unwrap()
        .execute(
            "INSERT INTO schema_migrations (version, description, applied_at) VALUES (?1, 'x', 0)",
            [newer],
        )
        .unwrap();
    let Err(e) = SqliteStore::open_sqlite(dir.path()).await else {
        panic!("a newer schema was opened");
    };
    let msg = e.to_string();
    assert!(
        msg.contains(&format!(
            "schema version {newer}, newer than this hsmca knows (version {})",
            super::schema::LATEST
        )),
        "{msg}"
    );
}

fn entry(time_us: i64) -> crate::audit::AuditEntry {
    crate::audit::AuditEntry {
        time_us,
        operation: "test".into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn retention_deletes_old_records_and_cuts_the_audit_log_at_a_checkpoint() {
    use crate::audit::{GENESIS, verify_rows};
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open_sqlite(dir.path()).await.unwrap();
    // Expired at 10..=19 (old), at 1000 (recent), at 5000 (live).
    for i in 0..10 {
        let mut r = rec(&format!("old{i}"), 7, i, "");
        r.expire_time = 10 + i;
        store.insert(r).await.unwrap();
    }
    let mut recent = rec("recent", 7, 20, "");
    recent.expire_time = 1000;
    store.insert(recent).await.unwrap();
    let mut live = rec("live", 7, 21, "");
    live.expire_time = 5000;
    store.insert(live).await.unwrap();
    assert_eq!(store.purge_expired(500, 4).await.unwrap(), 4);
    assert_eq!(store.purge_expired(500, 4).await.unwrap(), 4);
    assert_eq!(store.purge_expired(500, 4).await.unwrap(), 2);
    assert_eq!(store.purge_expired(500, 4).await.unwrap(), 0);
    let left = store
        .list(ListQuery {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    let ids: Vec<_> = left.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["live", "recent"]);
    let tags: i64 = rusqlite::Connection::open(dir.path().join("hsmca.db"))
        .unwrap()
        .query_row("SELECT count(*) FROM certificate_tags", [], |r| r.get(0))
        .unwrap();
    assert_eq!(tags, 2, "the tags of deleted records go with them");

    // Audit entries: ten old, three new.
    for t in (0..10).chain([1_000_000, 1_000_001, 1_000_002]) {
        store.audit(entry(t)).await.unwrap();
    }
    assert!(store.audit_checkpoint().await.unwrap().is_none());
    assert_eq!(store.cut_audit(500_000, 6).await.unwrap(), 6);
    assert_eq!(store.cut_audit(500_000, 6).await.unwrap(), 4);
    assert_eq!(store.cut_audit(500_000, 6).await.unwrap(), 0);
    let cp = store.audit_checkpoint().await.unwrap().unwrap();
    assert_eq!(cp.seq, 11);
    let rows = store.audit_log(0, 100).await.unwrap();
    assert_eq!(rows.first().map(|r| r.seq), Some(11));
    assert_eq!(rows[0].prev_hash, cp.prev_hash);
    assert_eq!(
        verify_rows((cp.seq - 1, cp.prev_hash.clone()), &rows)
            .unwrap()
            .0,
        13
    );
    assert!(verify_rows((0, GENESIS.into()), &rows).is_err());
    // The newest entry is never cut, however old: it is the chain's head.
    assert_eq!(store.cut_audit(i64::MAX, 100).await.unwrap(), 2);
    assert_eq!(store.audit_log(0, 100).await.unwrap().len(), 1);
    // New entries still chain on.
    drop(store);
    let store = SqliteStore::open_sqlite(dir.path()).await.unwrap();
    store.audit(entry(2_000_000)).await.unwrap();
    let cp = store.audit_checkpoint().await.unwrap().unwrap();
    let rows = store.audit_log(0, 100).await.unwrap();
    assert_eq!(
        verify_rows((cp.seq - 1, cp.prev_hash), &rows).unwrap().0,
        14
    );
}

async fn futures_join<F: Future>(fs: Vec<F>) -> Vec<F::Output> {
    let mut out = Vec::new();
    let handles: Vec<_> = fs.into_iter().map(Box::pin).collect();
    for h in handles {
        out.push(h.await);
    }
    out
}

/// SQLite's plan for `sql` with `args`, one step a line.
fn query_plan(conn: &rusqlite::Connection, sql: &str, args: &[rusqlite::types::Value]) -> String {
    let mut st = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
    let rows = st
        .query_map(rusqlite::params_from_iter(args), |r| r.get::<_, String>(3))
        .unwrap();
    rows.map(Result::unwrap).collect::<Vec<_>>().join("\n")
}

#[tokio::test]
async fn keyset_cursors_are_ranges_on_the_order_indexes() {
    let dir = tempfile::tempdir().unwrap();
    drop(SqliteStore::open_sqlite(dir.path()).await.unwrap());
    let conn = rusqlite::Connection::open(dir.path().join("hsmca.db")).unwrap();
    let after = Some((1_700_000_000_000_000, "01a2".to_owned()));
    // Everyone's records, and one owner's: a range on the (create_time,
    // id) index from the cursor, newest first, with no sort and no scan.
    for owner_uid in [None, Some(7)] {
        let (sql, args) = super::certificates::list_sql(&ListQuery {
            owner_uid,
            after: after.clone(),
            limit: 50,
            ..Default::default()
        });
        let plan = query_plan(&conn, &sql, &args);
        let index = if owner_uid.is_some() {
            "certificates_owner_order"
        } else {
            "certificates_order"
        };
        assert!(
            plan.contains(&format!("SEARCH c USING INDEX {index} (")) && plan.contains("<"),
            "{plan}"
        );
        assert!(!plan.contains("TEMP B-TREE"), "{plan}");
        let (sql, args) = super::requests::list_sql(
            &RequestQuery {
                owner_uid,
                after: after.clone(),
                limit: 50,
                ..Default::default()
            },
            &[],
        );
        let plan = query_plan(&conn, &sql, &args);
        let index = if owner_uid.is_some() {
            "certificate_requests_owner_order"
        } else {
            "certificate_requests_order"
        };
        assert!(
            plan.contains(&format!("SEARCH r USING INDEX {index} (")) && plan.contains("<"),
            "{plan}"
        );
        assert!(!plan.contains("TEMP B-TREE"), "{plan}");
    }
}
