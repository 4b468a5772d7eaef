//! CSR checks off the async runtime, at a lower CPU priority. Verifying a
//! CSR's signature (RSA up to 8192 bits) is the one large CPU cost of
//! checking a request; done on a runtime worker, a burst of them stalls
//! every other client's request behind it. Moved to ordinary threads at the
//! same priority, the burst still takes its fair share of every CPU, and an
//! interactive request (which hops between a runtime worker, a token thread
//! and the store writer) waits a scheduler time slice at each hop.
//!
//! So a request with a CSR is checked on a small pool of dedicated threads
//! (one per CPU but one, at least one) whose nice value is raised to
//! [`NICE`]: the kernel runs them whenever nothing of normal priority wants
//! the CPU, which keeps a burst's cost off everyone else while it still
//! finishes at the machine's spare speed. A request with a public key is
//! cheap and is checked in place.
//!
//! Other CPU work that no client waits on runs on the same threads through
//! [`low_priority`]: the workload keys of an SVID rotation wave, made a
//! thousand at a time, would otherwise fill the blocking pool with
//! runnable threads that each take an equal share of the CPUs from the
//! interactive requests.

use std::{
    panic::AssertUnwindSafe,
    sync::{Arc, OnceLock},
};

use tokio::sync::oneshot;

use super::{BuildError, Checked, IssueError, IssueRequest, Issuer};

/// The verifier threads' nice value. 10 weighs a thread at about a tenth
/// of a normal one under contention: low enough that interactive requests
/// barely notice a burst, high enough that a machine kept busy by them
/// still makes progress on the CSRs (19 would all but starve them).
pub const NICE: i32 = 10;

type Job = Box<dyn FnOnce() + Send>;

/// The process's verifier threads, started on first use.
static VERIFIERS: OnceLock<Result<flume::Sender<Job>, String>> = OnceLock::new();

fn verifiers() -> Result<&'static flume::Sender<Job>, IssueError> {
    VERIFIERS
        .get_or_init(start_verifiers)
        .as_ref()
        .map_err(|e| IssueError::Build(BuildError::Encoding(e.clone())))
}

fn start_verifiers() -> Result<flume::Sender<Job>, String> {
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let (tx, rx) = flume::unbounded::<Job>();
    for i in 0..cpus.saturating_sub(1).max(1) {
        let rx = rx.clone();
        std::thread::Builder::new()
            .name(format!("hsmca-csr-{i}"))
            .spawn(move || verifier_thread(rx))
            .map_err(|e| format!("cannot start a CSR verifier thread: {e}"))?;
    }
    Ok(tx)
}

fn verifier_thread(jobs: flume::Receiver<Job>) {
    // On Linux the nice value belongs to the calling thread. Failing to
    // lower it is not worth refusing CSRs over; the checks then run at
    // normal priority, as they would on the blocking pool.
    if let Err(e) = rustix::process::setpriority_process(None, NICE) {
        tracing::warn!(error = %e, "could not lower the CSR verifier thread's priority");
    }
    while let Ok(job) = jobs.recv() {
        // A panicking check fails its own request (its reply channel is
        // dropped) and must not take the thread with it.
        let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
    }
}

/// Runs `f` on the verifier threads (at nice [`NICE`]) and waits for it.
pub async fn low_priority<T, F>(f: F) -> Result<T, IssueError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    let job: Job = Box::new(move || {
        if tx.is_closed() {
            return;
        }
        let _ = tx.send(f());
    });
    verifiers()?
        .send(job)
        .map_err(|_| IssueError::Precondition("the daemon is stopping".into()))?;
    rx.await.map_err(|_| {
        IssueError::Build(BuildError::Encoding(
            "a low-priority job failed unexpectedly".into(),
        ))
    })
}

impl Issuer {
    /// [`Issuer::check`], with a CSR's check moved to the verifier threads.
    pub async fn check_off_runtime(
        self: &Arc<Self>,
        req: IssueRequest,
    ) -> Result<Checked, IssueError> {
        if req.pem_csr.trim().is_empty() {
            return self.check(req);
        }
        let (tx, rx) = oneshot::channel();
        let issuer = Arc::clone(self);
        let job: Job = Box::new(move || {
            // A caller that gave up while the check was queued costs nothing.
            if tx.is_closed() {
                return;
            }
            let _ = tx.send(issuer.check(req));
        });
        verifiers()?
            .send(job)
            .map_err(|_| IssueError::Precondition("the daemon is stopping".into()))?;
        rx.await.map_err(|_| {
            tracing::error!("a CSR check panicked");
            IssueError::Build(BuildError::Encoding(
                "the CSR check failed unexpectedly".into(),
            ))
        })?
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn verifier_threads_run_at_the_lower_priority() {
        let (tx, rx) = std::sync::mpsc::channel();
        let sender = super::verifiers().unwrap();
        sender
            .send(Box::new(move || {
                let _ = tx.send(rustix::process::getpriority_process(None));
            }))
            .unwrap();
        let nice = rx.recv().unwrap().unwrap();
        assert_eq!(nice, super::NICE);
    }
}
