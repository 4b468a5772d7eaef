//! CSR checks off the async runtime. Verifying a CSR's signature (RSA up to
//! 8192 bits) is the one large CPU cost of checking a request; done on a
//! runtime worker, a burst of them stalls every other client's request
//! behind it. A request with a CSR is therefore checked on the blocking
//! pool, by at most one fewer than the CPUs at a time (the rest wait for a
//! permit without holding a thread); a request with a public key is cheap
//! and is checked in place.

use std::sync::Arc;

use tokio::sync::Semaphore;

use super::{BuildError, Checked, IssueError, IssueRequest, Issuer};

/// How many CSR checks may run at once: one per CPU but one, so that a
/// burst leaves a CPU to the runtime and the signing threads.
pub(super) fn csr_check_permits() -> Arc<Semaphore> {
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    Arc::new(Semaphore::new(cpus.saturating_sub(1).max(1)))
}

impl Issuer {
    /// [`Issuer::check`], with a CSR's check moved off the async runtime.
    pub async fn check_off_runtime(
        self: &Arc<Self>,
        req: IssueRequest,
    ) -> Result<Checked, IssueError> {
        if req.pem_csr.trim().is_empty() {
            return self.check(req);
        }
        let permit = Arc::clone(&self.csr_checks)
            .acquire_owned()
            .await
            .map_err(|_| IssueError::Precondition("the daemon is stopping".into()))?;
        let issuer = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            // Held until the check ends, even if the caller gave up.
            let _permit = permit;
            issuer.check(req)
        })
        .await
        .map_err(|e| {
            if e.is_cancelled() {
                IssueError::Precondition("the daemon is stopping".into())
            } else {
                tracing::error!(error = %e, "a CSR check panicked");
                IssueError::Build(BuildError::Encoding(
                    "the CSR check failed unexpectedly".into(),
                ))
            }
        })?
    }
}
