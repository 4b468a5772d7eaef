//! The gRPC contract, generated from `proto/hsmca/v1/hsmca.proto`.
#![allow(clippy::all, clippy::pedantic, missing_docs)]

tonic::include_proto!("hsmca.v1");

/// The encoded descriptor set, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("hsmca_descriptor");

/// The SPIFFE Workload API, generated from `proto/spiffe/workload.proto`
/// (which has no package).
pub mod workload {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]

    tonic::include_proto!("_");

    /// The encoded descriptor set, served by reflection on the workload socket.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("workload_descriptor");
}
