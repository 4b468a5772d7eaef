//! The shipped build's stand-in for the test-only serial hook
//! (`issue/serial_hook.rs`, compiled only with the `test-faults` feature):
//! every serial is fresh, and the environment variable that forces one in
//! test builds is ignored.

/// Never a forced serial.
#[inline(always)]
pub fn forced() -> Option<Vec<u8>> {
    None
}
