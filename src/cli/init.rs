//! `hsmca init`: the CA key is generated in the token (sensitive,
//! non-extractable) unless it already exists, then either a self-signed root
//! is written, a CSR for an external root is written (`--csr`), or the chain
//! that root signed is installed (`--import-chain`).

use std::{sync::Arc, time::SystemTime};

use der::{EncodePem, pem::LineEnding};

use super::{CliResult, InitArgs, serve::init_logging};
use crate::{
    ca::{self, CaChain},
    config::Config,
    issue::certificate,
    names,
    signing::SignatureScheme,
    token::{
        KeySelector, Token, TokenError,
        faults::FaultInjector,
        keygen,
        pool::{PoolOptions, RebuildPlan, SignerPool},
    },
};

pub async fn init(args: InitArgs) -> CliResult {
    let cfg = Config::load(&args.config)?;
    init_logging(&cfg)?;
    let cert_path = cfg.ca.certificate.clone();

    let jwt = super::jwt_key::configured(&cfg).cloned();
    if args.rotate_jwt_key {
        let jwt = jwt.ok_or(
            "--rotate-jwt-key: the workload endpoint ([workload]) is not configured, so there is no JWT key",
        )?;
        super::jwt_key::init_jwt_key(&cfg, &jwt, true).await?;
        return Ok(());
    }
    if let Some(chain_file) = &args.import_chain {
        return import_chain(&cfg, chain_file, args.force).await;
    }
    if args.csr.is_none() && cert_path.exists() && !args.force {
        // The CA is there; what may be missing is the JWT key. Only when
        // there is nothing at all to make does init refuse.
        if let Some(jwt) = &jwt
            && super::jwt_key::init_jwt_key(&cfg, jwt, false).await?
        {
            eprintln!(
                "{} exists; the CA key and certificate are left as they are (--force replaces them)",
                cert_path.display()
            );
            return Ok(());
        }
        return Err(format!(
            "{} already exists; use --force to replace the CA key and certificate",
            cert_path.display()
        )
        .into());
    }

    let pin = crate::pin::load_pin(&cfg.token)?;
    let locator = cfg.token.locator()?;
    let kt = cfg.ca.key_type;
    let force = args.force;
    let scheme = SignatureScheme::for_ca(&cfg.ca);
    let (pool, key, created) = tokio::task::spawn_blocking(move || -> CliResult<_> {
        let token = Token::open(&locator, &pin)?;
        let sel = KeySelector::from_locator(&locator);
        let (key, created) = match token.find_ca_key(&sel, kt) {
            Ok(key) if !force => (key, false),
            Ok(_) | Err(TokenError::KeyNotFound(_)) => {
                (keygen::generate_ca_key(&token, &sel, kt, force)?, true)
            }
            Err(e) => return Err(e.into()),
        };
        let opts = PoolOptions {
            scheme,
            sessions: 1,
            queue_depth: 16,
            rebuild: RebuildPlan {
                token_label: locator.token_label.clone(),
                selector: sel,
                key_type: kt,
                pin,
                spki: key.spki.clone(),
                extra: Vec::new(),
            },
            faults: Arc::new(FaultInjector::disabled()),
            extra_keys: Vec::new(),
        };
        let pool = SignerPool::start(token, &key, opts)?;
        Ok((pool, key, created))
    })
    .await??;
    let pool = Arc::new(pool);
    eprintln!(
        "{} CA key {} (label {:?}, id {}) in the token",
        if created {
            "generated"
        } else {
            "using existing"
        },
        kt.name(),
        key.label,
        hex::encode(&key.id)
    );

    let subject = names::parse_subject(&cfg.ca.subject)?;
    let result: CliResult = async {
        if let Some(csr_path) = &args.csr {
            let csr = certificate::build_ca_csr(pool.as_ref(), subject).await?;
            ca::write_atomic(csr_path, csr.to_pem(LineEnding::LF)?.as_bytes())?;
            eprintln!(
                "wrote CSR {}; have your root sign it as a CA certificate, then run: hsmca init --config {} --import-chain CHAIN.pem",
                csr_path.display(),
                args.config.display()
            );
            return Ok(());
        }
        let now = SystemTime::now();
        let root = certificate::build_root(
            pool.as_ref(),
            subject,
            now - cfg.ca.backdate,
            now + cfg.ca.validity,
        )
        .await?;
        // Check what was made before writing it anywhere.
        let chain = CaChain::from_certs(vec![root.clone()], "new root")?;
        chain.check_key(&key.spki)?;
        ca::write_atomic(&cert_path, root.to_pem(LineEnding::LF)?.as_bytes())?;
        if let Some(chain_path) = &cfg.ca.chain
            && chain_path.exists()
        {
            std::fs::remove_file(chain_path)?;
        }
        eprintln!(
            "wrote self-signed CA certificate {} ({})",
            cert_path.display(),
            root.tbs_certificate().subject()
        );
        Ok(())
    }
    .await;
    let stopper = pool.clone();
    tokio::task::spawn_blocking(move || stopper.shutdown()).await?;
    result?;
    if let Some(jwt) = &jwt {
        super::jwt_key::init_jwt_key(&cfg, jwt, false).await?;
    }
    Ok(())
}

async fn import_chain(cfg: &Config, chain_file: &std::path::Path, force: bool) -> CliResult {
    let chain_path = cfg.ca.chain.clone().ok_or(
        "config key ca.chain must name where the issuers above the CA certificate are kept",
    )?;
    if cfg.ca.certificate.exists() && !force {
        return Err(format!(
            "{} already exists; use --force to replace it with the imported chain",
            cfg.ca.certificate.display()
        )
        .into());
    }
    let certs = ca::read_pem_certs(chain_file)?;
    let chain = CaChain::from_certs(certs.clone(), &chain_file.display().to_string())?;
    if certs.len() < 2 {
        return Err(
            "the chain must hold the CA certificate and at least the root that signed it".into(),
        );
    }
    let pin = crate::pin::load_pin(&cfg.token)?;
    let locator = cfg.token.locator()?;
    let kt = cfg.ca.key_type;
    let key = tokio::task::spawn_blocking(move || -> CliResult<_> {
        let token = Token::open(&locator, &pin)?;
        let key = token.find_ca_key(&KeySelector::from_locator(&locator), kt);
        token.close();
        Ok(key?)
    })
    .await??;
    chain.check_key(&key.spki)?;
    let mut rest = String::new();
    for c in &certs[1..] {
        rest.push_str(&c.to_pem(LineEnding::LF)?);
    }
    ca::write_atomic(&chain_path, rest.as_bytes())?;
    ca::write_atomic(
        &cfg.ca.certificate,
        certs[0].to_pem(LineEnding::LF)?.as_bytes(),
    )?;
    eprintln!(
        "installed {} as the CA certificate and {} issuer(s) above it; the daemon now issues as an intermediate",
        certs[0].tbs_certificate().subject(),
        certs.len() - 1
    );
    Ok(())
}
