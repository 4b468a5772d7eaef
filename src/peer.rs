//! Who is calling.

/// Who is calling, from the kernel (SO_PEERCRED), not from anything the
/// client says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
}
