//! The shipped build's stand-in for the test-only fault hook
//! (`token/faults.rs`, compiled only with the `test-faults` feature): the
//! same names, no behaviour. Every check is an inlined `Ok(())`, so the
//! signer's PKCS#11 calls carry no trace of the hook, and the environment
//! variable that arms it in test builds is ignored here.

use cryptoki::error::Error as CkError;

/// The environment variable that arms the hook in test builds.
pub const ENV: &str = "HSMCA_TEST_FAULTS";

pub use super::Op;

/// Never armed.
#[derive(Debug, Default)]
pub struct FaultInjector;

impl FaultInjector {
    pub fn disabled() -> Self {
        Self
    }

    /// Always disabled; says so when the variable is set, so a test run
    /// against a shipped binary is not mistaken for a fault-free token.
    pub fn from_env() -> Self {
        if std::env::var_os(ENV).is_some_and(|v| !v.is_empty()) {
            tracing::warn!("{ENV} is set but this build has no fault injection; ignoring it");
        }
        Self
    }

    #[inline(always)]
    pub fn is_armed(&self) -> bool {
        false
    }

    #[inline(always)]
    pub fn check(&self, _op: Op) -> Result<(), CkError> {
        Ok(())
    }

    #[inline(always)]
    pub fn take_reset_sessions(&self) -> bool {
        false
    }
}
