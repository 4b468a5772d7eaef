//! The physical limit: C_Sign on a precomputed digest (or DigestInfo)
//! through as many sessions as the daemon uses, one thread per session, in
//! this process, with nothing else running in it.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::daemon::proc_cpu_us;
use crate::{
    client::CliResult,
    config::Config,
    signing::SignatureScheme,
    token::{KeySelector, Token, pool::mechanism},
};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RawResult {
    pub sessions: usize,
    pub seconds: f64,
    pub signs: u64,
    pub signs_per_s: f64,
    /// Process CPU time (user + system) over the run ÷ signatures.
    pub cpu_us_per_sign: f64,
}

/// Runs the measurement in a child process (`hsmca bench-raw`) that has the
/// testbed's environment, so that its CPU time is the token's alone.
pub fn in_child(bed: &super::daemon::Testbed, seconds: f64) -> CliResult<RawResult> {
    let out = super::daemon::run_quiet(
        bed.hsmca()
            .arg("bench-raw")
            .arg("--config")
            .arg(bed.config())
            .arg("--seconds")
            .arg(seconds.to_string()),
        "hsmca bench-raw",
    )?;
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// `hsmca bench-raw`: prints the [`RawResult`] as JSON.
pub async fn main(config: &std::path::Path, seconds: f64) -> CliResult {
    let cfg = Config::load(config)?;
    let r = tokio::task::spawn_blocking(move || run(&cfg, seconds)).await??;
    crate::client::write_out(None, &serde_json::to_string(&r)?)
}

pub fn run(cfg: &Config, seconds: f64) -> CliResult<RawResult> {
    let pin = crate::pin::load_pin(&cfg.token)?;
    let locator = cfg.token.locator()?;
    let token = Token::open(&locator, &pin)?;
    let result = measure(&token, cfg, &locator, seconds);
    token.close();
    result
}

fn measure(
    token: &Token,
    cfg: &Config,
    locator: &crate::config::TokenLocator,
    seconds: f64,
) -> CliResult<RawResult> {
    let key = token.find_ca_key(&KeySelector::from_locator(locator), cfg.ca.key_type)?;
    let scheme = SignatureScheme::for_ca(&cfg.ca);
    let input = scheme.token_input(&scheme.digest(b"hsmca bench: the raw token limit"));
    let sessions = cfg.token.sessions;
    let faults = crate::token::faults::FaultInjector::disabled();
    let mut opened = Vec::with_capacity(sessions);
    for _ in 0..sessions {
        opened.push(crate::token::open_session(
            token.context(),
            token.slot(),
            false,
            &faults,
        )?);
    }
    // Warm up every session (first-use costs are not the steady state).
    for s in &opened {
        s.sign(&mechanism(scheme), key.private, &input)?;
    }
    let run_for = Duration::from_secs_f64(seconds);
    let cpu0 = proc_cpu_us("/proc/self/stat")?;
    let t0 = Instant::now();
    let counts: Vec<Result<u64, String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = opened
            .into_iter()
            .map(|session| {
                let input = &input;
                scope.spawn(move || {
                    let mech = mechanism(scheme);
                    let mut n = 0u64;
                    let result = loop {
                        if t0.elapsed() >= run_for {
                            break Ok(n);
                        }
                        if let Err(e) = session.sign(&mech, key.private, input) {
                            break Err(e.to_string());
                        }
                        n += 1;
                    };
                    let _ = session.close();
                    result
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("a thread panicked".into())))
            .collect()
    });
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = proc_cpu_us("/proc/self/stat")? - cpu0;
    let mut signs = 0;
    for c in counts {
        signs += c.map_err(|e| format!("raw C_Sign: {e}"))?;
    }
    Ok(RawResult {
        sessions,
        seconds: elapsed,
        signs,
        signs_per_s: signs as f64 / elapsed,
        cpu_us_per_sign: cpu / signs.max(1) as f64,
    })
}
