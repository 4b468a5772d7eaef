//! The conformance matrix: every profile × every CA key type × every subject
//! key type, and the workload X509-SVID (fetched from the daemon's SPIFFE
//! Workload API) for every workload key type, each certificate checked by
//! three implementations that are not
//! hsmca's: pkilint (`lint_pkix_cert`, no finding of WARNING or worse apart
//! from the linter's own known false alarms, listed below by name),
//! `openssl verify -x509_strict` with the reply's chain, and GnuTLS
//! `certtool --verify`. Each CA's CRL, empty and with an entry of every
//! reason, passes `lint_crl` (PKIX) and `openssl crl -verify`. An
//! intermediate hsmca issued signs (through OpenSSL) a leaf inside its name
//! constraints, which verifies, and one outside them, which must not.
//!
//! One token and daemon per CA key type, all six set up and checked at once
//! on their own threads; pkilint runs once per CA over all its files.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use common::{Ca, KeyPair, run, run_ok};
use hsmca::proto::{
    ClientCertificate, DeleteClientCertificateRequest, GenerateClientCertificateRequest,
    GetCrlRequest,
};

/// CA key types: name, `ca.key_type`, `ca.rsa_padding`, and whether the
/// CA is an intermediate under an external (OpenSSL) root instead of a
/// self-signed root made by `hsmca init`.
const CA_KEYS: &[(&str, &str, &str, bool)] = &[
    ("p256", "p256", "pkcs1", false),
    ("p384", "p384", "pkcs1", false),
    ("rsa2048", "rsa2048", "pkcs1", false),
    ("rsa3072", "rsa3072", "pkcs1", false),
    ("rsa4096", "rsa4096", "pkcs1", false),
    ("rsa3072-pss", "rsa3072", "pss", false),
    ("p384-under-external-root", "p384", "pkcs1", true),
];
const SUBJECT_KEYS: &[&str] = &["p256", "p384", "rsa2048", "ed25519"];
const PROFILES: &[&str] = &["client", "server", "intermediate"];
/// The key types a registration entry can give a workload (the daemon
/// makes the key; Ed25519 is not one of them).
const SVID_KEYS: &[&str] = &["p256", "p384", "rsa2048"];

/// pkilint findings that are the linter's mistakes, not the certificate's,
/// and the only findings excused. Each is excused only on a certificate
/// that carries what it misreads, as many times as it carries it.
const KNOWN_FALSE_ALARMS: &[FalseAlarm] = &[
    FalseAlarm {
        code: "pkix.invalid_uri_syntax",
        why: "pkilint's URI validator rejects valid spiffe:// URIs (it accepts https:// ones)",
        message_has: "spiffe://",
        count: |c| c.uris.iter().filter(|u| u.starts_with("spiffe://")).count(),
    },
    FalseAlarm {
        code: "pkix.invalid_domain_name_syntax",
        why: "under the PKIX profile pkilint reads a wildcard dNSName as invalid syntax; \
              RFC 6125 and the CA/Browser Forum allow `*` as the whole leftmost label",
        message_has: "\"*.",
        count: |c| c.dns.iter().filter(|d| d.starts_with("*.")).count(),
    },
];

/// Reasons a certificate is revoked for, as the API spells them, and as
/// `openssl crl -text` prints them (unspecified has no reasonCode at all).
const REASONS: &[(&str, Option<&str>)] = &[
    ("unspecified", None),
    ("keyCompromise", Some("Key Compromise")),
    ("caCompromise", Some("CA Compromise")),
    ("affiliationChanged", Some("Affiliation Changed")),
    ("superseded", Some("Superseded")),
    ("cessationOfOperation", Some("Cessation Of Operation")),
    ("privilegeWithdrawn", Some("Privilege Withdrawn")),
];

/// Who may have what in the matrix: everything the three profiles need,
/// and an intermediate's name constraints come from these patterns.
const POLICY: &str = r#"
[[policy.rules]]
name = "conformance"
uids = [0]
admin = true
profiles = ["client", "server", "intermediate"]
common_names = ["**"]
dns = ["**.svc.example"]
uris = ["spiffe://example.org/**"]
ips = ["10.1.0.0/16", "fd00::/64"]
allow_wildcards = true
"#;

