//! A **test hook** for serial collisions. It does nothing unless the daemon
//! was started with `HSMCA_TEST_SERIAL` in its environment: a plan of
//! serials, space-separated, that [`super::certificate::new_serial`] hands
//! out in turn instead of fresh ones (`-` in the plan: a fresh one; after
//! the plan, fresh ones). A test makes the store refuse a serial that is
//! already taken and watches the certificate being signed again. Compiled
//! only with the `test-faults` feature, like the token's fault hook
//! (`token/faults.rs`); the shipped build has `serial_hook_off.rs`.

use std::sync::{Mutex, OnceLock};

/// The environment variable that arms the hook.
pub const ENV: &str = "HSMCA_TEST_SERIAL";

/// The serials still to hand out, the next one last (`None`: a fresh one).
static PLAN: OnceLock<Mutex<Vec<Option<Vec<u8>>>>> = OnceLock::new();

fn parse(v: &str) -> Option<Vec<Option<Vec<u8>>>> {
    let mut plan = v
        .split_whitespace()
        .map(|s| match s {
            "-" => Some(None),
            hex_serial => hex::decode(hex_serial).ok().map(Some),
        })
        .collect::<Option<Vec<_>>>()?;
    plan.reverse();
    Some(plan)
}

/// The forced serial's bytes, while the hook has some to give.
pub fn forced() -> Option<Vec<u8>> {
    let plan = PLAN.get_or_init(|| {
        let v = std::env::var(ENV).unwrap_or_default();
        Mutex::new(parse(&v).unwrap_or_else(|| {
            tracing::warn!("{ENV} is not a list of hex serials and -; ignoring it");
            Vec::new()
        }))
    });
    let bytes = plan.lock().ok()?.pop()??;
    tracing::warn!(serial = %hex::encode(&bytes), "test hook: forcing the serial");
    Some(bytes)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_plan_is_hex_serials_or_dashes_taken_in_turn() {
        assert_eq!(
            super::parse("0a0b - 0c"),
            Some(vec![Some(vec![12]), None, Some(vec![10, 11])])
        );
        assert_eq!(super::parse(""), Some(vec![]));
        assert_eq!(super::parse("zz -"), None);
    }
}