/// The workload endpoint for the matrix: one entry per workload key type,
/// all for the test's own uid, so one fetch returns an SVID of each.
fn workload_section(dir: &Path) -> String {
    let mut s = format!(
        "[workload]\nsocket = {:?}\nsocket_mode = \"0600\"\ntrust_domain = \"example.org\"\n",
        dir.join("workload.sock").display().to_string()
    );
    for k in SVID_KEYS {
        s.push_str(&format!(
            "\n[[workload.entries]]\nspiffe_id = \"spiffe://example.org/svid/{k}\"\n\
             uid = {}\nkey_type = \"{k}\"\ndns_names = [\"{k}.svid.example\"]\nttl = \"1h\"\n",
            rustix::process::getuid().as_raw()
        ));
    }
    s.push_str("\n[workload.jwt]\nkey_label = \"hsmca-jwt\"\n");
    s
}

/// The certificates of a PEM text, each as its own PEM block.
fn pem_blocks(text: &str) -> Vec<String> {
    text.split_inclusive("-----END CERTIFICATE-----")
        .map(str::trim)
        .filter(|b| b.starts_with("-----BEGIN CERTIFICATE-----"))
        .map(|b| format!("{b}\n"))
        .collect()
}

/// The caller's SVIDs through `hsmca workload fetch --json`, as matrix
/// cases: the chain the Workload API hands out (leaf first, then any
/// intermediate) completed by the root, which must be in its bundle.
fn svid_cases(ca: &Ca, dir: &Path, root_pem: &str, fail: &mut impl FnMut(String)) -> Vec<Case> {
    let out = run_ok(
        ca.hsmca()
            .args(["workload", "fetch", "--json", "--socket"])
            .arg(dir.join("workload.sock")),
    );
    let svids: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let mut cases = Vec::new();
    for k in SVID_KEYS {
        let id = format!("spiffe://example.org/svid/{k}");
        let Some(svid) = svids.iter().find(|v| v["spiffe_id"] == id.as_str()) else {
            fail(format!("no SVID for {id} in {svids:?}"));
            continue;
        };
        let chain = pem_blocks(svid["svid_pem"].as_str().unwrap());
        let bundle = pem_blocks(svid["bundle_pem"].as_str().unwrap());
        if !bundle.iter().any(|b| b.trim() == root_pem.trim()) {
            fail(format!("svid-{k}: the bundle lacks the root: {bundle:?}"));
        }
        let label = format!("svid-{k}");
        let file = write(dir, &format!("{label}.pem"), &chain[0]);
        let mut full = chain.clone();
        full.push(root_pem.to_owned());
        cases.push(Case {
            label,
            profile: "svid",
            subject_key: k,
            dns: vec![format!("{k}.svid.example")],
            uris: vec![id],
            reply: ClientCertificate {
                pem_certificate: chain[0].clone(),
                pem_certificate_chain: full,
                ca_cert: root_pem.to_owned(),
                ..Default::default()
            },
            file,
        });
    }
    cases
}

struct FalseAlarm {
    code: &'static str,
    why: &'static str,
    /// The finding's message names what is misread.
    message_has: &'static str,
    /// How many times this certificate may show it.
    count: fn(&Case) -> usize,
}

/// One certificate of the matrix.
struct Case {
    label: String,
    profile: &'static str,
    subject_key: &'static str,
    dns: Vec<String>,
    uris: Vec<String>,
    reply: ClientCertificate,
    file: PathBuf,
}

fn request(profile: &str, key: &KeyPair, k: &str) -> GenerateClientCertificateRequest {
    let mut r = GenerateClientCertificateRequest {
        public_key: key.public_pem(),
        profile: profile.into(),
        ..Default::default()
    };
    match profile {
        "client" => {
            r.common_name = format!("client-{k}");
            r.dns_names = vec![format!("{k}.svc.example")];
            r.uri_sans = vec![format!("spiffe://example.org/ns/conformance/sa/{k}")];
            r.ip_addresses = vec!["10.1.0.7".into(), "fd00::7".into()];
        }
        "server" => {
            // No subject: subjectAltName carries the names, and is critical.
            r.dns_names = vec![format!("{k}.svc.example"), format!("*.{k}.svc.example")];
            r.ip_addresses = vec!["10.1.0.8".into()];
        }
        "intermediate" => {
            r.common_name = format!("mesh-agent-{k}");
        }
        other => panic!("unknown profile {other}"),
    }
    r
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `openssl verify -x509_strict` and `certtool --verify` of `cert` with the
/// untrusted `chain` (issuing CA … up to, not including, the root).
fn verify_both(
    dir: &Path,
    name: &str,
    cert_pem: &str,
    chain: &[String],
    root: &Path,
) -> Vec<String> {
    let mut failures = Vec::new();
    let cert = write(dir, &format!("{name}.pem"), cert_pem);
    let mut openssl = Command::new("openssl");
    openssl
        .args(["verify", "-x509_strict", "-CAfile"])
        .arg(root);
    if !chain.is_empty() {
        let untrusted = write(dir, &format!("{name}-untrusted.pem"), &chain.concat());
        openssl.arg("-untrusted").arg(untrusted);
    }
    openssl.arg(&cert);
    let out = run(&mut openssl);
    if !out.status.success() || !String::from_utf8_lossy(&out.stdout).contains(": OK") {
        failures.push(format!("openssl verify: {}", output_text(&out)));
    }
    // certtool reads the chain, leaf first, from --infile.
    let bundle = write(
        dir,
        &format!("{name}-bundle.pem"),
        &format!("{cert_pem}{}", chain.concat()),
    );
    let out = run(Command::new("certtool")
        .args(["--verify", "--load-ca-certificate"])
        .arg(root)
        .arg("--infile")
        .arg(&bundle));
    if !out.status.success() || !output_text(&out).contains("Chain verification output: Verified.")
    {
        failures.push(format!("certtool --verify: {}", output_text(&out)));
    }
    failures
}

/// One pkilint finding of WARNING or worse.
struct Finding {
    severity: String,
    code: String,
    /// Where in the document, and the message.
    at: String,
}

/// What pkilint said about one file.
struct Lint {
    exit: i64,
    findings: Vec<Finding>,
}

/// Runs pkilint's own CLI code over `files` (tests/pkilint_batch.py),
/// keyed by path.
fn pkilint(files: &[(&str, &Path)]) -> BTreeMap<String, Lint> {
    let script = common::repo().join("tests/pkilint_batch.py");
    let mut cmd = Command::new(common::python());
    cmd.arg(script);
    for (kind, path) in files {
        cmd.arg(format!("{kind}={}", path.display()));
    }
    let out = run_ok(&mut cmd);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_object()
        .unwrap()
        .iter()
        .map(|(path, r)| {
            let findings = r["findings"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| {
                    let s = |i: usize| f[i].as_str().unwrap().to_owned();
                    Finding {
                        severity: s(0),
                        code: s(1),
                        at: format!("{}: {}", s(2), s(3)),
                    }
                })
                .collect();
            let exit = r["exit"].as_i64().unwrap();
            (path.clone(), Lint { exit, findings })
        })
        .collect()
}

/// The name-constraints check: the intermediate's key (ours) signs, with
/// OpenSSL, a leaf inside the constraints and one outside them.
fn name_constraints(dir: &Path, intermediate: &Case, key: &KeyPair, root: &Path) -> Vec<String> {
    let mut failures = Vec::new();
    let issuer = write(dir, "nc-issuer.pem", &intermediate.reply.pem_certificate);
    let leaf_key = KeyPair::new(dir, "p256");
    for (name, san, should_verify) in [
        (
            "inside",
            "DNS:ok.svc.example,URI:spiffe://example.org/ns/a,IP:10.1.2.3",
            true,
        ),
        ("outside-dns", "DNS:evil.example", false),
        ("outside-uri", "URI:spiffe://evil.example/ns/a", false),
        ("outside-ip", "IP:10.2.0.1", false),
    ] {
        let csr = write(
            dir,
            &format!("nc-{name}.csr"),
            &leaf_key.csr("/CN=nc-leaf", None),
        );
        let ext = write(
            dir,
            &format!("nc-{name}.ext"),
            &format!(
                "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
                 extendedKeyUsage=serverAuth\nsubjectKeyIdentifier=hash\n\
                 authorityKeyIdentifier=keyid\nsubjectAltName=critical,{san}\n"
            ),
        );
        let leaf = dir.join(format!("nc-{name}.pem"));
        run_ok(
            Command::new("openssl")
                .args(["x509", "-req", "-days", "1", "-in"])
                .arg(&csr)
                .arg("-CA")
                .arg(&issuer)
                .arg("-CAkey")
                .arg(&key.private)
                .arg("-extfile")
                .arg(&ext)
                .arg("-out")
                .arg(&leaf),
        );
        // The intermediate and the CAs above it, up to (not including) the root.
        let all = &intermediate.reply.pem_certificate_chain;
        let chain = all[..all.len() - 1].concat();
        let untrusted = write(dir, &format!("nc-{name}-untrusted.pem"), &chain);
        let out = run(Command::new("openssl")
            .args(["verify", "-x509_strict", "-CAfile"])
            .arg(root)
            .arg("-untrusted")
            .arg(&untrusted)
            .arg(&leaf));
        let text = output_text(&out);
        match (should_verify, out.status.success()) {
            (true, false) => failures.push(format!("NC leaf {name} ({san}) fails: {text}")),
            (false, true) => failures.push(format!("NC leaf {name} ({san}) verifies")),
            (false, false) if !text.contains("subtree violation") => failures.push(format!(
                "NC leaf {name} ({san}) fails for another reason: {text}"
            )),
            _ => {}
        }
    }
    failures
}

/// `hsmca init --csr`, signed by a root made with OpenSSL, then
/// `init --import-chain`: the daemon issues as an intermediate.
fn install_under_external_root(ca: &Ca) {
    let d = ca.dir.path();
    run_ok(
        ca.hsmca()
            .args(["init", "--config"])
            .arg(ca.config())
            .arg("--csr")
            .arg(d.join("ca.csr")),
    );
    run_ok(Command::new("openssl").current_dir(d).args([
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        "/CN=External Root",
        "-keyout",
        "ext-root.key",
        "-out",
        "ext-root.pem",
        "-days",
        "3650",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]));
    write(
        d,
        "ext-inter.cnf",
        "basicConstraints=critical,CA:TRUE,pathlen:1\nkeyUsage=critical,keyCertSign,cRLSign\n\
         subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n",
    );
    run_ok(Command::new("openssl").current_dir(d).args([
        "x509",
        "-req",
        "-in",
        "ca.csr",
        "-CA",
        "ext-root.pem",
        "-CAkey",
        "ext-root.key",
        "-out",
        "ext-inter.pem",
        "-days",
        "365",
        "-extfile",
        "ext-inter.cnf",
    ]));
    let chain = [
        std::fs::read_to_string(d.join("ext-inter.pem")).unwrap(),
        std::fs::read_to_string(d.join("ext-root.pem")).unwrap(),
    ]
    .concat();
    write(d, "ext-chain.pem", &chain);
    run_ok(
        ca.hsmca()
            .args(["init", "--config"])
            .arg(ca.config())
            .arg("--import-chain")
            .arg(d.join("ext-chain.pem")),
    );
}

/// The line after `heading` in `openssl … -text` output, trimmed.
fn text_after(text: &str, heading: &str) -> Option<String> {
    let mut lines = text.lines();
    lines.find(|l| l.trim_start().starts_with(heading))?;
    lines
        .next()
        .map(|l| l.trim().trim_start_matches("keyid:").to_owned())
}

/// Everything for one CA key type; the failures found.
fn check_ca(
    (name, key_type, padding, under_root): (&str, &str, &str, bool),
    keys: &BTreeMap<&'static str, KeyPair>,
) -> Vec<String> {
    let started = Instant::now();
    let mut ca = Ca::token_only(
        key_type,
        &[
            ("HSMCA_CA__RSA_PADDING", padding),
            ("HSMCA_CA__CRL_URL", "http://crl.example/hsmca.crl"),
        ],
    );
    if under_root {
        install_under_external_root(&ca);
    } else {
        run_ok(ca.hsmca().args(["init", "--config"]).arg(ca.config()));
    }
    let dir = ca.dir.path().to_owned();
    ca.set_policy(&format!("{POLICY}\n{}", workload_section(&dir)));
    ca.start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut failures = Vec::new();
    let mut fail = |what: String| failures.push(format!("{name} CA: {what}"));

    // Issue the whole row: 3 profiles × 4 subject keys.
    let (empty_crl, cases) = rt.block_on(async {
        let mut client = ca.client().await;
        let empty_crl = client.get_crl(GetCrlRequest {}).await.unwrap().into_inner();
        let mut cases = Vec::new();
        for profile in PROFILES {
            for k in SUBJECT_KEYS {
                let req = request(profile, &keys[k], k);
                let (dns, uris) = (req.dns_names.clone(), req.uri_sans.clone());
                let reply = client
                    .generate_client_certificate(req)
                    .await
                    .unwrap_or_else(|e| panic!("{name} CA, {profile}, {k}: {e:?}\n{}", ca.log()))
                    .into_inner();
                let label = format!("{profile}-{k}");
                let file = write(&dir, &format!("{label}.pem"), &reply.pem_certificate);
                cases.push(Case {
                    label,
                    profile,
                    subject_key: k,
                    dns,
                    uris,
                    reply,
                    file,
                });
            }
        }
        (empty_crl, cases)
    });
    let root = write(&dir, "root.pem", &cases[0].reply.ca_cert);
    let root_pem = cases[0].reply.ca_cert.clone();
    let mut cases = cases;
    cases.extend(svid_cases(&ca, &dir, &root_pem, &mut fail));
    let issuing = write(
        &dir,
        "issuing.pem",
        &cases[0].reply.pem_certificate_chain[1],
    );
    let issuing_text = output_text(&run_ok(
        Command::new("openssl")
            .args(["x509", "-noout", "-text", "-in"])
            .arg(&issuing),
    ));
    let issuing_ski = text_after(&issuing_text, "X509v3 Subject Key Identifier");
    assert!(issuing_ski.is_some(), "{issuing_text}");

    for c in &cases {
        let chain = &c.reply.pem_certificate_chain;
        if chain.first() != Some(&c.reply.pem_certificate) {
            fail(format!(
                "{}: the chain does not start with the certificate",
                c.label
            ));
        }
        for f in verify_both(
            &dir,
            &format!("verify-{}", c.label),
            &c.reply.pem_certificate,
            &chain[1..chain.len() - 1],
            &root,
        ) {
            fail(format!("{}: {f}", c.label));
        }
    }
    let intermediate = cases
        .iter()
        .find(|c| c.profile == "intermediate" && c.subject_key == "p256")
        .unwrap();
    for f in name_constraints(&dir, intermediate, &keys["p256"], &root) {
        fail(f);
    }

    // Revoke one leaf for every reason, then the CRL must list them all.
    let leaves: Vec<&Case> = cases
        .iter()
        .filter(|c| c.profile != "intermediate")
        .collect();
    assert!(leaves.len() >= REASONS.len());
    let full_crl = rt.block_on(async {
        let mut client = ca.client().await;
        for ((reason, _), c) in REASONS.iter().zip(&leaves) {
            client
                .delete_client_certificate(DeleteClientCertificateRequest {
                    certificate_id: c.reply.certificate_id.clone(),
                    reason: (*reason).into(),
                })
                .await
                .unwrap();
        }
        client.get_crl(GetCrlRequest {}).await.unwrap().into_inner()
    });
    let empty_file = write(&dir, "crl-empty.pem", &empty_crl.pem_crl);
    let full_file = write(&dir, "crl-full.pem", &full_crl.pem_crl);
    for (what, file) in [("empty CRL", &empty_file), ("CRL", &full_file)] {
        // `openssl crl -verify` looks the CRL's issuer up in -CAfile only.
        let out = run(Command::new("openssl")
            .args(["crl", "-noout", "-text", "-verify", "-CAfile"])
            .arg(&issuing)
            .arg("-in")
            .arg(file));
        let text = output_text(&out);
        if !out.status.success() || !text.contains("verify OK") {
            fail(format!("{what}: openssl crl -verify: {text}"));
            continue;
        }
        // The CRL names the key that signed it (RFC 5280 §5.2.1): the
        // issuing CA's, which for an intermediate is not its issuer's.
        let aki = text_after(&text, "X509v3 Authority Key Identifier");
        if aki.is_none() || aki != issuing_ski {
            fail(format!(
                "{what}: authorityKeyIdentifier {aki:?} is not the CA's subjectKeyIdentifier {issuing_ski:?}"
            ));
        }
        if what == "empty CRL" {
            if !text.contains("No Revoked Certificates") {
                fail(format!("{what} lists certificates: {text}"));
            }
            continue;
        }
        for ((reason, printed), c) in REASONS.iter().zip(&leaves) {
            if !text
                .to_uppercase()
                .contains(&c.reply.serial_number.to_uppercase())
            {
                fail(format!("{what} lacks {} ({reason})", c.label));
            }
            if let Some(p) = printed
                && !text.contains(p)
            {
                fail(format!("{what} lacks the reason {p}"));
            }
        }
        if text.matches("Serial Number:").count() != REASONS.len() {
            fail(format!(
                "{what} lists the wrong number of certificates: {text}"
            ));
        }
    }
    // And OpenSSL refuses a revoked certificate on its strength.
    let revoked = write(&dir, "revoked.pem", &leaves[1].reply.pem_certificate);
    let out = run(Command::new("openssl")
        .args(["verify", "-x509_strict", "-crl_check", "-CAfile"])
        .arg(&root)
        .arg("-untrusted")
        .arg(&issuing)
        .arg("-CRLfile")
        .arg(&full_file)
        .arg(&revoked));
    if out.status.success() || !output_text(&out).contains("certificate revoked") {
        fail(format!("revoked leaf: {}", output_text(&out)));
    }

    // pkilint over every certificate and both CRLs.
    let mut files: Vec<(&str, &Path)> = cases.iter().map(|c| ("cert", c.file.as_path())).collect();
    // The CA certificate `hsmca init` made (not the external root's).
    if !under_root {
        files.push(("cert", &issuing));
    }
    files.push(("crl", &empty_file));
    files.push(("crl", &full_file));
    let lint = pkilint(&files);
    let mut excused_total: BTreeMap<&str, usize> = BTreeMap::new();
    for c in &cases {
        let mut excused: BTreeMap<&str, usize> = BTreeMap::new();
        for Finding { severity, code, at } in &lint[&c.file.display().to_string()].findings {
            let alarm = KNOWN_FALSE_ALARMS
                .iter()
                .find(|a| a.code == code && at.contains(a.message_has));
            match alarm {
                Some(a) if excused.get(a.code).copied().unwrap_or(0) < (a.count)(c) => {
                    *excused.entry(a.code).or_default() += 1;
                    *excused_total.entry(a.code).or_default() += 1;
                }
                _ => fail(format!("{}: pkilint {severity} {code} at {at}", c.label)),
            }
        }
    }
    if !under_root {
        for Finding { severity, code, at } in &lint[&issuing.display().to_string()].findings {
            fail(format!(
                "the CA certificate: pkilint {severity} {code} at {at}"
            ));
        }
    }
    for (what, file) in [("empty CRL", &empty_file), ("CRL", &full_file)] {
        let Lint { exit, findings } = &lint[&file.display().to_string()];
        if *exit != 0 || !findings.is_empty() {
            let list: Vec<String> = findings
                .iter()
                .map(|f| format!("{} {} at {}", f.severity, f.code, f.at))
                .collect();
            fail(format!("{what}: lint_crl exit {exit}: {list:?}"));
        }
    }
    ca.stop();
    eprintln!(
        "{name} CA: {} certificates, 2 CRLs checked in {:.1} s",
        cases.len(),
        started.elapsed().as_secs_f64()
    );
    for a in KNOWN_FALSE_ALARMS {
        if let Some(n) = excused_total.get(a.code) {
            eprintln!("{name} CA: excused {n} × {} ({})", a.code, a.why);
        }
    }
    failures
}

#[test]
fn every_profile_ca_key_and_subject_key_passes_three_verifiers() {
    let started = Instant::now();
    let keys_dir = tempfile::Builder::new()
        .prefix("hsmca-conformance-")
        .tempdir()
        .unwrap();
    let keys: BTreeMap<&'static str, KeyPair> = SUBJECT_KEYS
        .iter()
        .map(|k| (*k, KeyPair::new(keys_dir.path(), k)))
        .collect();
    let failures: Vec<String> = std::thread::scope(|s| {
        let threads: Vec<_> = CA_KEYS
            .iter()
            .map(|&ca| {
                let keys = &keys;
                s.spawn(move || check_ca(ca, keys))
            })
            .collect();
        threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect()
    });
    eprintln!(
        "conformance matrix: {} CA key types × ({} profiles × {} subject keys + {} SVID keys) in {:.1} s",
        CA_KEYS.len(),
        PROFILES.len(),
        SUBJECT_KEYS.len(),
        SVID_KEYS.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{} failure(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}
